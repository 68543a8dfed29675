"""Finding sandbox processes of ours that outlived their session."""

from __future__ import annotations

import os


def runner_pids(parent: int | None = None) -> list[int]:
    """Processes on this machine that run an rlm runner zipapp (the local environment's);
    with ``parent``, only those that are its direct children."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"runner.pyz" not in cmdline and not (b"rlm-runner-" in cmdline and b".pyz" in cmdline):
            continue
        if parent is not None and _parent_of(entry) != parent:
            continue
        pids.append(int(entry))
    return pids


def _parent_of(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
