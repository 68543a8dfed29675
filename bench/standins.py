"""Cloud providers' wire-level stand-ins for the bench (``--standins``).

For each cloud provider asked for that has neither credentials nor a stand-in of its own already
(see ``providers.CLOUD_PROVIDERS``), the bench process starts the provider's local stand-in and
points the drivers at it: the variables its SDK reads go into this process's environment (the
drivers inherit it), and ``environment_kwargs`` carry what the adapter needs (the interpreter of
the sandboxes' processes, which the stand-in runs here). The stand-in's call log tells how many
sandboxes a run created. Stand-in figures measure the adapter's own overhead, never the
provider's latency.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .providers import CLOUD_PROVIDERS


@dataclass
class RunningStandIn:
    """A started stand-in, the ``environment_kwargs`` that reach it, and its create count."""

    name: str
    server: Any
    environment_kwargs: dict[str, Any]
    creates: Callable[[Any], int]

    def sandboxes_created(self) -> int:
        return self.creates(self.server)


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _modal() -> Iterator[RunningStandIn]:
    from rlm_standins.modal import ModalStandIn

    with tempfile.TemporaryDirectory(prefix="bench-modal-home-") as home, ModalStandIn() as server:
        values = {
            "MODAL_SERVER_URL": server.server_url,
            "MODAL_TOKEN_ID": "ak-bench",
            "MODAL_TOKEN_SECRET": "as-bench",
            "MODAL_CONFIG_PATH": os.path.join(home, ".modal.toml"),
        }
        with _environ(values):
            yield RunningStandIn(
                "modal",
                server,
                {"python": sys.executable, "server_url": server.server_url},
                lambda s: s.calls.count("SandboxCreateV2"),
            )


@contextlib.contextmanager
def _daytona() -> Iterator[RunningStandIn]:
    from rlm_standins.daytona import DaytonaStandIn

    with DaytonaStandIn() as server:
        values = {"DAYTONA_API_URL": server.api_url, "DAYTONA_API_KEY": server.api_key}
        with _environ(values):
            yield RunningStandIn(
                "daytona",
                server,
                {"python": sys.executable, "api_url": server.api_url, "api_key": server.api_key},
                lambda s: sum(1 for call in s.calls if call == "POST /api/sandbox"),
            )


STARTERS: dict[str, Callable[[], contextlib.AbstractContextManager[RunningStandIn]]] = {
    "modal": _modal,
    "daytona": _daytona,
}


def wanted(name: str) -> bool:
    """True for a cloud provider with a stand-in here and neither credentials nor a stand-in
    already configured."""
    if name not in STARTERS:
        return False
    credentials, stand_in_var = CLOUD_PROVIDERS[name]
    return not os.environ.get(stand_in_var) and not all(os.environ.get(v) for v in credentials)


@contextlib.contextmanager
def running(names: list[str]) -> Iterator[dict[str, RunningStandIn]]:
    """Starts the stand-ins of the ``names`` that want one (see :func:`wanted`)."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(STARTERS[name]()) for name in names if wanted(name)}
