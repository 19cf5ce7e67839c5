"""`python -m jaxsup.data.reinforce`: see jaxsup.data.reinforce.cli."""
from jaxsup.data.reinforce.cli import main

raise SystemExit(main())
