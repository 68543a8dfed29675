"""Environments: interchangeable places that run the generated code.

Registered by name with a dotted class path and the extra that provides their SDK, imported only
when asked for (so ``import rlm`` pulls in no provider SDK). Third parties add their own through
the ``rlm.environments`` entry-point group.
"""

from __future__ import annotations

from rlm.registry import load

#: name -> (dotted class path, pip extra or None)
ENVIRONMENTS: dict[str, tuple[str, str | None]] = {
    "local": ("rlm.environments.local:LocalEnvironment", None),
    "docker": ("rlm.environments.docker:DockerEnvironment", "docker"),
    "modal": ("rlm.environments.modal:ModalEnvironment", "modal"),
    "e2b": ("rlm.environments.e2b:E2BEnvironment", "e2b"),
    "daytona": ("rlm.environments.daytona:DaytonaEnvironment", "daytona"),
    "prime": ("rlm.environments.prime:PrimeEnvironment", "prime"),
}


def environment_class(name: str) -> type:
    """The environment class registered under ``name``; imported on first use."""
    return load("environment", name, ENVIRONMENTS, "rlm.environments")


__all__ = ["ENVIRONMENTS", "environment_class"]
