"""Registry of live resources (brokers, sandboxes) closed at interpreter exit."""

from __future__ import annotations

import weakref
from typing import Protocol


class AsyncClosable(Protocol):
    async def aclose(self) -> None: ...


_live: weakref.WeakSet[AsyncClosable] = weakref.WeakSet()
_held: set[AsyncClosable] = set()


def track(resource: AsyncClosable, *, until_closed: bool = False) -> None:
    """Registers ``resource`` to be closed at exit if nobody closed it. ``until_closed``: hold
    it until then even if its owner drops it (for what must be closed, not collected)."""
    (_held if until_closed else _live).add(resource)


def untrack(resource: AsyncClosable) -> None:
    _live.discard(resource)
    _held.discard(resource)


async def close_all() -> None:
    """Closes every tracked resource (sandboxes first, brokers next, LM clients last)."""
    resources = [*_live, *_held]
    for resource in sorted(resources, key=lambda r: getattr(r, "close_order", 0)):
        try:
            await resource.aclose()
        except Exception:
            continue
