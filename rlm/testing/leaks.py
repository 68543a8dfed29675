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


def _stat(pid: int | str) -> tuple[bytes, int] | None:
    """(state, parent pid) of a process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def _parent_of(pid: str) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def alive(pid: int) -> bool:
    """True for a process that exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] != b"Z"


def with_descendants(roots: list[int], *, zombies: bool = False) -> list[int]:
    """``roots`` that still exist, with all their descendants; zombies are left out unless
    ``zombies`` (a zombie has exited; its parent has not reaped it yet)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        stat = _stat(entry) if entry.isdigit() else None
        if stat is not None and (zombies or stat[0] != b"Z"):
            children.setdefault(stat[1], []).append(int(entry))
    exists = (lambda pid: _stat(pid) is not None) if zombies else alive
    found: list[int] = []
    pending = [pid for pid in roots if exists(pid)]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found.append(pid)
            pending.extend(children.get(pid, []))
    return found
