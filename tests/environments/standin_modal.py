"""The Modal fixture of the shared contract suite (loaded by ``cloud_fixture("modal")``).

``running_standin()`` starts :class:`rlm_standins.modal.ModalStandIn`, points the real ``modal``
SDK at it (``MODAL_SERVER_URL`` and a token pair the stand-in accepts, set in the environment for
the duration, with ``HOME`` and ``MODAL_CONFIG_PATH`` pointing at an empty directory so that the
developer's ``~/.modal.toml`` neither leaks in nor is touched) and yields the environment_kwargs:
``python`` is this interpreter (it has grpcio and protobuf), ``server_url`` the stand-in's.

Live run: with ``RLM_LIVE_MODAL=1`` and Modal credentials (``MODAL_TOKEN_ID`` and
``MODAL_TOKEN_SECRET``, or a profile from ``modal token new``), ``live_kwargs()`` gives kwargs for
the real Modal instead (the default image: Debian slim Python 3.12 with grpcio and protobuf), so
the same suite runs against Modal itself: ``RLM_LIVE_MODAL=1 python -m pytest tests/environments
-k modal``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

from hermetic import standins_missing


def _skip_reason() -> str | None:
    try:
        import grpclib  # noqa: F401
        import modal  # noqa: F401
    except ImportError:
        return "pip install 'rlm[modal]'"
    return standins_missing()


SKIP_REASON: str | None = _skip_reason()


#: what running the live variant of the suites takes (said when it is skipped)
LIVE_REQUIREMENT = (
    "RLM_LIVE_MODAL=1 and MODAL_TOKEN_ID / MODAL_TOKEN_SECRET (or a `modal token new` profile)"
)


def live_requested() -> bool:
    """True when the suite should run against the real Modal."""
    if os.environ.get("RLM_LIVE_MODAL") != "1":
        return False
    if os.environ.get("MODAL_TOKEN_ID") and os.environ.get("MODAL_TOKEN_SECRET"):
        return True
    with contextlib.suppress(ImportError):
        from modal.config import config

        return bool(config.get("token_id") and config.get("token_secret"))
    return False


def live_kwargs() -> dict[str, Any]:
    """environment_kwargs for the real Modal (credentials from the usual places)."""
    return {"app_name": os.environ.get("RLM_MODAL_APP", "rlm-live-tests")}


@contextlib.contextmanager
def running_standin(**options: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """A started stand-in (``options`` go to its constructor) and the environment_kwargs that
    reach it through the real SDK (``rlm_standins.launch``: the developer's settings of the
    provider are hidden from the SDK meanwhile); on the way out it checks that no sandbox was
    left running."""
    from rlm_standins.launch import launch

    with launch("modal", **options) as launched:
        yield launched.server, launched.kwargs
        leftover = launched.live_sandboxes()
        assert not leftover, f"Modal sandboxes left running: {leftover}"


# ---- the call log, as the shared cloud suite (test_cloud_contract.py) reads it ---------------

FS_TOOLS = "/__modal/.bin/modal-sandbox-fs-tools"


def sandbox_creates(server: Any) -> int:
    from rlm_standins.launch import sandbox_creates as creates

    return creates(server)


def sandbox_deletes(server: Any) -> int:
    return server.calls.count("SandboxTerminateV2")


def file_writes(server: Any) -> list[str]:
    """The paths written through Modal's file API (the fs-tools exec), in order."""
    return [
        json.loads(argv[1])["WriteFile"]["path"]
        for _sandbox, argv, _pid in server.exec_log
        if argv and argv[0] == FS_TOOLS and "WriteFile" in argv[1]
    ]


def file_uploads(server: Any) -> list[str]:
    """One entry per file written through the provider's file API."""
    return file_writes(server)


def relay_calls(server: Any) -> list[str]:
    """The calls that carried the runner's stdin."""
    return [c for c in server.calls if c == "TaskExecStdinWrite"]


def inband_bytes(server: Any) -> int:
    """The longest command line any exec carried (a context must never travel that way)."""
    return max(len("".join(argv)) for _sandbox, argv, _pid in server.exec_log)


def runner_pids(server: Any) -> list[int]:
    return server.live_pids()


def kill_calls(server: Any) -> list[str]:
    """Modal has no exec-kill call: a second exec kills the runner's process group."""
    return [" ".join(argv) for _s, argv, _p in server.exec_log if "os.killpg" in " ".join(argv)]
