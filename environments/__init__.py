"""Environments: interchangeable places that run the generated code.

Registered by name with a dotted class path and the extra that provides their SDK, imported only
when asked for (so ``import rlm`` pulls in no provider SDK). Third parties add their own through
the ``rlm.environments`` entry-point group.

The reference ``rlms`` API (``get_environment``, ``BaseEnv``, ``LocalREPL``, ``DockerREPL``, the
custom-tool helpers...) is served from :mod:`rlm.environments.compat` over these environments and
imported on first use.
"""

from __future__ import annotations

from typing import Any

from rlm.registry import load

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


def environment_class(name: str) -> type:
    """The environment class registered under ``name``; imported on first use."""
    return load("environment", name, ENVIRONMENTS, "rlm.environments")


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
