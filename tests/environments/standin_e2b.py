"""The E2B fixture of the shared contract suite (loaded by ``cloud_fixture("e2b")``).

``running_standin()`` starts :class:`rlm_standins.e2b.E2BStandIn` and yields the environment_kwargs
that point the real ``e2b`` SDK at it (its control API as ``api_url``, its envd proxy as
``sandbox_url``, its API key; ``python`` is this interpreter, which has grpcio and protobuf).
``e2b`` cannot share a virtualenv with ``prime-sandboxes`` (connectrpc pins), so this runs in
``.venv-e2b`` (``.ci/sdk-venvs.sh``): ``.venv-e2b/bin/python -m pytest tests/environments -k e2b``.

Live run: with ``RLM_LIVE_E2B=1`` and ``E2B_API_KEY`` set, ``live_kwargs()`` gives kwargs for E2B
itself instead (template ``RLM_E2B_TEMPLATE``, default ``rlm-runner``: build it once with
``python -m rlm.environments.e2b build-template``), so the same suite runs against the real
provider.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from hermetic import standins_missing


def _skip_reason() -> str | None:
    try:
        import e2b  # noqa: F401
    except ImportError:
        return (
            "pip install 'rlm[e2b]' (in a venv of its own: .ci/sdk-venvs.sh makes .venv-e2b; "
            "run .venv-e2b/bin/python -m pytest tests/environments -k e2b)"
        )
    return standins_missing()


SKIP_REASON: str | None = _skip_reason()


#: what running the live variant of the suites takes (said when it is skipped)
LIVE_REQUIREMENT = "RLM_LIVE_E2B=1 and E2B_API_KEY"


def live_requested() -> bool:
    """True when the suite should run against the real E2B."""
    return os.environ.get("RLM_LIVE_E2B") == "1" and bool(os.environ.get("E2B_API_KEY"))


def live_kwargs() -> dict[str, Any]:
    """environment_kwargs for the real E2B (the key comes from E2B_API_KEY)."""
    from rlm.environments.e2b import DEFAULT_TEMPLATE

    return {"template": os.environ.get("RLM_E2B_TEMPLATE", DEFAULT_TEMPLATE)}


@contextlib.contextmanager
def running_standin(**options: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A started stand-in (``options`` go to its constructor) and the environment_kwargs that
    reach it through the real SDK (``rlm_standins.launch``: the developer's settings of the
    provider are hidden from the SDK meanwhile); on the way out it checks that no sandbox was
    left running."""
    from rlm_standins.launch import launch

    with launch("e2b", **options) as launched:
        yield launched.server, launched.kwargs
        leftover = launched.live_sandboxes()
        assert not leftover, f"E2B sandboxes left running: {leftover}"


# ---- the call log, as the shared cloud suite (test_cloud_contract.py) reads it ---------------


def sandbox_creates(server: Any) -> int:
    from rlm_standins.launch import sandbox_creates as creates

    return creates(server)


def sandbox_deletes(server: Any) -> int:
    return len([c for c in server.calls if c.startswith("DELETE /sandboxes/")])


def file_uploads(server: Any) -> list[str]:
    """One entry per file written through the provider's file API."""
    return [c for c in server.calls if c.startswith("envd ") and c.endswith("POST /files")]


def relay_calls(server: Any) -> list[str]:
    """The calls that carried the runner's stdin (one StreamInput per runner)."""
    return [c for c in server.calls if c.startswith("envd ") and c.endswith("/StreamInput")]


def runner_pids(server: Any) -> list[int]:
    return server.live_pids()


def kill_calls(server: Any) -> list[str]:
    return [c for c in server.calls if c.startswith("envd ") and c.endswith("/SendSignal")]
