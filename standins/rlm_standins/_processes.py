"""Process and file helpers shared by the stand-ins (each sandbox is local processes and files)."""

from __future__ import annotations

import contextlib
import os

from rlm.testing.leaks import alive, with_descendants

__all__ = ["alive", "first_missing", "signal_group", "with_descendants"]


def signal_group(pid: int, sig: int) -> None:
    """Signals the process group led by ``pid``; a group already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def first_missing(path: str) -> str | None:
    """The topmost directory ``os.makedirs(path)`` would create, or None if it exists."""
    missing = None
    while path and path != "/" and not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing
