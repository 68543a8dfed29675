"""Daytona sandboxes (``pip install 'rlm[daytona]'``): the runner in a Daytona sandbox.

Only provider calls live here; the runner, its relay and the protocol are shared
(:mod:`rlm.environments.relay`). Through the ``daytona`` SDK's ``AsyncDaytona``: ``create`` makes
the sandbox and waits until it is started, ``fs.upload_file`` is the file API (the runner zipapp,
contexts above 1 MiB), and the runner is a Daytona *session* command: ``create_session``, then
``execute_session_command(run_async=True, suppress_input_echo=True)``. Its stdout and stderr
stream back over ``get_session_command_logs_async`` (a WebSocket), and the host writes to its stdin
with ``send_session_command_input`` (one HTTP request per batch of relay frames; frames queued
while a request is in flight go out together in the next). The relay carries the runner's gRPC
connection to the host broker over those two streams: the sandbox never dials the host. (The
relay needs ``suppress_input_echo``, honoured by current Daytona daemons: older ones copied every
input into the command's stdout, where the relay would read its own frames back.)
``delete_session`` kills the runner (its process group: SIGTERM, then SIGKILL), ``delete`` ends
the sandbox.

Neither the API key nor the broker token enters the sandbox: the key stays in the host's SDK
client, the token goes over the runner's stdin, and the runner is started with ``env -i`` and an
allow-listed environment (``PATH``, ``HOME``, ``LANG``), whatever the image or the platform sets.

**Image.** The runner needs Python >= 3.11 with ``grpcio>=1.85.1`` and ``protobuf>=7.35``. By
default the adapter asks Daytona to build :func:`default_image` (``python:3.12-slim`` plus those
two packages, a declarative ``daytona.Image``); Daytona caches the build, so only the first
sandbox waits for it. Pass ``image=`` (an ``Image`` or an image name that has them, e.g.
``Image.debian_slim("3.12").pip_install([...])``) or, fastest, ``snapshot=`` naming a snapshot made
once from such an image::

    from daytona import Daytona, CreateSnapshotParams
    from rlm.environments.daytona import default_image
    Daytona().snapshot.create(CreateSnapshotParams(name="rlm-runner", image=default_image()))
    RLM(environment="daytona", environment_kwargs={"snapshot": "rlm-runner"})

``python=`` names the interpreter inside it (default ``python3``).

**Configuration.** ``api_key`` (else ``DAYTONA_API_KEY``), ``api_url`` (else ``DAYTONA_API_URL``,
default ``https://app.daytona.io/api``), ``target`` (else ``DAYTONA_TARGET``); the sandbox's
``cpu``, ``memory_gb`` (default: ``memory_mb`` rounded up; both apply to images, a snapshot has
its own), ``disk_gb``; ``network_block_all`` (default True: the runner needs no network, the
relay rides the exec stream), ``network_allow_list``; ``auto_stop_minutes`` (default 15: the
platform stops a sandbox idle that long, and being ephemeral it is then deleted, even if this host
died), ``ttl_minutes``; ``labels``; ``create_timeout`` (seconds, covers an image build).

**Warm pool.** ``pool_size``, ``max_sandboxes`` and ``pool_idle_timeout`` (shared with every
adapter, see :class:`~rlm.environments.relay.RelayedSandboxEnvironment`) keep tree sandboxes
created and ready ahead of time, one per tree (its whole fan-out forks inside it). A waiting
sandbox is billed as a running one: at 1 vCPU and the default 4 GiB about $0.000032 a second,
$0.0096 for the pool's default 300 s idle limit. Keep ``pool_idle_timeout`` below
``auto_stop_minutes``; docs/providers.md says when a pool pays.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import shlex
from collections.abc import AsyncGenerator
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
    OutputTail,
    RelayedSandboxEnvironment,
    RemoteProcess,
    fingerprint,
    import_sdk,
    upload_timeout,
)
from .throttling import Throttled, retry_after_from_headers

DEFAULT_BASE_IMAGE = "python:3.12-slim"
#: the most stdin bytes sent in one ``send_session_command_input`` request
MAX_INPUT_BATCH = 1 << 20
#: queued stdin bytes above which ``write`` waits for the requests to catch up
MAX_INPUT_PENDING = 8 << 20

_HINTS = {
    "No module named 'grpc'": "the image lacks grpcio and protobuf: use the default image, or "
    f"pip_install({list(REQUIREMENTS)!r}) in yours",
    "No module named 'google": "the image lacks protobuf: pip_install"
    f"({list(REQUIREMENTS)!r}) in your image",
    "not found": "the interpreter is missing: pass python= (Python >= 3.11) or another image",
    "No such file or directory": "the interpreter is missing: pass python= (Python >= 3.11) or "
    "another image",
    "SyntaxError": "the image's Python is too old: the runner needs Python >= 3.11",
}


def _sdk() -> Any:
    return import_sdk(
        "daytona", "the daytona environment needs the Daytona SDK: pip install 'rlm[daytona]'"
    )


def default_image() -> Any:
    """The image built for the runner when neither ``image`` nor ``snapshot`` is given: a
    stock slim Python with the runner's two dependencies (Daytona caches the build)."""
    return _sdk().Image.base(DEFAULT_BASE_IMAGE).pip_install(list(REQUIREMENTS))


