"""The sandboxes the red-team scenarios run in: ``local``, and ``docker`` under runc and gVisor.

A test asks for ``sandbox``: the ``RLM(...)`` keyword arguments that choose the environment. The
docker variants skip with their reason where no engine (or no runsc) is usable here, and fail
instead under ``RLM_REQUIRE_DOCKER=1`` / ``RLM_REQUIRE_GVISOR=1`` (set by .ci/run).
"""

from __future__ import annotations

from typing import Any

import pytest
from docker_check import (
    DOCKER_RUNTIMES,
    docker_available,
    docker_variant_id,
    require_docker_runtime,
)

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
