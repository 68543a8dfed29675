"""E2B sandboxes (``pip install 'rlm[e2b]'``): the runner in an E2B Firecracker microVM.

Only provider calls live here; the runner, its relay and the protocol are shared
(:mod:`rlm.environments.relay`). Through the ``e2b`` SDK's ``AsyncSandbox``: ``create`` makes the
sandbox (control API), one foreground ``commands.run`` checks its interpreter and the runner's two
dependencies, ``files.write`` is the file API (the runner zipapp, contexts above 1 MiB, as
octet-stream uploads to envd; the first creates the runner's private directory), ``commands.run(background=True,
stdin=True)`` starts the runner with its stdout streamed back and ``commands.stream_input`` feeds
its stdin as one ordered stream (the relay carries its gRPC connection to the host broker over
them: E2B's ingress is HTTP only and the sandbox never dials the host, so it runs with
``allow_internet_access=False`` by default), ``commands.kill`` ends a runner and ``kill`` ends the
sandbox. Neither the API key nor the broker token enters the sandbox: the key stays in the host's
SDK, the token goes over the runner's stdin, and the runner starts with an allow-listed
environment (``env -i``).

**Template.** ``template=`` names an E2B template (default ``rlm-runner``) whose ``python=``
(default ``python3``) is Python >= 3.11 with ``grpcio>=1.85.1`` and ``protobuf>=7.35``. Build it
once per E2B team with :func:`build_template` (``python -m rlm.environments.e2b build-template``),
which uses the SDK's template builder on :func:`template_definition`; or with the E2B CLI from an
``e2b.Dockerfile``::

    FROM python:3.12-slim
    RUN pip install --no-cache-dir 'grpcio>=1.85.1' 'protobuf>=7.35'

then ``e2b template build --name rlm-runner``. Any other template works too with
``install_requirements=True``: the dependencies are then pip-installed on start when missing
(this needs ``allow_internet_access=True`` and takes a few seconds per sandbox).

**Configuration.** ``api_key`` (else ``E2B_API_KEY``), ``domain`` (else ``E2B_DOMAIN``),
``api_url``/``sandbox_url`` (else ``E2B_API_URL``/``E2B_SANDBOX_URL``: self-hosted E2B or the
test stand-in), ``request_timeout``, plus the sandbox's ``sandbox_timeout`` (seconds; E2B kills
the sandbox after that long even if this host dies, default 3600), ``allow_internet_access``
(default False), ``network`` (E2B's ``allow_out``/``deny_out`` rules), ``metadata`` and
``sandbox_kwargs`` for anything else ``AsyncSandbox.create`` accepts. ``E2B_DEBUG=true`` is not
supported: the SDK then skips the control API, so sandboxes could never be killed.

**Warm pool.** ``pool_size``, ``max_sandboxes`` and ``pool_idle_timeout`` (shared with every
adapter, see :class:`~rlm.environments.relay.RelayedSandboxEnvironment`) keep tree sandboxes
created and ready ahead of time, one per tree (its whole fan-out forks inside it). A waiting
sandbox is billed as a running one: at E2B's default 2 vCPU and 512 MiB about $0.0000303 a
second, $0.0091 for the pool's default 300 s idle limit. Creates are quick on E2B: a pool pays
most with ``install_requirements=True`` or latency-critical trees (docs/providers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import importlib.metadata
import re
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
    REQUIREMENTS_CHECK,
    RUNNER_ENV_ALLOWLIST,
    OutputTail,
    RelayedSandboxEnvironment,
    RemoteProcess,
    fingerprint,
    import_sdk,
    upload_timeout,
)
from .throttling import Throttled

DEFAULT_TEMPLATE = "rlm-runner"
"""The template :func:`build_template` builds: Python 3.12 with grpcio and protobuf."""

#: ``commands.stream_input`` came in 2.58, ``retain_output`` in 2.63
MIN_SDK_VERSION = (2, 63)


def _sdk() -> Any:
    """The ``e2b`` SDK, imported on first use (``import rlm`` must not pull it in)."""
    sdk = import_sdk(
        "e2b",
        "the e2b environment needs the E2B SDK: pip install 'rlm[e2b]' (in a virtualenv "
        "without rlm[prime]: their connectrpc pins conflict)",
    )
    version = _sdk_version()
    if _version_tuple(version) < MIN_SDK_VERSION:
        raise ConfigurationError(
            f"the e2b environment needs e2b>={'.'.join(map(str, MIN_SDK_VERSION))} (ordered "
            f"stdin streams, output not retained in memory); {version} is installed: "
            "pip install -U 'rlm[e2b]'"
        )
    return sdk


@functools.cache
def _sdk_version() -> str:
    return importlib.metadata.version("e2b")


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def template_definition(python_version: str = "3.12") -> Any:
    """The default template as an E2B ``Template``: the official Python image plus the runner's
    two dependencies (quoted: the SDK joins ``pip_install`` arguments into a shell line, where
    an unquoted ``>=`` would be a redirection)."""
    packages = [shlex.quote(requirement) for requirement in REQUIREMENTS]
    return _sdk().Template().from_python_image(python_version).pip_install(packages)


async def build_template(name: str = DEFAULT_TEMPLATE, **opts: Any) -> Any:
    """Builds (or rebuilds) the template the adapter uses by default on your E2B team; ``opts``
    go to ``AsyncTemplate.build`` (``api_key``, ``cpu_count``, ``memory_mb``...)."""
    sdk = _sdk()
    return await sdk.AsyncTemplate.build(template_definition(), name, **opts)


class E2BProcess(RemoteProcess):
    """A process started with ``commands.run(background=True)``: stdout arrives through the
    handle's callback, stdin goes through one ordered ``StreamInput`` stream."""

    def __init__(self, environment: E2BEnvironment) -> None:
        self._environment = environment
        self._handle: Any = None
        self._stdin: Any = None
        self._waiter: asyncio.Future[None] | None = None
        self._stdout: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._stderr = OutputTail()
        self._ended = False
        self._dropped = False

    def attach(self, handle: Any, stdin: Any) -> None:
        """Takes the SDK's command handle and input stream once the process has started."""
        self._handle = handle
        self._stdin = stdin
        self._waiter = asyncio.ensure_future(self._wait())

    async def _wait(self) -> None:
        # wait() raises for a non-zero exit or a broken stream; the exit code is on the handle.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await self._handle.wait()
        # No end event: the stream broke (a proxy, the load balancer), maybe not the process.
        # envd drops output while nobody is subscribed; reattach() connects again and the
        # relay asks for what was lost.
        self._dropped = self._handle.exit_code is None and not self._environment.closing
        self._ended = not self._dropped
        self._stdout.put_nowait(None)

    async def reattach(self) -> bool:
        """Connects to the runner again (``commands.connect`` by pid) after its output stream
        broke; False when it is gone."""
        if not self._dropped:
            return False
        self._dropped = False
        sandbox = self._environment._require_sandbox()
        self._stdout = asyncio.Queue()
        try:
            handle = await sandbox.commands.connect(
                self._handle.pid,
                timeout=0,
                on_stdout=self.on_stdout,
                on_stderr=self.on_stderr,
                retain_output=False,
            )
        except _sdk().SandboxException as error:
            self.on_stderr(f"\n[re-attaching to the runner failed: {error}]\n")
            self._ended = True
            return False
        self._handle = handle
        self._waiter = asyncio.ensure_future(self._wait())
        return True

    def on_stdout(self, text: str) -> None:
        self._stdout.put_nowait(text.encode("utf-8"))

    def on_stderr(self, text: str) -> None:
        # Keep only the tail, for diagnostics.
        self._stderr.add(text)

    async def write(self, data: bytes) -> None:
        try:
            await self._stdin.send(data)
        except _sdk().SandboxException as error:
            details = self.diagnostics().strip()
            what = f"exited with code {self.exit_code()}" if self._ended else "stopped reading"
            raise SandboxDiedError(
                f"the runner in the E2B sandbox {what} ({type(error).__name__}: {error})"
                f"{'; its stderr: ' + details[-1000:] if details else ''}"
            ) from error

    async def output(self) -> AsyncGenerator[bytes, None]:
        while (data := await self._stdout.get()) is not None:
            yield data

    def exit_code(self) -> int | None:
        if not self._ended:
            return None
        code = self._handle.exit_code
        return -1 if code is None else code  # no end event: the stream or the sandbox broke

    async def kill(self) -> None:
        # While the environment closes, killing the sandbox takes the runner with it.
        if not self._ended and not self._environment.closing:
            with contextlib.suppress(Exception):
                await self._handle.kill()  # SendSignal(SIGKILL)
            if self._waiter is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._waiter), KILL_WAIT_SECONDS)
        with contextlib.suppress(Exception):
            await self._handle.disconnect()
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(self._stdin.close(), KILL_WAIT_SECONDS)
        if self._waiter is not None:
            self._waiter.cancel()