class DaytonaProcess(RemoteProcess):
    """A runner started as a Daytona session command: stdin via ``send_session_command_input``,
    stdout and stderr from the command's log stream."""

    def __init__(self, sandbox: Any, session_id: str, command_id: str, errors: Any) -> None:
        self._sandbox = sandbox
        self.session_id = session_id
        self.command_id = command_id
        self._errors = errors
        self._stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._stderr = OutputTail()
        self._exit_code: int | None = None
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flusher: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._write_error: SandboxDiedError | None = None
        self._killed = False
        self._dropped = False
        self._pump_task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        process = self._sandbox.process
        try:
            await process.get_session_command_logs_async(
                self.session_id, self.command_id, self._on_stdout, self._on_stderr
            )
        except self._errors as error:
            self._on_stderr(f"\n[the Daytona log stream broke: {error}]\n")
        finally:
            code = None
            running = False
            if not self._killed:
                with contextlib.suppress(Exception):
                    command = await process.get_session_command(self.session_id, self.command_id)
                    code = command.exit_code
                    running = code is None
            # A WebSocket that closes while the command runs is a dropped stream, not an exit
            # (the daemon treats any close as the end of the log): reattach() opens a new one.
            self._dropped = running
            if not running:
                self._exit_code = code if code is not None else -1
            self._stdout.put_nowait(None)

    async def reattach(self) -> bool:
        """Follows the command's log again; the daemon sends it from the start, and the relay
        drops the frames it already has."""
        if not self._dropped or self._killed:
            return False
        self._dropped = False
        self._stdout = asyncio.Queue()
        self._pump_task = asyncio.ensure_future(self._pump())
        return True

    def _on_stdout(self, text: str) -> None:
        self._stdout.put_nowait(text.encode("utf-8"))

    def _on_stderr(self, text: str) -> None:
        self._stderr.add(text)

    async def write(self, data: bytes) -> None:
        """Queues ``data`` for the runner's stdin; one request carries everything queued while
        the previous one was in flight (order is kept: there is one sender)."""
        if self._write_error is not None:
            raise self._write_error
        self._pending.append(data)
        self._pending_size += len(data)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        while self._pending_size > MAX_INPUT_PENDING and self._write_error is None:
            self._drained.clear()
            await self._drained.wait()
        if self._write_error is not None:
            raise self._write_error

    async def _flush(self) -> None:
        while self._pending:
            batch: list[bytes] = []
            size = 0
            while self._pending and (not batch or size + len(self._pending[0]) <= MAX_INPUT_BATCH):
                item = self._pending.pop(0)
                batch.append(item)
                size += len(item)
            try:
                await self._sandbox.process.send_session_command_input(
                    self.session_id, self.command_id, b"".join(batch).decode("utf-8")
                )
            except self._errors as error:
                self._write_error = SandboxDiedError(
                    f"writing to the runner in Daytona sandbox {self._sandbox.id} failed: {error}"
                )
                self._pending.clear()
            self._pending_size = sum(len(item) for item in self._pending)
            self._drained.set()

    async def output(self) -> AsyncGenerator[bytes, None]:
        while (data := await self._stdout.get()) is not None:
            yield data
        self._stdout.put_nowait(None)  # a second reader ends too

    def exit_code(self) -> int | None:
        return self._exit_code

    async def kill(self) -> None:
        """Deletes the session: the daemon kills its process group (SIGTERM, then SIGKILL)."""
        self._killed = True
        if self._flusher is not None:
            self._flusher.cancel()
        with contextlib.suppress(Exception):
            await self._sandbox.process.delete_session(self.session_id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._pump_task), KILL_WAIT_SECONDS)
        self._pump_task.cancel()
        if self._exit_code is None:
            self._exit_code = -9
            self._stdout.put_nowait(None)

    def diagnostics(self) -> str:
        text = self._stderr.text()
        hints = [hint for needle, hint in _HINTS.items() if needle in text]
        return text + (f"\n({hints[0]})" if hints else "")


