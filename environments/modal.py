"""Modal sandboxes (``pip install 'rlm[modal]'``): the runner in a Modal Sandbox.

Only provider calls live here; the runner, its relay and the protocol are shared
(:mod:`rlm.environments.relay`). Through the ``modal`` SDK's async interface (``.aio``):
``App.lookup(create_if_missing=True)`` and ``Sandbox.create`` make the sandbox,
``sandbox.filesystem.write_bytes`` is the file API (the runner zipapp, contexts above 1 MiB),
``sandbox.exec`` runs the runner with its stdin and stdout streamed (the relay carries its gRPC
connection to the host broker over them: the sandbox never dials the host, so it runs with
``block_network=True`` by default), and ``terminate`` ends it. Neither the Modal token nor the
broker token enters the sandbox: the token stays in the host's SDK client, the broker token goes
over the process's stdin, and the runner starts with an allow-listed environment.

**Image.** ``image=`` takes any ``modal.Image``; the default is :func:`default_image`,
``Image.debian_slim(python_version="3.12").pip_install("grpcio>=1.85.1", "protobuf>=7.35")``,
built by Modal once and cached. With your own image, make sure ``python=`` (default ``python3``)
is Python >= 3.11 with those two packages, e.g.
``modal.Image.from_registry("python:3.12-slim").pip_install("grpcio>=1.85.1", "protobuf>=7.35")``.

**Configuration.** ``token_id``/``token_secret`` (else ``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET``
or the profile ``modal token new`` wrote), ``server_url`` (else ``MODAL_SERVER_URL``),
``app_name`` (default ``rlm``), ``environment_name`` (else ``MODAL_ENVIRONMENT``), plus the
sandbox's ``sandbox_timeout`` (seconds; Modal ends the sandbox after that long even if this host
dies, default 3600), ``idle_timeout`` (default 300), ``cpu``, ``memory`` (MiB requested; default
``memory_mb``), ``region``, ``cloud``, ``block_network`` (default True),
``outbound_cidr_allowlist``/``outbound_domain_allowlist`` (instead of blocking), and
``sandbox_kwargs`` for anything else ``Sandbox.create`` accepts (``gpu``, ``volumes``...).

**Warm pool.** ``pool_size``, ``max_sandboxes`` and ``pool_idle_timeout`` (shared with every
adapter, see :class:`~rlm.environments.relay.RelayedSandboxEnvironment`) keep tree sandboxes
created and ready ahead of time, one per tree (its whole fan-out forks inside it). A waiting
sandbox is billed for what it reserves: at the defaults (0.125 core, 4 GiB) about $0.0000318 a
second, $0.0095 for the pool's default 300 s idle limit; memory is most of it, so lower
``memory`` for a cheaper pool. Keep ``pool_idle_timeout`` below ``idle_timeout`` (both 300 s by
default), or Modal ends a waiting sandbox first. docs/providers.md says when a pool pays.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import importlib
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

from rlm.errors import (
    ConfigurationError,
    SandboxDiedError,
    SandboxError,
    SandboxStartError,
    SandboxThrottledError,
)

from .docker_image import REQUIREMENTS
from .relay import (
    KILL_WAIT_SECONDS,
    RUNNER_ENV_ALLOWLIST,
    OutputTail,
    RelayedSandboxEnvironment,
    RemoteProcess,
    fingerprint,
    import_sdk,
    upload_timeout,
)
from .throttling import Throttled

#: how long interpreter exit waits for unclosed sandboxes to be terminated
EXIT_CLEANUP_SECONDS = 30.0

# The runner is started through this: it records its pid for kill() (Modal has no exec-kill
# call), leads a process group of its own (so a kill also takes what the cell spawned) and swaps
# the container's environment for an allow-list before it becomes the runner.
_LAUNCHER = f"""\
import os, sys
try:
    os.setsid()
except OSError:
    pass
with open(sys.argv[1], "w") as handle:
    handle.write(str(os.getpid()))
env = {{k: os.environ[k] for k in {RUNNER_ENV_ALLOWLIST!r} if k in os.environ}}
os.execvpe(sys.argv[2], sys.argv[2:], env)
"""
_KILLER = """\
import os, signal, sys
try:
    os.killpg(int(open(sys.argv[1]).read()), signal.SIGKILL)
except (OSError, ValueError):
    pass
