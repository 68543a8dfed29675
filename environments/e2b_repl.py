"""``E2BREPL`` under the reference ``rlms`` module path; it runs code in rlm's ``e2b`` environment
(see :mod:`rlm.environments.compat`)."""

from rlm.environments.compat import E2BREPL

__all__ = ["E2BREPL"]
