"""``docker``: one locked-down container per RLM tree (or per session), on a real Docker engine.

Secure by default — every relaxation is an explicit ``environment_kwargs`` value:

- ``network="none"``: no network at all. The runner reaches the broker through the broker's unix
  socket, bind-mounted read-only at ``/rlm``.
- read-only root file system; ``/work`` (the working directory) and ``/tmp`` are size-capped tmpfs.
- non-root user (uid 10001), every capability dropped, ``no-new-privileges``, an init process.
- ``mem_limit`` (cgroup, no swap), ``cpus``, ``pids_limit``; the runner's own rlimits on top.
- the environment is an allow-list: no host variable, so no API key, enters the container.
- ``runtime="runsc"`` (gVisor) is the recommended setting for untrusted input: the sandboxed code
  then talks to gVisor's user-space kernel, not to the host kernel. It needs the runtime
  registered with the engine (``.ci/install-docker.sh`` does it); see ``DockerEnvironment``.

``child_sandbox="shared"`` (the default): the container's main process (behind the init) is the
fork server of ``runner/forkserver.py``, spoken to over the attached stdin/stdout, and every
session of the tree is a runner forked in it with its own process, work directory, rlimits and
broker session (:class:`SharedContainer`, one per tree, a tree resource). When the host dies the
attach stream ends, the server kills its runners and exits, and ``--rm`` removes the container.
With a warm pool (``pool_size``) the tree's container is one started ahead: for many trees on
one broker (``RLM(sandbox_pool=...)``), each tree gets a container of its own, used by it only.

``child_sandbox="own"``: the runner is the container's main process, reading its bootstrap line
from the attached stdin; when the host dies it loses the broker and exits. Containers are then
never reused across sessions: a warm pool (``pool_size``) keeps runners started and waiting.

``rlm docker gc`` removes anything a killed engine left.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import itertools
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from rlm.broker import cleanup
from rlm.errors import ConfigurationError, SandboxStartError

from .base import (
    CHILD_SANDBOX_OWN,
    CHILD_SANDBOX_SHARED,
    RunnerProcess,
    SandboxEnvironment,
    WarmPool,
    check_child_sandbox,
)
from .docker_image import DEFAULT_IMAGE, SANDBOX_PYTHON, SANDBOX_UID
from .forkserver import StreamForkServer, StreamRunnerProcess
from .runner.bootstrap import Bootstrap
from .runner.bundle import runner_bundle_path
from .runner.runner import SHARED_HOST_ENV

LABEL = "org.rlm.runner"
#: Labels: LABEL=1 on every container of ours; the owner's pid and host for `rlm docker gc`.
OWNER_PID_LABEL = "org.rlm.owner-pid"
OWNER_HOST_LABEL = "org.rlm.owner-host"
SESSION_LABEL = "org.rlm.session"
BUNDLE_PATH = "/rlm-runner/runner.pyz"
SOCKET_MOUNT = "/rlm"
#: The OCI runtime a container was started with ("default": the engine's default runtime).
RUNTIME_LABEL = "org.rlm.runtime"
#: How the container is used: ``shared`` (the fork server of one RLM tree) or ``own`` (one runner).
MODE_LABEL = "org.rlm.child-sandbox"
INSTALL_RUNSC = (
    "install gVisor (Debian: apt-get install runsc) and register it with the engine: "
    '/etc/docker/daemon.json {"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": '
    '["--network=none", "--host-uds=open"]}}}, then reload dockerd (kill -HUP) or restart it; '
    ".ci/install-docker.sh does both"
)
#: Under gVisor the container's pids cgroup also holds gVisor's own host threads and stub processes
#: (about 40-70 on a 2-CPU host with the runner started, against 12 under runc): at 64 the runner
#: never starts (gVisor panics creating its first stub thread, exit code 2).
RUNSC_MIN_PIDS_LIMIT = 128
#: Tasks (threads) one runner holds in the container's pids cgroup: 3 while a cell runs (the
#: interpreter, its session-proxy reader, the fd-capture pump; the session's stream needs no
#: thread of its own through the proxy), one more per batch call in flight, and room for threads
#: a cell starts. (Before the session proxy each runner also held gRPC's own threads: 13 and
#: more, and at 12 a 100-child fan-out lost children to "can't start new thread"; with the
#: proxy but a thread per stream and per captured fd it held 7, and this was 10.)
TASKS_PER_RUNNER = 6
#: pids_limit kept out of the sessions' share: the init, the fork server and its session proxy
#: (8 threads), the gRPC threads of the one runner forked alone (it dials the broker itself:
#: ~6 more than TASKS_PER_RUNNER), plus what cells start; under gVisor also its own threads
#: (see RUNSC_MIN_PIDS_LIMIT).
RESERVED_TASKS = {"runsc": 80}
RESERVED_TASKS_DEFAULT = 24


def default_max_live_runners(pids_limit: int, runtime: str | None) -> int:
    """How many sessions the tree's container holds at once when ``max_live_runners`` is not
    given: as many as its ``pids_limit`` leaves threads for (38 at the default 256, runc)."""
    reserved = RESERVED_TASKS.get(runtime or "", RESERVED_TASKS_DEFAULT)
    return max(1, (pids_limit - reserved) // TASKS_PER_RUNNER)


@functools.cache
def docker_client() -> Any:
    """A docker SDK client for the engine in the environment (DOCKER_HOST or the local socket),
    made (and pinged) once per process."""
    try:
        import docker
    except ImportError as error:
        raise ConfigurationError(
            "the docker environment needs the docker SDK: pip install 'rlm[docker]'"
        ) from error
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as error:
        raise SandboxStartError(
            f"no Docker engine is reachable ({error}); start dockerd or set DOCKER_HOST"
        ) from error
    return client


_checked_runtimes: set[tuple[Any, ...]] = set()


def check_runtime(client: Any, runtime: str | None, network: str, pids_limit: int) -> None:
    """Raises ConfigurationError unless the engine has ``runtime`` registered (``docker info`` →
    Runtimes) and it can honour ``network`` and ``pids_limit``. Successes are remembered."""
    key = (runtime, network, pids_limit)
    if runtime is None or key in _checked_runtimes:
        return
    try:
        runtimes: dict[str, Any] = client.info().get("Runtimes") or {}
    except Exception as error:
        raise SandboxStartError(
            f"could not ask the Docker engine for its runtimes: {error}"
        ) from error
    if runtime not in runtimes:
        hint = f"; {INSTALL_RUNSC}" if runtime == "runsc" else ""
        raise ConfigurationError(
            f"the Docker engine has no runtime {runtime!r} (registered: "
            f"{', '.join(sorted(runtimes)) or 'none'}){hint}"
        )
    entry = runtimes[runtime] or {}
    if "--network=none" in (entry.get("runtimeArgs") or []) and network != "none":
        raise ConfigurationError(
            f"runtime {runtime!r} is registered with --network=none, so network={network!r} "
            "cannot be honoured: use network='none' or register the runtime without it"
        )
    gvisor = runtime == "runsc" or os.path.basename(str(entry.get("path", ""))) == "runsc"
    if gvisor and pids_limit < RUNSC_MIN_PIDS_LIMIT:
        raise ConfigurationError(
            f"pids_limit={pids_limit} is too low under gVisor ({runtime!r}): the limit also counts "
            f"gVisor's own threads; use at least {RUNSC_MIN_PIDS_LIMIT}"
        )
    _checked_runtimes.add(key)


def read_frames(
    attach_socket: Any, on_stdout: Callable[[bytes], None], on_stderr: Callable[[bytes], None]
) -> None:
    """Reads a container's attached stdout/stderr (docker's 8-byte framed stream) until it ends,
    handing each frame's payload to ``on_stdout`` or ``on_stderr``."""
    raw = getattr(attach_socket, "_sock", attach_socket)
    buffer = b""
    try:
        while True:
            data = raw.recv(65536)
            if not data:
                break
            buffer += data
            while len(buffer) >= 8:
                size = int.from_bytes(buffer[4:8], "big")
                if len(buffer) < 8 + size:
                    break
                (on_stderr if buffer[0] == 2 else on_stdout)(buffer[8 : 8 + size])
                buffer = buffer[8 + size :]
    except OSError:
        pass


