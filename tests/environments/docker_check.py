"""Whether the Docker engine and our sandbox image are usable, for any test module (this folder
and ``tests`` are on pytest's path): ``docker_available()`` gives the reason to skip, or fails the
run when CI requires docker (``RLM_REQUIRE_DOCKER=1``); ``require_docker_runtime(runtime)`` does the
same for an OCI runtime such as gVisor's runsc (``RLM_REQUIRE_GVISOR=1``)."""

from __future__ import annotations

import functools
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


#: OCI runtimes the docker environment is tested under: None is the engine's default (runc), runsc
#: is gVisor (registered by .ci/install-docker.sh).
DOCKER_RUNTIMES: list[str | None] = [None, "runsc"]


def docker_variant_id(runtime: str | None) -> str:
    """The test id of the docker environment under ``runtime``: docker, docker-runsc."""
    return "docker" if runtime is None else f"docker-{runtime}"


def require_docker_runtime(runtime: str | None) -> str | None:
    """Skips (or, with ``RLM_REQUIRE_GVISOR=1``, fails) the test when ``runtime`` is not usable
    here; returns it unchanged otherwise. Docker itself must already be available."""
    if runtime is None:
        return None
    reason = _runtime_missing(runtime)
    if reason is None:
        return runtime
    if os.environ.get("RLM_REQUIRE_GVISOR") == "1":
        pytest.fail(f"RLM_REQUIRE_GVISOR=1 but {runtime} is unusable: {reason}", pytrace=False)
    pytest.skip(f"{docker_variant_id(runtime)}: {reason}")


@functools.cache
def _runtime_missing(runtime: str) -> str | None:
    """None when the engine has ``runtime`` registered and it runs our image, else why not."""
    import docker

    from rlm.environments.docker import LABEL, OWNER_PID_LABEL
    from rlm.environments.docker_image import DEFAULT_IMAGE, SANDBOX_PYTHON

    client = docker.from_env(timeout=30)
    registered = sorted(client.info().get("Runtimes") or {})
    if runtime not in registered:
        return (
            f"{runtime} is not a runtime of the Docker engine (registered: "
            f"{', '.join(registered)}); .ci/install-docker.sh installs and registers it"
        )
    try:
        client.containers.run(
            DEFAULT_IMAGE,
            [SANDBOX_PYTHON, "-c", "pass"],
            runtime=runtime,
            network_mode="none",
            remove=True,
            labels={LABEL: "1", OWNER_PID_LABEL: str(os.getpid())},
        )
    except Exception as error:
        return f"{runtime} is registered but cannot run a container here: {error}"
    finally:
        client.close()
    return None


def our_containers(owner: int | None = None) -> list[str]:
    """Ids of our sandbox containers, running or not; with ``owner``, only those started by that
    host process (pass ``os.getpid()`` for this test process's). [] when docker is unusable."""
    import subprocess

    from rlm.environments.docker import LABEL, OWNER_PID_LABEL

    filters = ["--filter", f"label={LABEL}"]
    if owner is not None:
        filters += ["--filter", f"label={OWNER_PID_LABEL}={owner}"]
    out = subprocess.run(["docker", "ps", "-aq", *filters], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []
