"""``ModalREPL`` under the reference ``rlms`` module path; it runs code in rlm's ``modal`` environment
(see :mod:`rlm.environments.compat`)."""

from rlm.environments.compat import ModalREPL

__all__ = ["ModalREPL"]
