"""The locally built sandbox image: runtime, hardening, and gRPC to the host over a unix socket.

The hardening and socket tests run under runc and under gVisor (``runsc``); the gVisor variant
skips when the engine has no runsc, unless ``RLM_REQUIRE_GVISOR=1`` (set by .ci/run)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from rlm.environments.docker_image import (
    DEFAULT_IMAGE,
    SANDBOX_PYTHON,
    SANDBOX_UID,
    SANDBOX_USER,
    build_image,
)
from rlm.errors import ConfigurationError

pytestmark = pytest.mark.docker

# The flags the docker environment runs every sandbox with.
HARDENED: dict[str, Any] = {
    "network_mode": "none",
    "read_only": True,
    "tmpfs": {"/work": f"size=64m,uid={SANDBOX_UID},gid={SANDBOX_UID}"},
    "user": f"{SANDBOX_UID}:{SANDBOX_UID}",
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
    "pids_limit": 64,
    "mem_limit": "256m",
}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    docker = pytest.importorskip("docker", reason="docker SDK missing: pip install 'rlm[docker]'")
    try:
        engine = docker.from_env()
        engine.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"no Docker engine reachable ({exc}); start one with .ci/install-docker.sh")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def image(client: Any) -> str:
    """Build (cached after the first time: well under a second) so the test checks today's recipe."""
    try:
        return build_image(DEFAULT_IMAGE, quiet=True)
    except ConfigurationError as exc:
        pytest.skip(f"cannot build the sandbox image here: {exc}")


@pytest.fixture(params=[None, "runsc"], ids=["runc", "runsc"])
def runtime(request: pytest.FixtureRequest, client: Any) -> dict[str, Any]:
    """docker-py kwargs choosing the OCI runtime: {} for the engine's default (runc)."""
    if request.param is None:
        return {}
    registered = sorted(client.info().get("Runtimes") or {})
    if request.param not in registered:
        reason = (
            f"{request.param} is not a runtime of the Docker engine (registered: "
            f"{', '.join(registered)}); .ci/install-docker.sh installs and registers it"
        )
        if os.environ.get("RLM_REQUIRE_GVISOR") == "1":
            pytest.fail(f"RLM_REQUIRE_GVISOR=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return {"runtime": request.param}


def run_python(client: Any, image: str, code: str, **extra: Any) -> str:
    output = client.containers.run(
        image, [SANDBOX_PYTHON, "-c", code], remove=True, **{**HARDENED, **extra}
    )
    return output.decode()


def as_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3])


def test_runtime_and_user(client: Any, image: str) -> None:
    code = (
        "import json, os, pwd, sys, grpc, google.protobuf;"
        "print(json.dumps({'python': list(sys.version_info[:2]), 'grpc': grpc.__version__,"
        " 'protobuf': google.protobuf.__version__, 'uid': os.getuid(), 'gid': os.getgid(),"
        " 'user': pwd.getpwuid(os.getuid()).pw_name, 'cwd': os.getcwd()}))"
    )
    facts = json.loads(run_python(client, image, code))
    assert tuple(facts["python"]) >= (3, 11)
    assert as_tuple(facts["grpc"]) >= (1, 85, 1)
    assert as_tuple(facts["protobuf"]) >= (7, 35)
    assert (facts["uid"], facts["gid"], facts["user"]) == (SANDBOX_UID, SANDBOX_UID, SANDBOX_USER)
    assert facts["cwd"] == "/work"
    labels = client.images.get(image).labels
    assert labels["org.rlm.python"] == SANDBOX_PYTHON


def test_hardening_is_enforced(client: Any, image: str, runtime: dict[str, Any]) -> None:
    code = """
import errno, json, socket
facts = {}
with open("/work/scratch", "w") as handle:
    facts["work_writable"] = handle.write("ok") == 2
# /var/tmp is world-writable in the image: only the read-only root refuses this write (gVisor
# checks the file mode first, so under a root-owned directory such as /usr it says EACCES).
try:
    open("/var/tmp/evil", "w")
except OSError as exc:
    facts["root_fs"] = errno.errorcode[exc.errno]
try:
    socket.create_connection(("192.0.2.1", 80), timeout=2)
except OSError as exc:
    facts["network"] = type(exc).__name__
facts["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
print(json.dumps(facts))
"""
    facts = json.loads(run_python(client, image, code, **runtime))
    assert facts["work_writable"] is True
    assert facts["root_fs"] == "EROFS"
    assert "network" in facts
    assert int(facts["cap_eff"], 16) == 0


@pytest.fixture
def broker_socket_dir() -> Iterator[pathlib.Path]:
    """A host gRPC server on ``<dir>/broker.sock`` answering ``/rlm.test.Echo/Ping`` with b"pong:"+x.

    Permissions: ``mkdtemp`` gives the directory 0700 and the socket gets 0755 from the usual umask,
    so uid 10001 in the container is refused (EACCES). It needs search (x) on the directory and
    write on the socket: 0711 + 0666 here (chown to 10001 with 0700/0600 is tighter when root).
    """
    directory = pathlib.Path(tempfile.mkdtemp(prefix="rlm-sock-"))  # short: sun_path is 108 bytes
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"pong:" + request)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("rlm.test.Echo", {"Ping": handler})]
    )
    server.add_insecure_port(f"unix:{directory}/broker.sock")
    server.start()
    os.chmod(directory, 0o711)
    os.chmod(directory / "broker.sock", 0o666)
    yield directory
    server.stop(grace=None)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("mode", ["rw", "ro"])
def test_grpc_to_host_through_mounted_unix_socket(
    client: Any, image: str, broker_socket_dir: pathlib.Path, mode: str, runtime: dict[str, Any]
) -> None:
    # A read-only bind mount still allows connect(): the kernel only checks the socket's mode.
    # Under gVisor, runsc's --host-uds=open is what lets the sandbox connect to a host socket.
    code = (
        "import grpc\n"
        "with grpc.insecure_channel('unix:/rlm/broker.sock') as channel:\n"
        "    ping = channel.unary_unary('/rlm.test.Echo/Ping')\n"
        "    print(ping(b'from-sandbox', timeout=10).decode())\n"
    )
    volumes = {str(broker_socket_dir): {"bind": "/rlm", "mode": mode}}
    reply = run_python(client, image, code, volumes=volumes, **runtime)
    assert reply.strip() == "pong:from-sandbox"
