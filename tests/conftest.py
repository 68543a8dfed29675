"""Shared fixtures: the scripted LM server, RLM factories and the leak check after every test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import suite_runs
from docker_check import (
    DOCKER_RUNTIMES,
    docker_available,
    docker_variant_id,
    our_containers,
    require_docker_runtime,
)

from rlm import RLM
from rlm.testing import ScriptedLMServer


@pytest.fixture(autouse=True)
def no_leaked_runners() -> Iterator[None]:
    """Every test must leave no runner process behind (acceptance: no leaks, ever). Only this
    process's descendants count, so other test runs on the machine do not interfere (and the
    suites running in processes of their own check theirs themselves: tests/suite_runs.py)."""
    before = set(suite_runs.our_runner_pids())
    yield
    deadline = time.monotonic() + 5
    leaked = set(suite_runs.our_runner_pids()) - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = set(suite_runs.our_runner_pids()) - before
    assert not leaked, f"runner processes left behind: {sorted(leaked)}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that check a suite run in a process of its own (``suite_run``) go last, so the
    runs (started when collection ends) go on beside the rest of the session."""
    waiting = [item for item in items if item.get_closest_marker("suite_run")]
    if waiting:
        items[:] = [item for item in items if not item.get_closest_marker("suite_run")] + waiting


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly:
        suite_runs.start_selected(session.items)


def pytest_sessionfinish(session: pytest.Session) -> None:
    suite_runs.stop_all()


@pytest.fixture
def lm_server() -> Iterator[ScriptedLMServer]:
    with ScriptedLMServer() as server:
        yield server


@pytest.fixture
def make_rlm(lm_server: ScriptedLMServer) -> Iterator[Any]:
    """Builds RLMs against the scripted server; closes them after the test."""
    made: list[RLM] = []

    def factory(**kwargs: Any) -> RLM:
        backend_kwargs = {
            "model_name": "root-model",
            "base_url": lm_server.base_url,
            "api_key": "test-key",
            "max_retries": 1,
            "initial_backoff": 0.01,
            **kwargs.pop("backend_kwargs", {}),
        }
        rlm = RLM(backend="openai", backend_kwargs=backend_kwargs, **kwargs)
        made.append(rlm)
        return rlm

    yield factory
    for rlm in made:
        rlm.close()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_containers_after_the_session() -> Iterator[None]:
    """After the whole session, no container started by this test process may remain."""
    yield
    import shutil

    if shutil.which("docker") is None:
        return

    def ours() -> list[str]:
        return our_containers(os.getpid())

    deadline = time.monotonic() + 15
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ours(), f"docker containers left behind by this test session: {ours()}"


# ---- the sandboxes the red-team scenarios (tests/security) run in ---------------------------
# local, and docker under runc and gVisor; a test asks for ``sandbox``: the ``RLM(...)`` keyword
# arguments that choose the environment. The docker variants skip with their reason where no
# engine (or no runsc) is usable here, and fail instead under RLM_REQUIRE_DOCKER=1 /
# RLM_REQUIRE_GVISOR=1 (set by .ci/run). (Here rather than in tests/security/conftest.py: test
# modules import names `from conftest`, which must stay tests/environments/conftest.py.)


@pytest.fixture(params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def environment(request: pytest.FixtureRequest) -> str:
    """An environment name, for tests that run in both local and docker (docker skips with
    its reason where it is unusable, and fails under RLM_REQUIRE_DOCKER=1)."""
    if request.param == "docker":
        reason = docker_available()
        if reason:
            pytest.skip(f"docker: {reason}")
    return request.param


SANDBOXES = [pytest.param(("local", None), id="local")] + [
    pytest.param(("docker", runtime), id=docker_variant_id(runtime), marks=pytest.mark.docker)
    for runtime in DOCKER_RUNTIMES
]


@pytest.fixture(params=SANDBOXES)
def sandbox(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``environment=`` and ``environment_kwargs=`` for ``RLM`` (docker: with its runtime)."""
    name, runtime = request.param
    if name == "local":
        return {"environment": "local", "environment_kwargs": {}}
    reason = docker_available()
    if reason:
        pytest.skip(f"docker: {reason}")
    kwargs = {"runtime": require_docker_runtime(runtime)} if runtime else {}
    return {"environment": "docker", "environment_kwargs": kwargs}
