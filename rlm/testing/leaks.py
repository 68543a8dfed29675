"""Finding sandbox processes of ours that outlived their session."""

from __future__ import annotations

import os


def runner_pids() -> list[int]:
    """Processes on this machine that run an rlm runner zipapp (the local environment's)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if b"rlm-runner-" in cmdline and b".pyz" in cmdline:
            pids.append(int(entry))
    return pids
