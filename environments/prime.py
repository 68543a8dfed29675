"""Prime Intellect sandboxes (``pip install 'rlm[prime]'``): the runner in a Prime VM sandbox.

Only provider calls live here; the runner, its relay and the protocol are shared
(:mod:`rlm.environments.relay`). Through the ``prime-sandboxes`` SDK's ``AsyncSandboxClient``:
``create`` + ``wait_for_creation`` make the sandbox, one ``execute_command`` prepares it (the
working directory, the runner's two dependencies), ``upload_bytes`` is the file API (the runner
zipapp, contexts above 1 MiB, in parts under the platform's 16 MiB per-file cap),
``open_process`` runs the runner with its stdin and stdout streamed
(the relay carries its gRPC connection to the host broker over them: the sandbox never dials the
host), and ``delete`` ends it. Neither the API key nor the broker token enters the sandbox: the
key stays in the host's SDK client, the token goes over the process's stdin.

**Image.** ``docker_image=`` (default ``python:3.12-slim``) with ``python=`` its interpreter
(default ``python3``, Python >= 3.11). The runner needs ``grpcio>=1.85.1`` and
``protobuf>=7.35``: on start the adapter checks for them and, when missing, pip-installs them into
the image's interpreter (needs egress to PyPI; a few seconds per sandbox). To skip that, use an
image that has them and pass ``install_requirements=False``, e.g.::

    FROM python:3.12-slim
    RUN pip install --no-cache-dir 'grpcio>=1.85.1' 'protobuf>=7.35'

**Configuration.** ``api_key`` (else ``PRIME_API_KEY`` or ``prime login``'s config), ``api_url``
(else ``PRIME_API_BASE_URL``), ``team_id`` (else ``PRIME_TEAM_ID``), plus the sandbox's
``cpu_cores``, ``memory_gb`` (default: ``memory_mb`` rounded up), ``disk_size_gb``,
``timeout_minutes`` (the platform ends the sandbox after that long even if this host dies),
``idle_timeout_minutes``, ``network_allowlist``/``network_denylist``, ``labels``, ``region``.
The runner's files (zipapp, relay socket, context files) go in a fresh directory on the sandbox's
disk (its ``diskMountPath``), or under ``workdir=`` when given.

**Warm pool.** ``pool_size``, ``max_sandboxes`` and ``pool_idle_timeout`` (shared with every
adapter, see :class:`~rlm.environments.relay.RelayedSandboxEnvironment`) keep tree sandboxes
created and ready ahead of time, one per tree (its whole fan-out forks inside it). Prime's start
is the slowest (a VM, then the pip install unless ``install_requirements=False``), so a pool
saves the most here; Prime publishes no per-second rate for what a waiting sandbox costs. Keep
``pool_idle_timeout`` below ``idle_timeout_minutes`` when that is set (docs/providers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
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
    REQUIREMENTS_CHECK,
    OutputTail,
    RelayedSandboxEnvironment,
    RemoteProcess,
    fingerprint,
    import_sdk,
    upload_timeout,
)
from .throttling import Throttled, retry_after_from_headers

DEFAULT_IMAGE = "python:3.12-slim"
"""A stock image; the runner's dependencies are pip-installed into it on start."""


