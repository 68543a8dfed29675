"""Starting a provider's stand-in with what its SDK needs to reach it, in one place.

``launch(name)`` starts the stand-in and, while it runs, hides the developer's settings of that
provider from its SDK (its ``PREFIX_*`` variables, and ``HOME`` for SDKs that keep config and
tokens there), so that a stand-in run can never reach or bill the real service. It yields a
:class:`Launched`: the server, the ``environment_kwargs`` that point rlm's adapter at it, and
the number of sandboxes it has created. The test fixtures, ``rlm providers check`` and the
bench all start stand-ins through it. Each provider's module says all of that itself: it names
its class ``STANDIN``, whose ``reach(home)`` gives the SDK's environment and the adapter's
kwargs and whose ``create_call`` is the request that creates a sandbox; a new provider's
stand-in is one new module.

An SDK that needs a virtualenv of its own (e2b and prime-sandboxes pin incompatible connectrpc
versions) gets its stand-in in that venv's interpreter: ``python -m rlm_standins NAME`` (see
``__main__``) prints the same facts as one JSON line and answers ``creates`` on stdin.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pathlib
import pkgutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


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

    def sandbox_creates(self) -> int:
        """Sandboxes created through the stand-in so far."""
        return sandbox_creates(self.server)

    def live_sandboxes(self) -> list[str]:
        """Ids of the stand-in's sandboxes not yet destroyed."""
        return list(self.server.live_sandboxes())


def providers() -> list[str]:
    """The providers with a stand-in here: each module of this package but this one names its
    stand-in class ``STANDIN`` (listed without importing them: each imports its SDK)."""
    package = pathlib.Path(__file__).parent
    return sorted(
        module.name
        for module in pkgutil.iter_modules([str(package)])
        if not module.name.startswith("_") and module.name != __name__.rpartition(".")[2]
    )


def standin_class(name: str) -> Any:
    """Provider ``name``'s stand-in class (its module imports the provider's SDK)."""
    if name not in providers():
        raise ValueError(f"no stand-in for {name!r}; choose from {', '.join(providers())}")
    return importlib.import_module(f"rlm_standins.{name}").STANDIN


def sandbox_creates(server: Any) -> int:
    """Sandboxes the stand-in ``server`` has created (the creating request in its call log)."""
    return list(server.calls).count(type(server).create_call)


@contextlib.contextmanager
def launch(name: str, **options: Any) -> Iterator[Launched]:
    """Starts provider ``name``'s stand-in (``options`` go to its constructor) with the SDK's
    environment made hermetic for as long as it runs; stops it (killing every sandbox) after."""
    server = standin_class(name)(**options)
    with (
        tempfile.TemporaryDirectory(prefix=f"rlm-standin-{name}-home-") as home,
        server,
    ):
        hermetic, kwargs = server.reach(home)
        # The sandboxes' processes run in this interpreter here (they need grpcio, protobuf).
        kwargs = {"python": sys.executable, **kwargs}
        with hermetic.applied():
            yield Launched(name, server, kwargs, hermetic)
