"""``DockerREPL`` under the reference ``rlms`` module path; it runs code in rlm's ``docker`` environment
(see :mod:`rlm.environments.compat`)."""

from rlm.environments.compat import DockerREPL

__all__ = ["DockerREPL"]