"""

_live: weakref.WeakSet[ModalEnvironment] = weakref.WeakSet()
_exit_hook_registered = False


def _sdk() -> Any:
    """The ``modal`` SDK, imported on first use (``import rlm`` must not pull it in)."""
    global _exit_hook_registered
    modal = import_sdk(
        "modal", "the modal environment needs the Modal SDK: pip install 'rlm[modal]'"
    )
    if not _exit_hook_registered:
        # The SDK stops its own event loop at interpreter exit, from an atexit hook registered
        # when it was imported, which would leave our sandboxes running (and billed) until their
        # timeout. atexit runs hooks last-in first-out: this one, registered after the import,
        # terminates them while the SDK still works.
        atexit.register(_close_live_environments)
        _exit_hook_registered = True
    return modal


def _close_live_environments() -> None:
    """At interpreter exit: closes the Modal environments nobody closed, on their own loops."""
    futures = []
    for environment in list(_live):
        loop = environment._loop
        if loop is not None and loop.is_running() and not loop.is_closed():
            futures.append(asyncio.run_coroutine_threadsafe(environment.aclose(), loop))
    if futures:
        concurrent.futures.wait(futures, timeout=EXIT_CLEANUP_SECONDS)


def default_image() -> Any:
    """Modal's Debian slim Python 3.12 image with the runner's two dependencies."""
    return _sdk().Image.debian_slim(python_version="3.12").pip_install(*REQUIREMENTS)


@contextlib.asynccontextmanager
async def _closing_stream(reader: Any) -> AsyncIterator[Any]:
    """Iterates an SDK stream and closes it explicitly when done, failed or cancelled. Left to
    the garbage collector, the SDK closes it on its own loop later, which at interpreter exit has
    already stopped (and warns that a coroutine was never awaited). A broken stream just ends."""
    stream = aiter(reader)
    try:
        yield stream
    except Exception:
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()


def _retry_after_secs(details: Any) -> float | None:
    """The wait a RESOURCE_EXHAUSTED's ``RPCRetryPolicy`` detail asks for, if it has one."""
    for detail in details or ():
        seconds = getattr(detail, "retry_after_secs", None)
        if seconds is not None:
            return max(float(seconds), 0.1)
    return None


class ModalProcess(RemoteProcess):
    """A process started with ``sandbox.exec``: stdin drained to the command router, stdout
    streamed from it, the exit code from a background ``wait``."""

    def __init__(self, environment: ModalEnvironment, process: Any, pidfile: str) -> None:
        self._environment = environment
        self._process = process
        self._pidfile = pidfile
        self._code: int | None = None
        self._stderr = OutputTail()
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())
        self._waiter = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        try:
            code = await self._process.wait.aio()
        except Exception:
            code = -1  # the sandbox or its router is gone: the process counts as ended
        # Its last words first, so that whoever sees the exit code also sees why.
        await asyncio.wait({self._stderr_task}, timeout=1.0)
        self._code = code

    async def _drain_stderr(self) -> None:
        # Read stderr as it comes (the router keeps it until read), keeping only the tail.
        async with _closing_stream(self._process.stderr) as stream:
            async for data in stream:
                self._stderr.add(data)

    async def write(self, data: bytes) -> None:
        try:
            self._process.stdin.write(data)
            await self._process.stdin.drain.aio()
        except Exception as error:
            # Most often the process has exited: say with which code and what it printed.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._waiter), 2)
            details = self.diagnostics().strip()
            what = f"exited with code {self._code}" if self._code is not None else "failed"
            raise SandboxDiedError(
                f"the runner in the Modal sandbox {what} ({type(error).__name__}: {error})"
                f"{'; its stderr: ' + details[-1000:] if details else ''}"
            ) from error

    async def output(self) -> AsyncGenerator[bytes, None]:
        async with _closing_stream(self._process.stdout) as stream:
            async for data in stream:
                yield data

    def exit_code(self) -> int | None:
        return self._code

    async def kill(self) -> None:
        # While the environment closes, terminating the sandbox kills everything anyway.
        if self._code is None and not self._environment.closing:
            await self._environment._run_quietly(
                [self._environment.python, "-I", "-c", _KILLER, self._pidfile]
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._waiter), KILL_WAIT_SECONDS)
        self._stderr_task.cancel()
        if self._environment.closing:
            self._waiter.cancel()
        # Let the cancelled tasks close their SDK streams now, while the SDK's loop still runs.
        await asyncio.wait({self._stderr_task, self._waiter}, timeout=KILL_WAIT_SECONDS)


