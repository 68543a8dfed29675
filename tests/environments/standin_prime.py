"""The Prime fixture of the shared contract suite (loaded by ``cloud_fixture("prime")``).

``running_standin()`` starts :class:`rlm_standins.prime.PrimeStandIn` and yields the
environment_kwargs that point the real ``prime-sandboxes`` SDK at it (its ``api_url`` and API key;
``python`` is this interpreter, which has grpcio and protobuf). ``prime-sandboxes`` cannot share
a virtualenv with ``e2b`` (connectrpc pins), so this runs in ``.venv-prime`` (``.ci/sdk-venvs.sh``):
``.venv-prime/bin/python -m pytest tests/environments -k prime``.

Live run: with ``RLM_LIVE_PRIME=1`` and ``PRIME_API_KEY`` set, ``live_kwargs()`` gives kwargs for the
real platform instead (``docker_image`` from ``RLM_PRIME_IMAGE``, default ``python:3.12-slim``
with grpcio/protobuf pip-installed on start), so the same suite runs against Prime itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from hermetic import standins_missing


def _skip_reason() -> str | None:
    try:
        import prime_sandboxes  # noqa: F401
    except ImportError:
        return (
            "pip install 'rlm[prime]' (in a venv of its own: .ci/sdk-venvs.sh makes .venv-prime; "
            "run .venv-prime/bin/python -m pytest tests/environments -k prime)"
        )
    return standins_missing()


SKIP_REASON: str | None = _skip_reason()


#: what running the live variant of the suites takes (said when it is skipped)
LIVE_REQUIREMENT = "RLM_LIVE_PRIME=1 and PRIME_API_KEY"


def live_requested() -> bool:
    """True when the suite should run against the real Prime platform."""
    return os.environ.get("RLM_LIVE_PRIME") == "1" and bool(os.environ.get("PRIME_API_KEY"))


def live_kwargs() -> dict[str, Any]:
    """environment_kwargs for the real platform (credentials come from PRIME_API_KEY)."""
    from rlm.environments.prime import DEFAULT_IMAGE

    return {"docker_image": os.environ.get("RLM_PRIME_IMAGE", DEFAULT_IMAGE)}


@contextlib.contextmanager
def short_sdk_throttle_waits() -> Iterator[None]:
    """prime-sandboxes waits a fixed 10, 30 and 40 s after a 429 on an upload before it gives up
    (``_gateway_post``'s tenacity policy, ignoring Retry-After). Those waits are the SDK's, not
    the adapter's: under the stand-in they are cut to 0.1 s so that a throttled suite still
    finishes in seconds; the adapter's own retries take over after the SDK gives up."""
    import tenacity
    from prime_sandboxes.sandbox import AsyncSandboxClient

    retrying = AsyncSandboxClient._gateway_post.retry  # type: ignore[attr-defined]
    saved = retrying.wait
    retrying.wait = tenacity.wait_fixed(0.1)
    try:
        yield
    finally:
        retrying.wait = saved


@contextlib.contextmanager
def running_standin(**options: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A started stand-in (``options`` go to its constructor) and the environment_kwargs that
    reach it through the real SDK (``rlm_standins.launch``: the developer's settings of the
    provider are hidden from the SDK meanwhile); on the way out it checks that no sandbox was
    left running."""
    from rlm_standins.launch import launch

    with short_sdk_throttle_waits(), launch("prime", **options) as launched:
        yield launched.server, launched.kwargs
        leftover = launched.live_sandboxes()
        assert not leftover, f"Prime sandboxes left running: {leftover}"


# ---- the call log, as the shared cloud suite (test_cloud_contract.py) reads it ---------------


def sandbox_creates(server: Any) -> int:
    from rlm_standins.launch import sandbox_creates as creates

    return creates(server)


def sandbox_deletes(server: Any) -> int:
    return len([c for c in server.calls if c.startswith("DELETE /api/v1/sandbox/")])


def file_uploads(server: Any) -> list[str]:
    """One entry per file written through the provider's file API."""
    return [c for c in server.calls if c == "POST gateway:/upload"]


def relay_calls(server: Any) -> list[str]:
    """The calls that carried the runner's stdin (the relay's frames)."""
    return [c for c in server.calls if c.startswith("POST gateway:") and c.endswith("/SendInput")]


def runner_pids(server: Any) -> list[int]:
    return server.live_pids()


def kill_calls(server: Any) -> list[str]:
    return [c for c in server.calls if c.startswith("POST gateway:") and c.endswith("/SendSignal")]
