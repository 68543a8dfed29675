"""``PrimeREPL`` under the reference ``rlms`` module path; it runs code in rlm's ``prime`` environment
(see :mod:`rlm.environments.compat`)."""

from rlm.environments.compat import PrimeREPL

__all__ = ["PrimeREPL"]
