"""`python -m jaxsup.data.convert`: see jaxsup.data.convert.cli."""
from jaxsup.data.convert.cli import main

raise SystemExit(main())
