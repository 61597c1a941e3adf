"""What differs between Odoo 18.0 and 19.0 for these models, in one place."""

from odoo import models

#: 19.0 declares constraints as class attributes (models.Constraint); 18.0 reads _sql_constraints.
#: Models write ``if HAS_CONSTRAINT: _x = models.Constraint(...) else: _sql_constraints = [...]`` in their body,
#: which gives the same SQL constraint name on both.
HAS_CONSTRAINT = hasattr(models, "Constraint")
