"""Finding sandbox processes of ours that outlived their session."""

from __future__ import annotations

import os


def _cmdline(pid: int | str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _comm(pid: int | str) -> bytes:
    """The process's name (``/proc/<pid>/comm``): a fork server names itself ``rlm-forkserver``,
    its runners (and what their cells fork without exec) ``rlm-runner``."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as handle:
            return handle.read().strip()
    except OSError:
        return b""


def _is_bundle(cmdline: bytes) -> bool:
    """Runs our runner zipapp: its file (``runner.pyz``, ``rlm-runner-*.pyz``) or its sealed
    in-memory copy (``-X rlm_runner /proc/self/fd/N``)."""
    args = cmdline.split(b"\0")
    return (
        b"runner.pyz" in cmdline
        or (b"rlm-runner-" in cmdline and b".pyz" in cmdline)
        or b"rlm_runner" in args
    )


def _is_session_proxy(pid: int | str, cmdline: bytes) -> bool:
    """The session proxy a fork server forks beside its runners (``rlm-proxy``), while its
    server lives."""
    if b"--fork-server" not in cmdline or _comm(pid) != b"rlm-proxy":
        return False
    parent = _parent_of(str(pid))
    return parent is not None and _is_fork_server(parent, _cmdline(parent))


def _is_fork_server(pid: int | str, cmdline: bytes) -> bool:
    """The fork server's runners keep its command line; the server is the one whose parent
    is not a fork server, and that is not a runner (or a copy of one a cell forked and that
    outlived its runner: its parent is then no fork server either)."""
    if b"--fork-server" not in cmdline or _comm(pid) == b"rlm-runner":
        return False
    parent = _parent_of(str(pid))
    return parent is None or b"--fork-server" not in _cmdline(parent)


def runner_pids(parent: int | None = None) -> list[int]:
    """Processes on this machine that run an rlm runner (the local environment's; fork servers
    are not runners); with ``parent``, only those descended from it."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmdline = _cmdline(entry)
        if not _is_bundle(cmdline) or _is_fork_server(entry, cmdline):
            continue
        if _is_session_proxy(entry, cmdline):
            continue  # part of its fork server, and ends with it
        if parent is not None and not _descends_from(entry, parent):
            continue
        pids.append(int(entry))
    return pids


def fork_server_pids(parent: int | None = None) -> list[int]:
    """The local environment's fork servers (with ``parent``: those descended from it)."""
    return [
        int(entry)
        for entry in os.listdir("/proc")
        if entry.isdigit()
        and _is_fork_server(entry, cmdline := _cmdline(entry))
        and _is_bundle(cmdline)
        and (parent is None or _descends_from(entry, parent))
    ]


def _descends_from(pid: str, ancestor: int) -> bool:
    current: int | None = _parent_of(pid)
    while current is not None and current > 1:
        if current == ancestor:
            return True
        current = _parent_of(str(current))
    return False


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
