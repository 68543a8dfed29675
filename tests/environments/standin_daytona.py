"""The Daytona fixture of the shared contract suite (loaded by ``cloud_fixture("daytona")``).

``running_standin()`` starts :class:`rlm_standins.daytona.DaytonaStandIn` and yields the
environment_kwargs that point the real ``daytona`` SDK at it (its ``api_url`` and API key;
``python`` is this interpreter, which has grpcio and protobuf). ``daytona`` lives in the main
virtualenv: ``python -m pytest tests/environments -k daytona``.

Live run: with ``RLM_LIVE_DAYTONA=1`` and ``DAYTONA_API_KEY`` set, ``live_kwargs()`` gives kwargs
for the real platform instead (``snapshot`` from ``RLM_DAYTONA_SNAPSHOT`` when set, else the
adapter's default image, built by Daytona on first use), so the same suite runs against Daytona.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from hermetic import standins_missing


def _skip_reason() -> str | None:
    try:
        import daytona  # noqa: F401
    except ImportError:
        return "pip install 'rlm[daytona]'"
    return standins_missing()


SKIP_REASON: str | None = _skip_reason()


#: what running the live variant of the suites takes (said when it is skipped)
LIVE_REQUIREMENT = "RLM_LIVE_DAYTONA=1 and DAYTONA_API_KEY"


def live_requested() -> bool:
    """True when the suite should run against the real Daytona platform."""
    return os.environ.get("RLM_LIVE_DAYTONA") == "1" and bool(os.environ.get("DAYTONA_API_KEY"))


def live_kwargs() -> dict[str, Any]:
    """environment_kwargs for the real platform (credentials come from DAYTONA_API_KEY)."""
    snapshot = os.environ.get("RLM_DAYTONA_SNAPSHOT")
    return {"snapshot": snapshot} if snapshot else {}


@contextlib.contextmanager
def running_standin(**options: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A started stand-in (``options`` go to its constructor) and the environment_kwargs that
    reach it through the real SDK (``rlm_standins.launch``: the developer's settings of the
    provider are hidden from the SDK meanwhile); on the way out it checks that no sandbox was
    left running."""
    from rlm_standins.launch import launch

    with launch("daytona", **options) as launched:
        yield launched.server, launched.kwargs
        leftover = launched.live_sandboxes()
        assert not leftover, f"Daytona sandboxes left running: {leftover}"
        pids = launched.server.live_pids()
        assert not pids, f"sandbox processes left running: {pids}"


# ---- the call log, as the shared cloud suite (test_cloud_contract.py) reads it ---------------


def _matching(server: Any, pattern: str) -> list[str]:
    return [c for c in server.calls if re.fullmatch(pattern, c)]


def sandbox_creates(server: Any) -> int:
    from rlm_standins.launch import sandbox_creates as creates

    return creates(server)


def sandbox_deletes(server: Any) -> int:
    return len(_matching(server, r"DELETE /api/sandbox/[^/]+"))


def file_uploads(server: Any) -> list[str]:
    """One entry per file written through the provider's file API."""
    return _matching(server, r"POST /toolbox/[^/]+/files/bulk-upload")


def relay_calls(server: Any) -> list[str]:
    """The calls that carried the runner's stdin (session command input)."""
    return _matching(server, r"POST /toolbox/[^/]+/process/session/[^/]+/command/[^/]+/input")


def inband_bytes(server: Any) -> int:
    """All bytes written to session commands' stdin (a context must never travel that way)."""
    return server.input_bytes


def runner_pids(server: Any) -> list[int]:
    return server.runner_pids()


def kill_calls(server: Any) -> list[str]:
    """Daytona kills a session command by deleting its session."""
    return _matching(server, r"DELETE /toolbox/[^/]+/process/session/[^/]+")
