"""Name -> class registries whose members are imported only when asked for (like fsspec's).

Used by the LM backends (``rlm.broker.clients``) and the environments (``rlm.environments``):
each maps a name to ``"module:Class"`` and the pip extra that provides its SDK, and third parties
add their own through an entry-point group.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from importlib.metadata import entry_points
from typing import Any

from rlm.errors import ConfigurationError


@functools.cache
def _plugins(group: str) -> dict[str, str]:
    """The entry points of ``group``, read once per process: scanning every installed
    distribution's metadata takes milliseconds, too much for each sandbox a fan-out opens."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def load(kind: str, name: str, registry: dict[str, tuple[str, str | None]], group: str) -> Any:
    """Imports the class registered as ``name`` (in ``registry``, else the entry-point
    ``group``); a missing SDK becomes a ConfigurationError naming the extra to install."""
    target: str | None
    extra: str | None
    if name in registry:
        target, extra = registry[name]
    else:
        target, extra = _plugins(group).get(name), None
    if target is None:
        known = sorted(set(registry) | set(_plugins(group)))
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigurationError(
            f"unknown {kind} {name!r}; {hint}choose one of: {', '.join(known)}"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        hint = f"pip install 'rlm[{extra}]'" if extra else "reinstall rlm"
        raise ConfigurationError(
            f"{kind} {name!r} needs a package that is not installed ({error.name}): {hint}"
        ) from error
    return getattr(module, class_name)
