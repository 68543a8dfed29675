"""Starting a provider's stand-in with what its SDK needs to reach it, in one place.

``launch(name)`` starts the stand-in and, while it runs, hides the developer's settings of that
provider from its SDK (its ``PREFIX_*`` variables, and ``HOME`` for SDKs that keep config and
tokens there), so that a stand-in run can never reach or bill the real service. It yields a
:class:`Launched`: the server, the ``environment_kwargs`` that point rlm's adapter at it, and
the number of sandboxes it has created. The test fixtures, ``rlm providers check`` and the
bench all start stand-ins through it.

An SDK that needs a virtualenv of its own (e2b and prime-sandboxes pin incompatible connectrpc
versions) gets its stand-in in that venv's interpreter: ``python -m rlm_standins NAME`` (see
``__main__``) prints the same facts as one JSON line and answers ``creates`` on stdin.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("modal", "e2b", "daytona", "prime")

#: the token pair a Modal stand-in run gives the SDK (the stand-in records, and accepts, any)
MODAL_TOKEN_ID = "ak-standin"
MODAL_TOKEN_SECRET = "as-standin-secret"


@contextlib.contextmanager
def hermetic_environ(
    prefix: str, *, names: tuple[str, ...] = (), values: Mapping[str, str] | None = None
) -> Iterator[None]:
    """Hides every variable starting with ``prefix`` (and those in ``names``), sets ``values``,
    and puts the caller's variables back afterwards."""

    def ours(name: str) -> bool:
        return name.startswith(prefix) or name in names

    saved = {k: v for k, v in os.environ.items() if ours(k)}
    for name in saved:
        del os.environ[name]
    os.environ.update(values or {})
    try:
        yield
    finally:
        for name in [k for k in os.environ if ours(k)]:
            del os.environ[name]
        os.environ.update(saved)


@dataclass(frozen=True)
class Hermetic:
    """The process environment a stand-in run needs: ``prefix*`` and ``names`` hidden, then
    ``values`` set. Applied by :func:`launch` in its own process; a process that drives a
    stand-in started elsewhere applies it with :meth:`applied`."""

    prefix: str
    names: tuple[str, ...] = ()
    values: dict[str, str] = field(default_factory=dict)

    def applied(self) -> contextlib.AbstractContextManager[None]:
        return hermetic_environ(self.prefix, names=self.names, values=self.values)


@dataclass
class Launched:
    """A running stand-in and how to reach it."""

    name: str
    server: Any
    #: ``environment_kwargs`` for rlm's adapter (``python`` is this interpreter: the stand-in
    #: runs the sandboxes' processes here, and they need grpcio and protobuf)
    kwargs: dict[str, Any]
    #: the environment the provider's SDK must see (already applied in this process)
    hermetic: Hermetic
    _creates: Callable[[Any], int]

    def sandbox_creates(self) -> int:
        """Sandboxes created through the stand-in so far."""
        return self._creates(self.server)

    def live_sandboxes(self) -> list[str]:
        """Ids of the stand-in's sandboxes not yet destroyed."""
        return list(self.server.live_sandboxes())


#: the request in each stand-in's call log that creates a sandbox
CREATE_CALLS: dict[str, str] = {
    "modal": "SandboxCreateV2",
    "e2b": "POST /v2/sandboxes",
    "daytona": "POST /api/sandbox",
    "prime": "POST /api/v1/sandbox",
}


def sandbox_creates(name: str, server: Any) -> int:
    """Sandboxes the stand-in ``server`` of provider ``name`` has created."""
    return list(server.calls).count(CREATE_CALLS[name])


def _server(name: str, options: dict[str, Any]) -> Any:
    if name == "modal":
        from .modal import ModalStandIn

        return ModalStandIn(**options)
    if name == "e2b":
        from .e2b import E2BStandIn

        return E2BStandIn(**options)
    if name == "daytona":
        from .daytona import DaytonaStandIn

        return DaytonaStandIn(**options)
    if name == "prime":
        from .prime import PrimeStandIn

        return PrimeStandIn(**options)
    raise ValueError(f"no stand-in for {name!r}; choose from {', '.join(PROVIDERS)}")


def _reach(name: str, server: Any, home: str) -> tuple[Hermetic, dict[str, Any]]:
    """The environment and the adapter's kwargs that reach ``server``."""
    python = {"python": sys.executable}
    if name == "modal":
        # The SDK reads MODAL_* and ~/.modal.toml: an empty home keeps the developer's out.
        values = {
            "HOME": home,
            "MODAL_CONFIG_PATH": os.path.join(home, ".modal.toml"),
            "MODAL_SERVER_URL": server.server_url,
            "MODAL_TOKEN_ID": MODAL_TOKEN_ID,
            "MODAL_TOKEN_SECRET": MODAL_TOKEN_SECRET,
        }
        return Hermetic("MODAL_", ("HOME",), values), {**python, "server_url": server.server_url}
    if name == "e2b":
        # E2B_DEBUG and friends would send the SDK elsewhere.
        kwargs = {"api_key": server.api_key, "api_url": server.api_url}
        return Hermetic("E2B_"), {**python, **kwargs, "sandbox_url": server.envd_url}
    if name == "daytona":
        kwargs = {"api_url": server.api_url, "api_key": server.api_key}
        return Hermetic("DAYTONA_"), {**python, **kwargs}
    # prime: the SDK reads ~/.prime and caches gateway tokens there.
    kwargs = {"api_url": server.api_url, "api_key": server.api_key}
    return Hermetic("PRIME_", ("HOME",), {"HOME": home}), {**python, **kwargs}


@contextlib.contextmanager
def launch(name: str, **options: Any) -> Iterator[Launched]:
    """Starts provider ``name``'s stand-in (``options`` go to its constructor) with the SDK's
    environment made hermetic for as long as it runs; stops it (killing every sandbox) after."""
    server = _server(name, options)
    with (
        tempfile.TemporaryDirectory(prefix=f"rlm-standin-{name}-home-") as home,
        server,
    ):
        hermetic, kwargs = _reach(name, server, home)
        with hermetic.applied():
            yield Launched(name, server, kwargs, hermetic, lambda s: sandbox_creates(name, s))