class DockerRunnerProcess(RunnerProcess):
    """A container whose main process is the runner."""

    def __init__(self, container: Any, attach_socket: Any) -> None:
        self.container = container
        self._socket = attach_socket
        self._exit_code: int | None = None
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=64)
        threading.Thread(target=self._drain, daemon=True, name="rlm-docker-drain").start()

    def _drain(self) -> None:
        """Reads the attached stream until the container ends, keeping the tail of stderr for
        error messages; then records the exit code."""
        read_frames(self._socket, lambda data: None, lambda data: self._stderr.append(data[-2000:]))
        try:
            status = self.container.wait(timeout=10)
            self._exit_code = int(status.get("StatusCode", -1))
        except Exception:
            self._exit_code = -1

    async def send_bootstrap(self, bootstrap: bytes) -> None:
        raw = getattr(self._socket, "_sock", self._socket)
        await asyncio.to_thread(raw.sendall, bootstrap)

    def exit_code(self) -> int | None:
        return self._exit_code

    def diagnostics(self) -> str:
        text = b"".join(self._stderr).decode("utf-8", "replace").strip()[-3000:]
        if self._exit_code == 137:
            text = (text + "\n" if text else "") + "killed (exit 137: memory limit or kill)"
        return text

    def _kill_sync(self) -> None:
        with contextlib.suppress(Exception):
            self._socket.close()
        with contextlib.suppress(Exception):
            self.container.remove(force=True)

    async def kill(self) -> None:
        await asyncio.to_thread(self._kill_sync)