class ModalEnvironment(RelayedSandboxEnvironment):
    """The runner in a Modal Sandbox, reached through the exec stream."""

    name = "modal"
    provider = "Modal"

    def __init__(
        self,
        *,
        image: Any = None,
        python: str = "python3",
        token_id: str | None = None,
        token_secret: str | None = None,
        server_url: str | None = None,
        app_name: str = "rlm",
        environment_name: str | None = None,
        sandbox_timeout: int = 3600,
        idle_timeout: int | None = 300,
        cpu: float | None = None,
        memory: int | None = None,
        region: str | Sequence[str] | None = None,
        cloud: str | None = None,
        block_network: bool = True,
        outbound_cidr_allowlist: Sequence[str] | None = None,
        outbound_domain_allowlist: Sequence[str] | None = None,
        sandbox_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.image = image
        self.python = python
        self.token_id = token_id
        self.token_secret = token_secret
        self.server_url = server_url
        self.app_name = app_name
        self.environment_name = environment_name
        self.sandbox_timeout = sandbox_timeout
        self.idle_timeout = idle_timeout
        self.cpu = cpu
        self.memory = memory if memory is not None else self.memory_mb
        self.region = region
        self.cloud = cloud
        allowlisted = outbound_cidr_allowlist is not None or outbound_domain_allowlist is not None
        self.block_network = block_network and not allowlisted
        self.outbound_cidr_allowlist = outbound_cidr_allowlist
        self.outbound_domain_allowlist = outbound_domain_allowlist
        self.sandbox_kwargs = dict(sandbox_kwargs or {})
        #: the Modal sandbox id while one exists (for ``modal.Sandbox.from_id``)
        self.sandbox_id: str | None = None
        self._sandbox: Any = None
        self._client: Any = None
        self._owns_client = False
        self._launches = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def closing(self) -> bool:
        """True once aclose() has begun (the sandbox is about to be terminated)."""
        return self._closed

    # ---- provider hooks --------------------------------------------------------------------

    def sandbox_settings(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "account": (self.server_url, self.token_id, fingerprint(self.token_secret)),
            "app": (self.app_name, self.environment_name),
            "sandbox_timeout": self.sandbox_timeout,
            "idle_timeout": self.idle_timeout,
            "cpu": self.cpu,
            "memory": self.memory,
            "region": self.region,
            "cloud": self.cloud,
            "block_network": self.block_network,
            "outbound_cidr_allowlist": self.outbound_cidr_allowlist,
            "outbound_domain_allowlist": self.outbound_domain_allowlist,
            "sandbox_kwargs": self.sandbox_kwargs,
        }

    async def _open_client(self, modal: Any) -> Any:
        """A client of this environment's own (closed with it), or the SDK's shared one when
        only OAuth credentials are configured."""
        config = importlib.import_module("modal.config").config
        token_id = self.token_id or config.get("token_id")
        token_secret = self.token_secret or config.get("token_secret")
        if token_id and token_secret:
            from modal_proto import api_pb2

            server_url = self.server_url or config.get("server_url")
            client = modal.Client(server_url, api_pb2.CLIENT_TYPE_CLIENT, (token_id, token_secret))
            await client.__aenter__()
            self._owns_client = True
            return client
        if config.get("oauth_refresh_token"):
            return await modal.Client.from_env.aio()
        raise ConfigurationError(
            "no Modal credentials: set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET, run `modal token "
            "new`, or pass environment_kwargs={'token_id': ..., 'token_secret': ...}"
        )

    async def _create_sandbox(self) -> None:
        modal = _sdk()
        self._loop = asyncio.get_running_loop()
        _live.add(self)
        errors = modal.exception.Error
        self._client = await self._open_client(modal)
        network: dict[str, Any] = {"block_network": self.block_network}
        if self.outbound_cidr_allowlist is not None:
            network["outbound_cidr_allowlist"] = list(self.outbound_cidr_allowlist)
        if self.outbound_domain_allowlist is not None:
            network["outbound_domain_allowlist"] = list(self.outbound_domain_allowlist)
        app: Any = None

        async def create() -> Any:
            nonlocal app
            if app is None:
                app = await modal.App.lookup.aio(
                    self.app_name,
                    create_if_missing=True,
                    client=self._client,
                    environment_name=self.environment_name,
                )
            return await modal.Sandbox.create.aio(
                app=app,
                image=self.image if self.image is not None else default_image(),
                client=self._client,
                timeout=self.sandbox_timeout,
                idle_timeout=self.idle_timeout,
                cpu=self.cpu,
                memory=self.memory,
                region=self.region,
                cloud=self.cloud,
                **network,
                **self.sandbox_kwargs,
            )

        try:
            self._sandbox = await self._retrying("creating the sandbox", create)
        except modal.exception.AuthError as error:
            raise SandboxStartError(
                f"Modal refused the credentials ({error}): check MODAL_TOKEN_ID and "
                "MODAL_TOKEN_SECRET, or run `modal token new`"
            ) from error
        except (errors, TypeError) as error:
            raise SandboxStartError(
                f"the Modal sandbox could not be created ({type(error).__name__}: {error}); "
                "check the image, environment_kwargs and your Modal workspace's limits"
            ) from error
        self.sandbox_id = self._sandbox.object_id

    async def _write_file(self, path: str, data: bytes) -> None:
        sandbox = self._require_sandbox()
        try:
            # The SDK sets no deadline of its own on a write.
            await asyncio.wait_for(
                self._retrying(
                    f"uploading {path}", lambda: sandbox.filesystem.write_bytes.aio(data, path)
                ),
                upload_timeout(len(data)),
            )
        except SandboxThrottledError:
            raise
        except Exception as error:
            raise SandboxError(
                f"writing {path} ({len(data)} bytes) into Modal sandbox {self.sandbox_id} failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    async def _exec(self, argv: list[str]) -> RemoteProcess:
        sandbox = self._require_sandbox()
        self._launches += 1
        pidfile = f"{self.sandbox_dir}/runner-{self._launches}.pid"
        command = [self.python, "-I", "-c", _LAUNCHER, pidfile, *argv]
        try:
            process = await self._retrying(
                "starting the runner",
                lambda: sandbox.exec.aio(*command, text=False, workdir=self.sandbox_dir),
            )
        except SandboxThrottledError:
            raise
        except Exception as error:
            raise SandboxDiedError(
                f"starting the runner in Modal sandbox {self.sandbox_id} failed: "
                f"{type(error).__name__}: {error}"
            ) from error
        return ModalProcess(self, process, pidfile)

    async def _run_quietly(self, argv: list[str]) -> None:
        """Runs a short helper command in the sandbox; failures are ignored (best effort)."""
        sandbox = self._sandbox
        if sandbox is None:
            return
        devnull = importlib.import_module("modal.stream_type").StreamType.DEVNULL
        with contextlib.suppress(Exception):
            process = await sandbox.exec.aio(*argv, text=False, stdout=devnull, stderr=devnull)
            await asyncio.wait_for(process.wait.aio(), KILL_WAIT_SECONDS)

    async def _destroy_sandbox(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        client, self._client = self._client, None
        sandbox_id = self.sandbox_id
        _live.discard(self)
        try:
            if sandbox is not None:
                try:
                    await self._retrying("terminating the sandbox", sandbox.terminate.aio)
                except Exception as error:
                    if "not found" not in str(error).lower():
                        raise SandboxError(
                            f"terminating Modal sandbox {sandbox_id} failed ({error}); it is billed "
                            f"until its timeout: stop it with modal.Sandbox.from_id("
                            f"{sandbox_id!r}).terminate() or from the Modal dashboard"
                        ) from error
                finally:
                    with contextlib.suppress(Exception):
                        await sandbox.detach.aio()
        finally:
            if client is not None and self._owns_client:
                with contextlib.suppress(Exception):
                    await client.close.aio()

    def _throttled(self, error: BaseException) -> Throttled | None:
        """The SDK waits out a RESOURCE_EXHAUSTED that carries a retry policy by itself (within
        MODAL_MAX_THROTTLE_WAIT); what reaches here is one it gave up on or got without one."""
        if isinstance(error, _sdk().exception.ResourceExhaustedError):
            return Throttled()
        from grpclib import Status
        from grpclib.exceptions import GRPCError

        if isinstance(error, GRPCError) and error.status == Status.RESOURCE_EXHAUSTED:
            return Throttled(_retry_after_secs(error.details))
        return None

    def _require_sandbox(self) -> Any:
        if self._sandbox is None:
            raise SandboxError("the Modal sandbox is gone; start a new environment")
        return self._sandbox


__all__ = ["ModalEnvironment", "ModalProcess", "default_image"]
