"""Environments: interchangeable places that run the generated code.

Registered by name with a dotted class path and the extra that provides their SDK, imported only
when asked for (so ``import rlm`` pulls in no provider SDK). Third parties add their own through
the ``rlm.environments`` entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from rlm.errors import ConfigurationError

#: name -> (dotted class path, pip extra or None)
ENVIRONMENTS: dict[str, tuple[str, str | None]] = {
    "local": ("rlm.environments.local:LocalEnvironment", None),
    "docker": ("rlm.environments.docker:DockerEnvironment", "docker"),
    "modal": ("rlm.environments.modal:ModalEnvironment", "modal"),
    "e2b": ("rlm.environments.e2b:E2BEnvironment", "e2b"),
    "daytona": ("rlm.environments.daytona:DaytonaEnvironment", "daytona"),
    "prime": ("rlm.environments.prime:PrimeEnvironment", "prime"),
}


def _entry_point_paths() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="rlm.environments")}


def environment_class(name: str) -> type:
    """The environment class registered under ``name``; imported on first use."""
    path, extra = ENVIRONMENTS.get(name, (None, None))
    if path is None:
        path = _entry_point_paths().get(name)
    if path is None:
        known = sorted(set(ENVIRONMENTS) | set(_entry_point_paths()))
        raise ConfigurationError(f"unknown environment {name!r}; choose one of {known}")
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f"pip install 'rlm[{extra}]'" if extra else "reinstall rlm"
        raise ConfigurationError(
            f"environment {name!r} needs a package that is not installed ({error.name}): {hint}"
        ) from error
    return getattr(module, class_name)


__all__ = ["ENVIRONMENTS", "environment_class"]
