"""Fixtures for the shared environment contract suite.

Every adapter runs the same tests: add its name to ``ENVIRONMENTS`` (and a skip condition when it
needs something this machine may lack). A cloud adapter also needs ``standin_<name>.py``:
whether it can run here (``SKIP_REASON``), how to start its stand-in (``running_standin``), how
to read the stand-in's call log (``sandbox_creates``, ``sandbox_deletes``, ``file_uploads``,
``relay_calls``, ``runner_pids``, ``kill_calls``, optionally ``inband_bytes``) and the live
switch (``live_requested``, ``live_kwargs``, ``LIVE_REQUIREMENT``).

The docker environment runs once per OCI runtime in ``DOCKER_RUNTIMES`` (ids ``docker`` and
``docker-runsc``); the gVisor variant skips with its reason when runsc is not usable here, unless
``RLM_REQUIRE_GVISOR=1`` (set by .ci/run) turns that into a failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from docker_check import (
    DOCKER_RUNTIMES,
    docker_available,
    docker_variant_id,
    require_docker_runtime,
)

from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments import environment_class
from rlm.environments.base import SandboxEnvironment
from rlm.testing import contract
from rlm.testing.contract import RecordingHandler

#: Cloud providers: each has a stand-in (``standin_<name>.py`` beside this file) speaking its
#: wire protocol, used through the real SDK; ``RLM_LIVE_<NAME>=1`` plus credentials runs the same
#: suite against the real provider instead.
CLOUD_PROVIDERS = ["modal", "e2b", "daytona", "prime"]
ENVIRONMENTS = ["local", "docker", "stdio-relay", *CLOUD_PROVIDERS]


def cloud_fixture(name: str):
    """The provider's test fixture module ``standin_<name>`` (see the module docstring), or None
    when it has none."""
    import importlib

    try:
        return importlib.import_module(f"standin_{name}")
    except ImportError as error:
        if error.name == f"standin_{name}":
            return None
        raise


def usable_cloud_fixture(name: str):
    """The provider's fixture module; skips the test when it has none or cannot run here."""
    module = cloud_fixture(name)
    if module is None:
        pytest.skip(f"{name}: no stand-in fixture yet")
    if module.SKIP_REASON:
        pytest.skip(f"{name}: {module.SKIP_REASON}")
    return module


def adapter_class(name: str) -> type[SandboxEnvironment]:
    """The adapter class for ``name``: a registered environment, or one that exists only for
    the tests (``stdio-relay``: a relayed adapter over local pipes)."""
    if name == "stdio-relay":
        from stdio_adapter import StdioRelayEnvironment

        return StdioRelayEnvironment
    cls = environment_class(name)
    assert issubclass(cls, SandboxEnvironment), cls
    return cls


def own_sandbox_standins(
    running_standin: Callable[..., AbstractContextManager[tuple[Any, dict[str, Any]]]],
) -> Callable[..., AbstractContextManager[tuple[Any, dict[str, Any]]]]:
    """A provider fixture's ``running_standin`` whose environment_kwargs ask for a sandbox per
    session (``child_sandbox="own"``): for the tests of a provider's own mechanics (its sandbox,
    its exec stream, one runner's relay). The shared tree is tested in test_cloud_contract.py."""

    @contextlib.contextmanager
    def start(**options: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
        with running_standin(**options) as (server, kwargs):
            yield server, {**kwargs, "child_sandbox": "own"}

    return start


def start_environment(
    name: str, broker: BrokerServer, handler: Any, **kwargs: Any
) -> SandboxEnvironment:
    """A started environment of kind ``name`` (the caller closes it)."""
    return contract.start_environment(adapter_class(name), broker, handler, **kwargs)


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerServer]:
    server = BrokerServer()
    run_sync(server.start())
    yield server
    run_sync(server.aclose())


def variants(names: list[str]) -> list[Any]:
    """(environment name, docker runtime) for each of ``names``, docker once per runtime."""
    found = []
    for name in names:
        runtimes = DOCKER_RUNTIMES if name == "docker" else [None]
        for runtime in runtimes:
            ident = docker_variant_id(runtime) if name == "docker" else name
            found.append(pytest.param((name, runtime), id=ident))
    return found


def usable_variant(variant: tuple[str, str | None]) -> tuple[str, str | None]:
    """``variant`` when it can run here; skips the test with the reason otherwise (docker fails
    instead under RLM_REQUIRE_DOCKER=1 / RLM_REQUIRE_GVISOR=1)."""
    name, runtime = variant
    if name == "docker":
        reason = docker_available()
        if reason:
            pytest.skip(f"docker: {reason}")
        require_docker_runtime(runtime)
    if name in CLOUD_PROVIDERS:
        usable_cloud_fixture(name)
    return name, runtime


@pytest.fixture(params=variants(ENVIRONMENTS))
def env_variant(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The environment under test and, for docker, its OCI runtime (None: the engine's default)."""
    return usable_variant(request.param)


@pytest.fixture
def env_name(env_variant: tuple[str, str | None]) -> str:
    return env_variant[0]


@pytest.fixture
def docker_runtime(env_variant: tuple[str, str | None]) -> str | None:
    """The docker variant's OCI runtime (None: the engine's default, runc)."""
    return env_variant[1]


@pytest.fixture
def env_kwargs(env_name: str, docker_runtime: str | None) -> Iterator[dict[str, Any]]:
    """Provider-specific environment_kwargs: for docker, its runtime; for a cloud provider, those
    reaching its stand-in, or the real provider when its live run is requested."""
    if env_name not in CLOUD_PROVIDERS:
        yield {"runtime": docker_runtime} if docker_runtime else {}
        return
    module = cloud_fixture(env_name)
    if module.live_requested():
        yield module.live_kwargs()
        return
    with module.running_standin() as (_server, kwargs):
        yield kwargs


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def make_env(
    broker: BrokerServer, handler: RecordingHandler, env_name: str, env_kwargs: dict[str, Any]
) -> Iterator[Any]:
    """Starts environments of the parametrised kind; closes them after the test."""
    environment = adapter_class(env_name)
    with contract.started_environments(environment, broker, handler, env_kwargs) as make:
        yield make
