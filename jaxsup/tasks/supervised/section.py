"""Task "supervised" reads only the generic fields (model, data, optim): no section of its own."""
from jaxsup.config_fields import Declaration

DECLARATION = Declaration(task="supervised", reads=())