class E2BEnvironment(RelayedSandboxEnvironment):
    """The runner in an E2B sandbox, reached through the exec stream."""

    name = "e2b"
    provider = "E2B"

    def __init__(
        self,
        *,
        template: str = DEFAULT_TEMPLATE,
        python: str = "python3",
        install_requirements: bool = False,
        api_key: str | None = None,
        domain: str | None = None,
        api_url: str | None = None,
        sandbox_url: str | None = None,
        request_timeout: float | None = None,
        sandbox_timeout: int = 3600,
        allow_internet_access: bool | None = None,
        network: dict[str, Any] | None = None,
        metadata: dict[str, str] | None = None,
        setup_timeout: float = 300.0,
        sandbox_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.template = template
        self.python = python
        self.install_requirements = install_requirements
        self.sandbox_timeout = sandbox_timeout
        # The runner needs no network; pip needs it when it is to install the requirements.
        self.allow_internet_access = (
            allow_internet_access if allow_internet_access is not None else install_requirements
        )
        self.network = network
        self.metadata = {"rlm": self.label, **(metadata or {})}
        self.setup_timeout = setup_timeout
        self.sandbox_kwargs = dict(sandbox_kwargs or {})
        # Connection options for the SDK (unset: its defaults and E2B_* variables); private, as
        # they hold the API key.
        self._sdk_options = {
            k: v
            for k, v in {
                "api_key": api_key,
                "domain": domain,
                "api_url": api_url,
                "sandbox_url": sandbox_url,
                "request_timeout": request_timeout,
            }.items()
            if v is not None
        }
        #: the E2B sandbox id while one exists (for ``e2b sandbox kill`` or the dashboard)
        self.sandbox_id: str | None = None
        self._sandbox: Any = None

    @property
    def closing(self) -> bool:
        """True once aclose() has begun (the sandbox is about to be killed)."""
        return self._closed

    # ---- provider hooks --------------------------------------------------------------------

    def sandbox_settings(self) -> dict[str, Any]:
        key = self._sdk_options.get("api_key")
        connection = {**self._sdk_options, "api_key": fingerprint(str(key) if key else None)}
        return {
            "template": self.template,
            "connection": connection,
            "install_requirements": self.install_requirements,
            "sandbox_timeout": self.sandbox_timeout,
            "allow_internet_access": self.allow_internet_access,
            "network": self.network,
            # The session's own label (the "rlm" entry) differs within a tree: not a setting.
            "metadata": {k: v for k, v in self.metadata.items() if k != "rlm"},
            "setup_timeout": self.setup_timeout,
            "sandbox_kwargs": self.sandbox_kwargs,
        }

    async def _create_sandbox(self) -> None:
        sdk = _sdk()
        config = sdk.ConnectionConfig(**self._sdk_options)
        if config.debug:
            raise ConfigurationError(
                "E2B_DEBUG=true is not supported by the e2b environment (the SDK then never "
                "kills sandboxes); unset it, or point api_url/sandbox_url at your E2B deployment"
            )
        if not config.api_key:
            raise ConfigurationError(
                "no E2B API key: set E2B_API_KEY or pass environment_kwargs={'api_key': ...} "
                "(keys are at https://e2b.dev/dashboard?tab=keys)"
            )
        options: dict[str, Any] = {
            "template": self.template,
            "timeout": self.sandbox_timeout,
            "metadata": self.metadata,
            "allow_internet_access": self.allow_internet_access,
            **self._sdk_options,
            **self.sandbox_kwargs,
        }
        if self.network is not None:
            options["network"] = self.network
        try:
            self._sandbox = await self._retrying(
                "creating the sandbox", lambda: sdk.AsyncSandbox.create(**options)
            )
        except sdk.AuthenticationException as error:
            raise SandboxStartError(
                f"E2B refused the API key ({error}): check E2B_API_KEY or the api_key kwarg"
            ) from error
        except (sdk.SandboxException, TypeError) as error:
            hint = (
                f"; build it with `python -m rlm.environments.e2b build-template --name "
                f"{self.template}` or pass template= (see the e2b environment's docs)"
                if "not found" in str(error).lower()
                else "; check environment_kwargs and your E2B team's limits"
            )
            raise SandboxStartError(
                f"the E2B sandbox (template {self.template!r}) could not be created "
                f"({type(error).__name__}: {error}){hint}"
            ) from error
        self.sandbox_id = self._sandbox.sandbox_id
        await self._prepare()

    async def _prepare(self) -> None:
        """Checks (or installs) the runner's dependencies. (The working directory comes with the
        first upload; the runner's command line makes it private.)"""
        script = f"exec {shlex.quote(self.python)} -I -c {shlex.quote(REQUIREMENTS_CHECK)}"
        code, output = await self._run_setup(script)
        if code == 1 and self.install_requirements:
            # As root: the runner runs with -I, which ignores a --user install.
            pip = [self.python, "-m", "pip", "install", "--quiet", "--no-input"]
            pip += ["--disable-pip-version-check", *REQUIREMENTS]
            code, output = await self._run_setup(shlex.join(pip), user="root")
            if code != 0:
                code = 5
        if code == 0:
            return
        hints = {
            1: f"template {self.template!r} lacks {' and '.join(REQUIREMENTS)}: build the "
            "default template (python -m rlm.environments.e2b build-template) or pass "
            "install_requirements=True",
            2: f"{self.python!r} in template {self.template!r} is older than Python 3.11: "
            "pass template= and python=",
            5: "installing grpcio and protobuf failed: it needs allow_internet_access=True "
            "and pip in the template, or use a template that has them",
        }
        hint = hints.get(
            code,
            f"{self.python!r} in template {self.template!r} is missing or broken: pass "
            "template= and python=",
        )
        raise SandboxStartError(
            f"preparing the E2B sandbox failed (exit {code}): {hint}"
            f"{'; its output: ' + output if output else ''}"
        )

    async def _run_setup(self, script: str, user: str | None = None) -> tuple[int, str]:
        """Runs a setup command in the sandbox: its exit code and the end of its output."""
        sdk = _sdk()
        try:
            await self._require_sandbox().commands.run(
                script, user=user, timeout=self.setup_timeout
            )
        except sdk.CommandExitException as error:
            return error.exit_code, (error.stderr or error.stdout or "").strip()[-1000:]
        except sdk.SandboxException as error:
            raise SandboxStartError(f"preparing the E2B sandbox failed: {error}") from error
        return 0, ""

    async def _write_file(self, path: str, data: bytes) -> None:
        sandbox = self._require_sandbox()
        try:
            # The SDK's request_timeout (60 s) bounds the whole request: scale it to the size.
            await self._retrying(
                f"uploading {path}",
                lambda: sandbox.files.write(
                    path, data, use_octet_stream=True, request_timeout=upload_timeout(len(data))
                ),
            )
        except _sdk().SandboxException as error:
            raise SandboxError(
                f"writing {path} ({len(data)} bytes) into E2B sandbox {self.sandbox_id} failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    async def _exec(self, argv: list[str]) -> RemoteProcess:
        sandbox = self._require_sandbox()
        sdk = _sdk()
        # envd runs ``bash -l -c``; ``exec env -i`` makes the runner that process (so the kill
        # reaches it) with only allow-listed variables. The directory holds its relay socket.
        keep = " ".join(f'${{{name}+"{name}=${name}"}}' for name in RUNNER_ENV_ALLOWLIST)
        directory = shlex.quote(self.sandbox_dir)
        command = f"chmod 700 {directory} && exec env -i {keep} {shlex.join(argv)}"
        process = E2BProcess(self)
        try:
            handle = await sandbox.commands.run(
                command,
                background=True,
                stdin=True,
                cwd=self.sandbox_dir,
                timeout=0,  # the stream lives as long as the runner
                on_stdout=process.on_stdout,
                on_stderr=process.on_stderr,
                retain_output=False,
            )
        except sdk.SandboxException as error:
            raise SandboxDiedError(
                f"starting the runner in E2B sandbox {self.sandbox_id} failed: {error}"
            ) from error
        process.attach(handle, sandbox.commands.stream_input(handle.pid, timeout=0))
        return process

    async def _destroy_sandbox(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        if sandbox is None:
            return
        sdk = _sdk()
        try:
            await self._retrying("killing the sandbox", sandbox.kill)
        except (sdk.SandboxException, SandboxThrottledError) as error:
            raise SandboxError(
                f"killing E2B sandbox {self.sandbox_id} failed ({error}); it is billed until its "
                f"timeout: run `e2b sandbox kill {self.sandbox_id}`"
            ) from error

    def _throttled(self, error: BaseException) -> Throttled | None:
        """E2B answers 429 (https://e2b.dev/docs/sandbox/rate-limits); its SDK retries control
        calls three times itself, honouring Retry-After, then raises RateLimitException, which
        carries no headers: from there on the wait is a backoff."""
        return Throttled() if isinstance(error, _sdk().RateLimitException) else None

    def _require_sandbox(self) -> Any:
        if self._sandbox is None:
            raise SandboxError("the E2B sandbox is gone; start a new environment")
        return self._sandbox


def main(argv: list[str] | None = None) -> None:
    """``python -m rlm.environments.e2b build-template [--name NAME]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m rlm.environments.e2b")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build-template", help="build the default template on E2B")
    build.add_argument(
        "--name", default=DEFAULT_TEMPLATE, help="template name (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.command == "build-template":
        info = asyncio.run(build_template(args.name, on_build_logs=print))
        print(f"built template {args.name}: {info}")


if __name__ == "__main__":
    main()


__all__ = [
    "DEFAULT_TEMPLATE",
    "E2BEnvironment",
    "E2BProcess",
    "build_template",
    "template_definition",
]
