"""Environments: interchangeable places that run the generated code.

Registered by name with a dotted class path and the extra that provides their SDK, imported only
when asked for (so ``import rlm`` pulls in no provider SDK). Third parties add their own through
the ``rlm.environments`` entry-point group.

The reference ``rlms`` API (``get_environment``, ``BaseEnv``, ``LocalREPL``, ``DockerREPL``, the
custom-tool helpers...) is served from :mod:`rlm.environments.compat` over these environments and
imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rlm.errors import ConfigurationError
from rlm.registry import load

if TYPE_CHECKING:
    from rlm.environments.base import Environment

#: name -> (dotted class path, pip extra or None)
ENVIRONMENTS: dict[str, tuple[str, str | None]] = {
    "local": ("rlm.environments.local:LocalEnvironment", None),
    "ipython": ("rlm.environments.local:IPythonEnvironment", None),
    "docker": ("rlm.environments.docker:DockerEnvironment", "docker"),
    "modal": ("rlm.environments.modal:ModalEnvironment", "modal"),
    "e2b": ("rlm.environments.e2b:E2BEnvironment", "e2b"),
    "daytona": ("rlm.environments.daytona:DaytonaEnvironment", "daytona"),
    "prime": ("rlm.environments.prime:PrimeEnvironment", "prime"),
}


def environment_class(environment: str | type[Environment]) -> type[Environment]:
    """The environment class registered under ``environment`` (imported on first use), or
    ``environment`` itself when it is already an :class:`Environment` subclass (the seam for an
    adapter of your own, or an in-process fake in tests: ``rlm.testing.ScriptedEnvironment``)."""
    if isinstance(environment, type):
        from rlm.environments.base import Environment

        if issubclass(environment, Environment):
            return environment
        raise ConfigurationError(
            f"environment={environment.__name__} is a class but not an Environment: subclass "
            "rlm.environments.base.Environment (or SandboxEnvironment), or pass a registered name"
        )
    return load("environment", environment, ENVIRONMENTS, "rlm.environments")


def environment_name(environment: str | type[Environment]) -> str:
    """How logs and traces name ``environment``: the registered name, or the class's ``name``."""
    if isinstance(environment, str):
        return environment
    return getattr(environment, "name", None) or environment.__name__


_COMPAT_NAMES = frozenset(
    {
        "RESERVED_TOOL_NAMES",
        "BaseEnv",
        "DaytonaREPL",
        "DockerREPL",
        "E2BREPL",
        "IPythonREPL",
        "IsolatedEnv",
        "LocalREPL",
        "ModalREPL",
        "NonIsolatedEnv",
        "PrimeREPL",
        "SupportsCustomTools",
        "SupportsPersistence",
        "ToolInfo",
        "extract_tool_value",
        "format_tools_for_prompt",
        "get_environment",
        "parse_custom_tools",
        "parse_tool_entry",
        "validate_custom_tools",
    }
)


def __getattr__(name: str) -> Any:
    if name in _COMPAT_NAMES:
        from rlm.environments import compat

        return getattr(compat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ENVIRONMENTS", "environment_class", *sorted(_COMPAT_NAMES)]