class SharedRunnerProcess(StreamRunnerProcess):
    """A runner forked in the tree's shared container."""

    @property
    def container(self) -> Any:
        """The tree's container (docker-py object) this runner lives in."""
        return self.sandbox


class TreeContainer(RunnerProcess):
    """A started container whose main process is the fork server of one tree's sessions
    (``child_sandbox="shared"``). A :class:`RunnerProcess` so that the warm pool can hold it."""

    def __init__(self, container: Any, attached: Any, server: StreamForkServer) -> None:
        self.container = container
        self.attached = attached
        self.server = server
        self.stderr: collections.deque[bytes] = collections.deque(maxlen=16)

    @classmethod
    async def start(cls, spec: ContainerSpec, max_runners: int, timeout: float) -> TreeContainer:
        """Creates the container and waits (up to ``timeout``) for its fork server."""
        client = await asyncio.to_thread(docker_client)
        container, attached = await asyncio.to_thread(spec.create, client, "tree", shared=True)
        loop = asyncio.get_running_loop()
        write_lock = threading.Lock()
        raw = getattr(attached, "_sock", attached)

        def send(data: bytes) -> None:
            with write_lock:
                raw.sendall(data)

        async def write(data: bytes) -> None:
            await asyncio.to_thread(send, data)

        server = StreamForkServer(write, max_runners=max_runners, what="docker")
        tree = cls(container, attached, server)

        def feed(data: bytes) -> None:
            loop.call_soon_threadsafe(server.feed, data)

        def drain() -> None:
            read_frames(attached, feed, lambda data: tree.stderr.append(data[-2000:]))
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
                loop.call_soon_threadsafe(server.end, tree.ended_reason())

        threading.Thread(target=drain, daemon=True, name="rlm-docker-tree").start()
        try:
            await asyncio.wait_for(server.ready.wait(), timeout)
        except TimeoutError:
            server.end("no answer")
        if server.ended is not None:
            await tree.kill()
            raise SandboxStartError(
                "the fork server of the tree's docker sandbox did not start"
                f"{': ' + tree.ended_reason() if tree.stderr else ''}"
            )
        return tree

    def ended_reason(self) -> str:
        tail = b"".join(self.stderr).decode("utf-8", "replace").strip()[-1500:]
        return "the RLM tree's docker sandbox ended" + (f"; its stderr: {tail}" if tail else "")

    def exit_code(self) -> int | None:
        return None if self.server.ended is None else -1

    def diagnostics(self) -> str:
        return self.ended_reason()

    def _remove(self) -> None:
        with contextlib.suppress(Exception):
            self.attached.close()
        with contextlib.suppress(Exception):
            self.container.remove(force=True)

    async def kill(self) -> None:
        self.server.end("the RLM tree's docker sandbox was closed")
        await asyncio.to_thread(self._remove)


