"""Name -> class registries whose members are imported only when asked for (like fsspec's).

Used by the LM backends (``rlm.broker.clients``) and the environments (``rlm.environments``):
each maps a name to ``"module:Class"`` and the pip extra that provides its SDK, and third parties
add their own through an entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from rlm.errors import ConfigurationError


def load(kind: str, name: str, registry: dict[str, tuple[str, str | None]], group: str) -> Any:
    """Imports the class registered as ``name`` (in ``registry`` or the entry-point ``group``);
    a missing SDK becomes a ConfigurationError naming the extra to install."""
    plugins = {ep.name: ep.value for ep in entry_points(group=group)}
    target, extra = registry.get(name) or (plugins.get(name), None)
    if target is None:
        known = ", ".join(sorted(set(registry) | set(plugins)))
        raise ConfigurationError(f"unknown {kind} {name!r}; choose one of: {known}")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f"pip install 'rlm[{extra}]'" if extra else "reinstall rlm"
        raise ConfigurationError(
            f"{kind} {name!r} needs a package that is not installed ({error.name}): {hint}"
        ) from error
    return getattr(module, class_name)
