"""Shared fixtures: the scripted LM server, RLM factories and the leak check after every test."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rlm import RLM
from rlm.testing import ScriptedLMServer
from rlm.testing.leaks import runner_pids


@pytest.fixture(autouse=True)
def no_leaked_runners() -> Iterator[None]:
    """Every test must leave no runner process behind (acceptance: no leaks, ever). Only this
    process's descendants count, so other test runs on the machine do not interfere."""
    me = os.getpid()
    before = set(runner_pids(parent=me))
    yield
    deadline = time.monotonic() + 5
    leaked = set(runner_pids(parent=me)) - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = set(runner_pids(parent=me)) - before
    assert not leaked, f"runner processes left behind: {sorted(leaked)}"


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
    import subprocess

    if shutil.which("docker") is None:
        return
    from rlm.environments.docker import LABEL, OWNER_PID_LABEL

    def ours() -> list[str]:
        out = subprocess.run(
            [
                "docker",
                "ps",
                "-aq",
                "--filter",
                f"label={LABEL}",
                "--filter",
                f"label={OWNER_PID_LABEL}={os.getpid()}",
            ],
            capture_output=True,
            text=True,
        )
        return out.stdout.split() if out.returncode == 0 else []

    deadline = time.monotonic() + 15
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ours(), f"docker containers left behind by this test session: {ours()}"
