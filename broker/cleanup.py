"""Registry of live resources (brokers, sandboxes) closed at interpreter exit."""

from __future__ import annotations

import weakref
from typing import Protocol


class AsyncClosable(Protocol):
    async def aclose(self) -> None: ...


_live: weakref.WeakSet[AsyncClosable] = weakref.WeakSet()


def track(resource: AsyncClosable) -> None:
    """Registers ``resource`` to be closed at exit if nobody closed it."""
    _live.add(resource)


def untrack(resource: AsyncClosable) -> None:
    _live.discard(resource)


async def close_all() -> None:
    """Closes every tracked resource (sandboxes first, brokers last)."""
    for resource in sorted(list(_live), key=lambda r: getattr(r, "close_order", 0)):
        try:
            await resource.aclose()
        except Exception:
            continue
