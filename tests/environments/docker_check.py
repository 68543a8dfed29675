"""Whether the Docker engine and our sandbox image are usable, for any test module (this folder
and ``tests`` are on pytest's path): ``docker_available()`` gives the reason to skip, or fails the
run when CI requires docker (``RLM_REQUIRE_DOCKER=1``)."""

from __future__ import annotations

import os
import shutil

import pytest


def docker_available() -> str | None:
    """None when a Docker engine and our image are usable, else the reason to skip.

    With ``RLM_REQUIRE_DOCKER=1`` (set by .ci/run) a missing engine fails the run instead.
    """
    reason = _docker_missing()
    if reason and os.environ.get("RLM_REQUIRE_DOCKER") == "1":
        pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker is unusable: {reason}", pytrace=False)
    return reason


def _docker_missing() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as error:
        return f"no Docker engine reachable ({type(error).__name__}); run .ci/install-docker.sh"
    from rlm.environments.docker_image import DEFAULT_IMAGE, image_exists

    if not image_exists(DEFAULT_IMAGE):
        return f"image {DEFAULT_IMAGE} missing: run `rlm docker build-image`"
    return None