def _slug(label: str) -> str:
    """A sandbox-name-safe form of the environment's label (``root``, ``depth-1``...)."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "env"


def _sdk() -> Any:
    return import_sdk(
        "prime_sandboxes",
        "the prime environment needs the Prime sandboxes SDK: pip install 'rlm[prime]' "
        "(it cannot share a virtualenv with e2b: their connectrpc pins conflict)",
    )


def _sdk_errors(sdk: Any) -> tuple[type[BaseException], ...]:
    """What the SDK raises when the platform or the sandbox fails (not all are APIError)."""
    return (
        sdk.APIError,
        sdk.SandboxNotRunningError,
        sdk.CommandTimeoutError,
        sdk.UploadTimeoutError,
    )


class PrimeProcess(RemoteProcess):
    """A process started with ``open_process``: stdin via ``SendInput``, stdout streamed."""

    def __init__(self, process: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._process = process
        self._errors = errors
        self._ended = False
        self._stderr = OutputTail()
        self._stderr_task = asyncio.ensure_future(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        # The SDK queues stderr without bound: read it, keeping only the tail for diagnostics.
        with contextlib.suppress(Exception):
            async for data in self._process.stderr:
                self._stderr.add(data)

    async def write(self, data: bytes) -> None:
        try:
            await self._process.write_stdin(data)
        except BrokenPipeError:
            raise
        except self._errors as error:
            raise SandboxDiedError(
                f"writing to the Prime sandbox process failed: {error}"
            ) from error

    async def output(self) -> AsyncGenerator[bytes, None]:
        try:
            async for data in self._process.stdout:
                yield data
        except self._errors:
            return  # the stream broke: the process counts as ended (exit_code() says -1)
        finally:
            self._ended = True

    def exit_code(self) -> int | None:
        code = self._process.returncode
        if code is None and self._ended:
            return -1
        return code

    async def kill(self) -> None:
        with contextlib.suppress(Exception):
            await self._process.kill()
        with contextlib.suppress(Exception):
            await self._process.aclose()  # waits for the exit event, releases the transport
        self._stderr_task.cancel()


class PrimeEnvironment(RelayedSandboxEnvironment):
    """The runner in a Prime Intellect sandbox, reached through the exec stream."""

    name = "prime"
    provider = "Prime"
    #: Prime's sandbox files docs: uploads are capped at 16 MiB per file (413 above)
    max_file_bytes = 16 * 1024 * 1024

    def __init__(
        self,
        *,
        docker_image: str = DEFAULT_IMAGE,
        python: str = "python3",
        install_requirements: bool = True,
        workdir: str | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        team_id: str | None = None,
        cpu_cores: float = 1.0,
        memory_gb: float | None = None,
        disk_size_gb: float | None = None,
        timeout_minutes: int = 60,
        idle_timeout_minutes: int | None = None,
        network_allowlist: list[str] | None = None,
        network_denylist: list[str] | None = None,
        labels: list[str] | None = None,
        region: str | None = None,
        creation_attempts: int = 60,
        setup_timeout: int = 300,
        upload_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.docker_image = docker_image
        self.python = python
        self.install_requirements = install_requirements
        self.workdir = workdir
        self.api_key = api_key
        self.api_url = api_url
        self.team_id = team_id
        self.cpu_cores = cpu_cores
        self.memory_gb = memory_gb if memory_gb is not None else math.ceil(self.memory_mb / 1024)
        self.disk_size_gb = disk_size_gb
        self.timeout_minutes = timeout_minutes
        self.idle_timeout_minutes = idle_timeout_minutes
        self.network_allowlist = network_allowlist
        self.network_denylist = network_denylist
        self.labels = ["rlm", *(labels or [])]
        self.region = region
        self.creation_attempts = creation_attempts
        self.setup_timeout = setup_timeout
        self.upload_timeout = upload_timeout
        #: the Prime sandbox id while one exists (for the user's own ``prime sandbox`` commands)
        self.sandbox_id: str | None = None
        self._client: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

    # ---- provider hooks --------------------------------------------------------------------

    def sandbox_settings(self) -> dict[str, Any]:
        return {
            "docker_image": self.docker_image,
            "install_requirements": self.install_requirements,
            "workdir": self.workdir,
            "account": (self.api_url, fingerprint(self.api_key), self.team_id),
            "cpu_cores": self.cpu_cores,
            "memory_gb": self.memory_gb,
            "disk_size_gb": self.disk_size_gb,
            "timeout_minutes": self.timeout_minutes,
            "idle_timeout_minutes": self.idle_timeout_minutes,
            "network_allowlist": self.network_allowlist,
            "network_denylist": self.network_denylist,
            "labels": self.labels,
            "region": self.region,
            "creation_attempts": self.creation_attempts,
            "setup_timeout": self.setup_timeout,
            "upload_timeout": self.upload_timeout,
        }

    async def _create_sandbox(self) -> None:
        sdk = _sdk()
        self._errors = _sdk_errors(sdk)
        try:
            request = sdk.CreateSandboxRequest(
                name=f"rlm-{_slug(self.label)}-{secrets.token_hex(4)}",
                docker_image=self.docker_image,
                cpu_cores=self.cpu_cores,
                memory_gb=self.memory_gb,
                disk_size_gb=self.disk_size_gb,
                timeout_minutes=self.timeout_minutes,
                idle_timeout_minutes=self.idle_timeout_minutes,
                network_allowlist=self.network_allowlist,
                network_denylist=self.network_denylist,
                labels=self.labels,
                team_id=self.team_id,
                region=self.region,
            )
        except ValueError as error:
            raise ConfigurationError(f"bad environment_kwargs for prime: {error}") from error
        client = sdk.AsyncSandboxClient(api_key=self.api_key)
        self._client = client
        if self.api_url:
            client.client.base_url = self.api_url.rstrip("/").removesuffix("/api/v1")
        if not client.client.api_key:
            raise ConfigurationError(
                "no Prime API key: set PRIME_API_KEY, run `prime login`, or pass "
                "environment_kwargs={'api_key': ...}"
            )
        try:
            sandbox = await client.create(request)
            self.sandbox_id = sandbox.id
            self._place_workdir(sandbox.disk_mount_path)
            await client.wait_for_creation(sandbox.id, max_attempts=self.creation_attempts)
            setup = await client.execute_command(
                sandbox.id, self._setup_command(), timeout=self.setup_timeout
            )
        except self._errors as error:
            raise SandboxStartError(
                f"the Prime sandbox could not be started ({type(error).__name__}: {error}); "
                "check PRIME_API_KEY, your balance and the docker_image"
            ) from error
        if setup.exit_code != 0:
            hints = {
                3: f"{self.python!r} in {self.docker_image!r} is missing or older than Python "
                "3.11: pass docker_image= and python=",
                4: f"{self.docker_image!r} lacks {' and '.join(REQUIREMENTS)}: install them in "
                "the image or drop install_requirements=False",
            }
            hint = hints.get(
                setup.exit_code,
                "installing grpcio and protobuf failed: allow PyPI in the network policy, or use "
                "an image that has them with install_requirements=False",
            )
            raise SandboxStartError(
                f"preparing the Prime sandbox failed (exit {setup.exit_code}): {hint}; "
                f"its output: {(setup.stderr or setup.stdout)[-1000:]}"
            )

    def _place_workdir(self, disk_mount_path: str) -> None:
        """Puts the runner's directory on the sandbox's disk (sized by ``disk_size_gb``, where big
        contexts belong) unless ``workdir`` says otherwise; the relay socket path must stay short."""
        parent = self.workdir or disk_mount_path
        if parent and parent.startswith("/"):
            candidate = f"{parent.rstrip('/')}/{os.path.basename(self.sandbox_dir)}"
            if len(candidate) <= 80:
                self.sandbox_dir = candidate

    def _setup_command(self) -> str:
        """The working directory, then the runner's dependencies when they are missing."""
        directory = shlex.quote(self.sandbox_dir)
        python = shlex.quote(self.python)
        lines = ["set -e", f"mkdir -p {directory}", f"chmod 700 {directory}"]
        if self.install_requirements:
            pip = [self.python, "-m", "pip", "install", "--quiet", "--no-input"]
            pip += ["--disable-pip-version-check", *REQUIREMENTS]
            install = "PIP_ROOT_USER_ACTION=ignore " + shlex.join(pip)
            lines += [
                f"rc=0; {python} -c {shlex.quote(REQUIREMENTS_CHECK)} || rc=$?",
                f'if [ "$rc" = 1 ]; then {install} >&2; elif [ "$rc" != 0 ]; then exit 3; fi',
            ]
        else:
            lines += [
                f"rc=0; {python} -c {shlex.quote(REQUIREMENTS_CHECK)} || rc=$?",
                'if [ "$rc" = 1 ]; then exit 4; elif [ "$rc" != 0 ]; then exit 3; fi',
            ]
        return "\n".join(lines)

    async def _write_file(self, path: str, data: bytes) -> None:
        client, sandbox_id = self._require_sandbox()
        try:
            await self._retrying(
                f"uploading {path}",
                lambda: client.upload_bytes(
                    sandbox_id,
                    path,
                    data,
                    os.path.basename(path),
                    timeout=self.upload_timeout or upload_timeout(len(data)),
                ),
            )
        except self._errors as error:
            raise SandboxError(
                f"uploading {path} ({len(data)} bytes) to Prime sandbox {sandbox_id} failed: "
                f"{error}"
            ) from error

    async def _exec(self, argv: list[str]) -> RemoteProcess:
        client, sandbox_id = self._require_sandbox()
        # ``open_process`` runs ``bash -c``; ``exec`` makes the runner the process the session's
        # signals reach. No env: nothing secret is passed on the command line or environment.
        command = "exec " + shlex.join(argv)
        try:
            process = await self._retrying(
                "starting the runner",
                lambda: client.open_process(sandbox_id, command, working_dir=self.sandbox_dir),
            )
        except self._errors as error:
            raise SandboxDiedError(
                f"starting the runner in Prime sandbox {sandbox_id} failed: {error}"
            ) from error
        return PrimeProcess(process, self._errors)

    async def _destroy_sandbox(self) -> None:
        client, sandbox_id = self._client, self.sandbox_id
        self._client, self.sandbox_id = None, None
        try:
            if client is not None and sandbox_id is not None:
                failures: tuple[type[BaseException], ...] = (*self._errors, SandboxThrottledError)
                try:
                    await self._retrying("deleting the sandbox", lambda: client.delete(sandbox_id))
                except failures as error:
                    if "404" not in str(error):
                        raise SandboxError(
                            f"deleting Prime sandbox {sandbox_id} failed ({error}); it is billed "
                            f"until it ends: run `prime sandbox delete {sandbox_id}`"
                        ) from error
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    def _throttled(self, error: BaseException) -> Throttled | None:
        """A 429 the SDK did not retry itself. It retries control-plane 429s (waiting 10 s, then
        30 s) but not an upload's, which it raises as ``APIError("Upload failed: HTTP 429 ...")``
        without the headers."""
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) == 429:
            return Throttled(retry_after_from_headers(getattr(response, "headers", None)))
        if isinstance(error, self._errors) and "HTTP 429" in str(error):
            return Throttled()
        return None

    def _require_sandbox(self) -> tuple[Any, str]:
        if self._client is None or self.sandbox_id is None:
            raise SandboxError("the Prime sandbox is gone; start a new environment")
        return self._client, self.sandbox_id