class SharedContainer:
    """The one container of an RLM tree (``child_sandbox="shared"``): its main process is a
    fork server, and every session of the tree (the root, each child and grandchild) is a runner
    forked in it, with its own process, work directory, rlimits and broker session. A resource of
    the tree (of its broker scope): made by the tree's first sandbox, removed when the tree
    closes. With a warm ``pool`` the container is one the pool started ahead (used by this tree
    only, then removed). A container that died (OOM of the whole cgroup, a gVisor panic) is
    replaced by the next session start."""

    close_order = 10  # at exit: after the sessions that use it

    def __init__(
        self,
        spec: ContainerSpec,
        max_runners: int,
        startup_timeout: float,
        pool: WarmPool | None = None,
    ) -> None:
        self.spec = spec
        self.max_runners = max_runners
        self.startup_timeout = startup_timeout
        self.pool = pool
        self.containers_started = 0
        self._workdirs = itertools.count(1)
        self._lock = asyncio.Lock()
        self._current: TreeContainer | None = None
        self._closed = False

    def next_workdir(self) -> str:
        """A work directory no other session of this container has had."""
        return f"/work/s{next(self._workdirs)}"

    async def runner(self) -> SharedRunnerProcess:
        """A runner of this tree's container (forked when its bootstrap is sent)."""
        async with self._lock:
            if self._closed:
                raise SandboxStartError("the RLM tree's docker sandbox is closed")
            if self._current is None or self._current.server.ended is not None:
                await self._replace()
            assert self._current is not None
            tree = self._current
        return SharedRunnerProcess(tree.server, self.startup_timeout, tree.container)

    def _start(self) -> Awaitable[TreeContainer]:
        return TreeContainer.start(self.spec, self.max_runners, self.startup_timeout)

    async def _replace(self) -> None:
        await self._remove_current()
        if not self.containers_started:
            cleanup.track(self)
        if self.pool is None:
            tree = await self._start()
        else:
            key = ("docker-tree", self.spec.key(), self.max_runners, self.startup_timeout)
            process = await self.pool.acquire(key, self._start, self.startup_timeout)
            assert isinstance(process, TreeContainer)
            tree = process
        self.containers_started += 1
        self._current = tree

    async def _remove_current(self) -> None:
        current, self._current = self._current, None
        if current is None:
            return
        try:
            await current.kill()
        finally:
            if self.pool is not None:
                self.pool.release()

    async def aclose(self) -> None:
        self._closed = True
        cleanup.untrack(self)
        async with self._lock:
            await self._remove_current()