class DaytonaEnvironment(RelayedSandboxEnvironment):
    """The runner in a Daytona sandbox, reached through a session command's streams."""

    name = "daytona"
    provider = "Daytona"

    def __init__(
        self,
        *,
        image: Any = None,
        snapshot: str | None = None,
        python: str = "python3",
        api_key: str | None = None,
        api_url: str | None = None,
        target: str | None = None,
        cpu: int | None = None,
        memory_gb: int | None = None,
        disk_gb: int | None = None,
        network_block_all: bool = True,
        network_allow_list: str | None = None,
        auto_stop_minutes: int = 15,
        ttl_minutes: int | None = None,
        labels: dict[str, str] | None = None,
        create_timeout: float = 600.0,
        upload_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image is not None and snapshot is not None:
            raise ConfigurationError(
                "pass either image= or snapshot= to the daytona environment, not both"
            )
        self.image = image
        self.snapshot = snapshot
        self.python = python
        self.api_key = api_key
        self.api_url = api_url
        self.target = target
        self.cpu = cpu
        self.memory_gb = memory_gb if memory_gb is not None else math.ceil(self.memory_mb / 1024)
        self.disk_gb = disk_gb
        self.network_block_all = network_block_all and not network_allow_list
        self.network_allow_list = network_allow_list
        self.auto_stop_minutes = auto_stop_minutes
        self.ttl_minutes = ttl_minutes
        self.labels = {"rlm": self.label, **(labels or {})}
        self.create_timeout = create_timeout
        self.upload_timeout = upload_timeout
        #: the Daytona sandbox while one exists (its ``id`` for the user's own ``daytona`` CLI)
        self.sandbox: Any = None
        self._client: Any = None
        self._errors: Any = ()

    # ---- provider hooks --------------------------------------------------------------------

    def sandbox_settings(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "snapshot": self.snapshot,
            "account": (self.api_url, fingerprint(self.api_key), self.target),
            "cpu": self.cpu,
            "memory_gb": self.memory_gb,
            "disk_gb": self.disk_gb,
            "network_block_all": self.network_block_all,
            "network_allow_list": self.network_allow_list,
            "auto_stop_minutes": self.auto_stop_minutes,
            "ttl_minutes": self.ttl_minutes,
            # The session's own label (the "rlm" one) differs within a tree: not a setting.
            "labels": {k: v for k, v in self.labels.items() if k != "rlm"},
            "create_timeout": self.create_timeout,
            "upload_timeout": self.upload_timeout,
        }

    def _create_params(self, sdk: Any) -> Any:
        common = {
            "language": "python",
            "labels": self.labels,
            "env_vars": {},
            "auto_stop_interval": self.auto_stop_minutes,
            "ephemeral": True,  # stopped means deleted: an abandoned sandbox does not linger
            "ttl_minutes": self.ttl_minutes,
            "network_block_all": self.network_block_all,
            "network_allow_list": self.network_allow_list,
        }
        if self.snapshot is not None:
            return sdk.CreateSandboxFromSnapshotParams(snapshot=self.snapshot, **common)
        resources = sdk.Resources(cpu=self.cpu, memory=self.memory_gb, disk=self.disk_gb)
        image = self.image if self.image is not None else default_image()
        return sdk.CreateSandboxFromImageParams(image=image, resources=resources, **common)

    async def _create_sandbox(self) -> None:
        sdk = _sdk()
        self._errors = sdk.DaytonaError
        config = sdk.DaytonaConfig(api_key=self.api_key, api_url=self.api_url, target=self.target)
        try:
            self._client = sdk.AsyncDaytona(config)
        except sdk.DaytonaError as error:
            raise ConfigurationError(
                f"the Daytona SDK could not be configured ({error}): set DAYTONA_API_KEY or pass "
                "environment_kwargs={'api_key': ...} (and api_url / DAYTONA_API_URL for a "
                "self-hosted Daytona)"
            ) from error
        try:
            params = self._create_params(sdk)
        except ValueError as error:
            raise ConfigurationError(f"bad environment_kwargs for daytona: {error}") from error
        try:
            client = self._client
            self.sandbox = await self._retrying(
                "creating the sandbox", lambda: client.create(params, timeout=self.create_timeout)
            )
        except sdk.DaytonaError as error:
            # A create that timed out may have left a sandbox behind: remove it.
            orphan = getattr(error, "sandbox_id", None)
            if orphan:
                with contextlib.suppress(Exception):
                    await (await self._client.get(orphan)).delete()
            hint = (
                "check DAYTONA_API_KEY / api_key"
                if isinstance(error, sdk.DaytonaAuthenticationError)
                else "check the image or snapshot, your quota and create_timeout"
            )
            raise SandboxStartError(
                f"the Daytona sandbox could not be started ({type(error).__name__}: {error}); "
                f"{hint}"
            ) from error

    async def _write_file(self, path: str, data: bytes) -> None:
        sandbox = self._require_sandbox()
        try:
            timeout = self.upload_timeout or upload_timeout(len(data))
            await self._retrying(
                f"uploading {path}", lambda: sandbox.fs.upload_file(data, path, timeout=timeout)
            )
        except self._errors as error:
            raise SandboxError(
                f"uploading {path} ({len(data)} bytes) to Daytona sandbox {sandbox.id} failed: "
                f"{error}"
            ) from error

    async def _exec(self, argv: list[str]) -> RemoteProcess:
        sdk = _sdk()
        sandbox = self._require_sandbox()
        session_id = f"rlm-{secrets.token_hex(6)}"
        directory = shlex.quote(self.sandbox_dir)
        # A subshell, so that `exec` replaces it and not the session's shell; `env -i` so that
        # the runner sees only an allow-listed environment.
        command = (
            f'(cd {directory} && exec env -i PATH="$PATH" HOME={directory} LANG=C.UTF-8 '
            f"{shlex.join(argv)})"
        )
        request = sdk.SessionExecuteRequest(
            command=command, run_async=True, suppress_input_echo=True
        )
        try:
            await self._retrying(
                "creating the runner's session", lambda: sandbox.process.create_session(session_id)
            )
            try:
                response = await self._retrying(
                    "starting the runner",
                    lambda: sandbox.process.execute_session_command(session_id, request),
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await sandbox.process.delete_session(session_id)
                raise
        except self._errors as error:
            raise SandboxDiedError(
                f"starting the runner in Daytona sandbox {sandbox.id} failed: {error}"
            ) from error
        return DaytonaProcess(sandbox, session_id, response.cmd_id, self._errors)

    async def _destroy_sandbox(self) -> None:
        sandbox, client = self.sandbox, self._client
        self.sandbox, self._client = None, None
        try:
            if sandbox is not None:
                failures: tuple[type[BaseException], ...] = (
                    *self._error_types(),
                    SandboxThrottledError,
                )
                try:
                    await self._retrying("deleting the sandbox", sandbox.delete)
                except failures as error:
                    if getattr(error, "status_code", None) != 404:
                        raise SandboxError(
                            f"deleting Daytona sandbox {sandbox.id} failed ({error}); it is "
                            f"billed until it ends: run `daytona sandbox delete {sandbox.id}`"
                        ) from error
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()

    def _error_types(self) -> tuple[type[BaseException], ...]:
        errors = self._errors
        return errors if isinstance(errors, tuple) else (errors,)

    def _throttled(self, error: BaseException) -> Throttled | None:
        """Daytona answers 429 with Retry-After (https://www.daytona.io/docs/en/rate-limits);
        its SDK raises it (DaytonaRateLimitError from the API, a DaytonaError with status 429
        from the toolbox) with the response headers, and retries nothing."""
        sdk = _sdk()
        if isinstance(error, sdk.DaytonaError) and (
            isinstance(error, sdk.DaytonaRateLimitError) or error.status_code == 429
        ):
            return Throttled(retry_after_from_headers(error.headers))
        return None

    def _require_sandbox(self) -> Any:
        if self.sandbox is None:
            raise SandboxError("the Daytona sandbox is gone; start a new environment")
        return self.sandbox


__all__ = ["DaytonaEnvironment", "DaytonaProcess", "default_image"]
