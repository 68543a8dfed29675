"""``DaytonaREPL`` under the reference ``rlms`` module path; it runs code in rlm's ``daytona`` environment
(see :mod:`rlm.environments.compat`)."""

from rlm.environments.compat import DaytonaREPL

__all__ = ["DaytonaREPL"]