class DockerEnvironment(SandboxEnvironment):
    """Runs generated code in a hardened container.

    ``environment_kwargs``: ``image`` (default ``rlm-sandbox:latest``, build it with
    ``rlm docker build-image``), ``network`` (default ``"none"``; e.g. ``"bridge"`` to allow
    network), ``mem_limit`` (default ``"2g"``), ``cpus`` (default 1.0), ``pids_limit`` (default
    256), ``tmpfs_size`` (default ``"1g"`` for /work), ``read_only`` (default True), ``user``,
    ``volumes`` (extra docker-py volume specs, mounted as given), ``python`` (interpreter path in
    the image), ``runtime`` (the engine's OCI runtime: default None, the engine's default, runc),
    ``child_sandbox`` (``"shared"``, the default: every session of the RLM tree is a process
    forked in the tree's one container; ``"own"``: a container per session, for siblings that
    must not reach each other), ``max_live_runners`` (sessions alive at once in the shared
    container, a further one waits up to ``startup_timeout``; default: what ``pids_limit``
    leaves room for, 23 at the default 256 under runc, see :func:`default_max_live_runners`),
    plus the shared ``pool_size`` / ``pool_idle_timeout`` / ``max_sandboxes`` (keep that many
    containers started and at most ``max_sandboxes`` alive, for every tree on the broker: runner
    containers with ``"own"``, each tree's fork-server container with ``"shared"``) and
    ``cell_timeout``, ``memory_mb``, ``max_output_chars``, ``max_file_mb``, ``startup_timeout``.

    For untrusted input use ``runtime="runsc"`` (gVisor): a kernel exploit must then break gVisor's
    user-space kernel before it reaches the host's. It has to be registered with the engine
    (``docker info`` lists the runtimes; an unknown one is a ConfigurationError that says how to
    install it); Debian's build runs with ``network="none"`` only. Under gVisor ``pids_limit``
    also counts gVisor's own host threads, so it must be at least ``RUNSC_MIN_PIDS_LIMIT`` (128).
    """

    name = "docker"

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        network: str = "none",
        mem_limit: str = "2g",
        cpus: float = 1.0,
        pids_limit: int = 256,
        tmpfs_size: str = "1g",
        read_only: bool = True,
        user: str = f"{SANDBOX_UID}:{SANDBOX_UID}",
        volumes: dict[str, dict[str, str]] | None = None,
        python: str = SANDBOX_PYTHON,
        runtime: str | None = None,
        child_sandbox: str = CHILD_SANDBOX_SHARED,
        max_live_runners: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_child_sandbox(child_sandbox, max_live_runners)
        if child_sandbox == CHILD_SANDBOX_OWN:
            kwargs["max_live_runners"] = max_live_runners  # counted per container (base.py)
        elif max_live_runners is None:
            max_live_runners = default_max_live_runners(pids_limit, runtime)
        self.child_sandbox = child_sandbox
        self.max_live_runners = max_live_runners
        kwargs.setdefault("memory_mb", 1536)
        super().__init__(**kwargs)
        self.tree: SharedContainer | None = None
        socket_dir = self.broker.socket_dir
        if not socket_dir:
            raise ConfigurationError(
                "the docker environment needs the broker on a unix socket (broker_transport='unix')"
            )
        self.spec = ContainerSpec(
            image=image,
            network=network,
            mem_limit=mem_limit,
            cpus=cpus,
            pids_limit=pids_limit,
            tmpfs_size=tmpfs_size,
            read_only=read_only,
            user=user,
            volumes=dict(volumes or {}),
            python=python,
            runtime=runtime,
            socket_dir=socket_dir,
        )

    async def _create_sandbox(self) -> None:
        client = await asyncio.to_thread(docker_client)  # fail early, with a clear message
        spec = self.spec
        await asyncio.to_thread(check_runtime, client, spec.runtime, spec.network, spec.pids_limit)
        # The container's user (uid 10001) must reach the broker's socket; the session token,
        # not the file mode, is what keeps other processes out.
        os.chmod(self.spec.socket_dir, 0o711)
        os.chmod(os.path.join(self.spec.socket_dir, "broker.sock"), 0o666)
        if self.child_sandbox == CHILD_SANDBOX_SHARED:
            live = self.max_live_runners or default_max_live_runners(
                self.spec.pids_limit, self.spec.runtime
            )
            key = ("docker-tree", self.spec.key(), live, self.startup_timeout)
            self.tree = self.broker.resource(
                key, lambda: SharedContainer(self.spec, live, self.startup_timeout, self.pool)
            )

    def _broker_address(self) -> str:
        return f"unix:{SOCKET_MOUNT}/broker.sock"

    def _bootstrap(self, bootstrap: Bootstrap) -> Bootstrap:
        if self.tree is None:
            return dataclasses.replace(bootstrap, workdir="/work")
        # A directory of its own in the shared /work (removed when its runner ends); tempfile
        # goes there too, not to the /tmp every session of the container shares.
        workdir = self.tree.next_workdir()
        return dataclasses.replace(
            bootstrap,
            workdir=workdir,
            make_workdir=True,
            env={"HOME": workdir, "TMPDIR": workdir},
        )

    def pool_key(self) -> tuple[Any, ...] | None:
        return self.spec.key() if self.tree is None else None

    async def _spawn_runner(self) -> RunnerProcess:
        if self.tree is not None:
            return await self.tree.runner()
        return await asyncio.to_thread(self.spec.start, docker_client(), self.label)

    async def _destroy_sandbox(self) -> None:
        pass  # the runner's container is the sandbox: killing the runner removed it


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """How to start one runner container (shared by direct starts and the warm pool)."""

    image: str
    network: str
    mem_limit: str
    cpus: float
    pids_limit: int
    tmpfs_size: str
    read_only: bool
    user: str
    volumes: dict[str, dict[str, str]]
    python: str
    runtime: str | None
    socket_dir: str

    def key(self) -> tuple[Any, ...]:
        """What makes two specs interchangeable (a pooled container fits the same key)."""
        return tuple((f.name, repr(getattr(self, f.name))) for f in dataclasses.fields(self))

    def run_kwargs(self, label: str, *, shared: bool = False) -> dict[str, Any]:
        """docker-py's ``create`` arguments: the container's main process is one runner, or
        (``shared``) the fork server of a tree's shared sandbox."""
        volumes = {
            self.socket_dir: {"bind": SOCKET_MOUNT, "mode": "ro"},
            str(runner_bundle_path()): {"bind": BUNDLE_PATH, "mode": "ro"},
            **self.volumes,
        }
        kwargs: dict[str, Any] = {
            "image": self.image,
            "command": [self.python, "-I", "-u", BUNDLE_PATH]
            + (["--fork-server-stdio"] if shared else []),
            "stdin_open": True,
            # The fork server learns that its host is gone from its stdin's end: docker closes
            # it when the attached client disconnects only with StdinOnce, which docker-py sets
            # for a container created with stdin_open and detach=False.
            "detach": not shared,
            "auto_remove": True,
            "init": True,
            "network_mode": self.network,
            "read_only": self.read_only,
            "tmpfs": {
                "/work": f"size={self.tmpfs_size},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
                "/tmp": f"size=64m,uid={SANDBOX_UID},gid={SANDBOX_UID},mode=1777",
            },
            "user": self.user,
            "working_dir": "/work",
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "pids_limit": self.pids_limit,
            "mem_limit": self.mem_limit,
            "memswap_limit": self.mem_limit,
            "nano_cpus": int(self.cpus * 1e9),
            "environment": {
                "HOME": "/work",
                "TMPDIR": "/tmp",
                "LANG": "C.UTF-8",
                "MALLOC_ARENA_MAX": "2",
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                # Sessions share the container's user: each runner makes itself non-dumpable
                # and a subreaper (see runner.contain_process).
                **({SHARED_HOST_ENV: "1"} if shared else {}),
            },
            "labels": {
                LABEL: "1",
                SESSION_LABEL: label[:60],
                OWNER_PID_LABEL: str(os.getpid()),
                OWNER_HOST_LABEL: os.uname().nodename,
                RUNTIME_LABEL: self.runtime or "default",
                MODE_LABEL: CHILD_SANDBOX_SHARED if shared else CHILD_SANDBOX_OWN,
            },
            "volumes": volumes,
        }
        if self.runtime is not None:
            kwargs["runtime"] = self.runtime
        return kwargs

    def start(self, client: Any, label: str) -> DockerRunnerProcess:
        """Creates and starts the container; its runner waits for the bootstrap on stdin."""
        container, socket = self.create(client, label)
        return DockerRunnerProcess(container, socket)

    def create(self, client: Any, label: str, *, shared: bool = False) -> tuple[Any, Any]:
        """Creates and starts the container; returns it with its attached socket."""
        try:
            container = client.containers.create(**self.run_kwargs(label, shared=shared))
        except Exception as error:
            message = str(error)
            if "No such image" in message or "not found" in message.lower():
                raise SandboxStartError(
                    f"docker image {self.image!r} not found: build it with `rlm docker build-image`"
                ) from error
            raise SandboxStartError(f"could not create the sandbox container: {error}") from error
        try:
            socket = container.attach_socket(
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
            container.start()
        except Exception as error:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            raise SandboxStartError(f"could not start the sandbox container: {error}") from error
        return container, socket


def gc(client: Any | None = None, *, all_hosts: bool = False) -> list[str]:
    """Removes our containers whose owning process on this host is gone (all ours with
    ``all_hosts``). Returns the removed container ids."""
    client = client or docker_client()
    removed = []
    host = os.uname().nodename
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        labels = container.labels or {}
        owner = int(labels.get(OWNER_PID_LABEL, "0") or 0)
        if not all_hosts:
            if labels.get(OWNER_HOST_LABEL) != host:
                continue
            if owner and _alive(owner):
                continue
        with contextlib.suppress(Exception):
            container.remove(force=True)
            removed.append(container.id)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
