"""``IPythonREPL`` under the reference ``rlms`` module path; it runs code in rlm's ``local`` environment
(see :mod:`rlm.environments.compat`)."""

from rlm.environments.compat import IPythonREPL

__all__ = ["IPythonREPL"]
