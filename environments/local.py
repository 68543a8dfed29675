"""``local``: the runner as a child process of the host, in its own session and work directory.

Isolation here is a process boundary, not a container: the runner gets an environment built from
an allow-list (no API keys), its own temporary working directory, rlimits on memory and file size,
and a host-side timeout per cell. Runners are forked from a per-process fork server
(:mod:`rlm.environments.forkserver`) that has already paid the interpreter's start-up.

On Linux the runner is also a child subreaper, so that what its cells start and detach (double
fork, ``setsid``, ``nohup``, a new process group) stays below it, and the host kills the runner's
whole process tree when the session ends; it is non-dumpable (other processes of the user cannot
read its memory, where its session token is) and, when run as root, gives up CAP_SYS_PTRACE.
It still runs as the host's user: for untrusted code on a shared machine use ``docker``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Any

from rlm.errors import ConfigurationError, SandboxStartError

from .base import RunnerProcess, SandboxEnvironment
from .forkserver import KILL_WAIT, StderrTail, kill_process_tree, shared_fork_server
from .runner.bootstrap import Bootstrap
from .runner.bundle import runner_executable
from .runner.runner import PRELOAD_ENV, SHARED_HOST_ENV

#: Host variables the runner may see. Everything else (API keys, tokens, cloud credentials) stays out.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM")


class LocalRunnerProcess(RunnerProcess):
    """A runner started from scratch as a child of the host (``fork_server=False``)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._stderr = StderrTail()
        self._drain = asyncio.ensure_future(self._drain_stderr())

    @property
    def pid(self) -> int:
        return self._process.pid

    async def _drain_stderr(self) -> None:
        if self._process.stderr is not None:
            await self._stderr.drain(self._process.stderr)

    def exit_code(self) -> int | None:
        return self._process.returncode

    async def send_bootstrap(self, bootstrap: bytes) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(bootstrap)
        await stdin.drain()
        stdin.close()

    def diagnostics(self) -> str:
        return self._stderr.text()

    async def kill(self) -> None:
        """Kills the runner and everything its cells started (see ``kill_tree``)."""
        if self._process.returncode is None:  # not reaped yet: the pid is still the runner's
            await kill_process_tree(self._process.pid)
        try:
            # Returns once the runner is reaped and its pipes are closed: a process that got
            # away with a copy of them (not below the runner) must not hold up the close.
            await asyncio.wait_for(self._process.wait(), KILL_WAIT)
        except TimeoutError:
            transport = getattr(self._process, "_transport", None)
            if transport is not None:
                transport.close()
        try:
            await asyncio.wait_for(self._drain, 1)
        except TimeoutError:
            self._drain.cancel()


class LocalEnvironment(SandboxEnvironment):
    """Runs generated code in a separate Python process on this machine.

    Keyword arguments (``environment_kwargs``): ``python`` (interpreter, default this one),
    ``workdir`` (default a fresh temporary directory, removed on close), ``env`` (extra variables
    for the runner, added explicitly), ``fork_server`` (default True where ``os.fork`` exists:
    runners are forked from one process per host process that has already imported their
    dependencies, a few ms each instead of a fresh interpreter's ~130 ms; False starts each
    runner from scratch), plus
    the shared ones: ``cell_timeout``, ``memory_mb``,
    ``max_output_chars``, ``max_file_mb``, ``startup_timeout``, ``pool_size`` (runners started
    ahead of time for the tree's sessions and children), ``pool_idle_timeout``, ``max_sandboxes``
    (runners alive at once, waiting ones included) and ``shell``
    (``"python"``, or ``"ipython"`` to run cells through IPython; see :class:`IPythonEnvironment`).
    """

    name = "local"

    def __init__(
        self,
        *,
        python: str | None = None,
        workdir: str | None = None,
        env: dict[str, str] | None = None,
        fork_server: bool = hasattr(os, "fork"),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.python = python or sys.executable
        self._given_workdir = workdir
        self.workdir: str | None = None
        self.extra_env = dict(env or {})
        self.fork_server = fork_server

    async def _create_sandbox(self) -> None:
        if self._given_workdir:
            os.makedirs(self._given_workdir, exist_ok=True)
            self.workdir = self._given_workdir
        else:
            self.workdir = tempfile.mkdtemp(prefix="rlm-work-")

    def _runner_env(self) -> dict[str, str]:
        # HOME and TMPDIR (the session's work dir) arrive with the bootstrap, so a runner can be
        # started before its session exists (warm pool).
        env = {name: os.environ[name] for name in ENV_ALLOWLIST if name in os.environ}
        env.update(MALLOC_ARENA_MAX="2")
        env[SHARED_HOST_ENV] = "1"  # see runner.contain_process
        if self.shell == "ipython":
            env[PRELOAD_ENV] = "ipython"  # its own fork server, with IPython already imported
        env.update(self.extra_env)
        return env

    def pool_key(self) -> tuple[object, ...]:
        return (self.python, self.shell, tuple(sorted(self.extra_env.items())))

    def _broker_address(self) -> str:
        return self.broker.address

    def _bootstrap(self, bootstrap: Bootstrap) -> Bootstrap:
        assert self.workdir is not None
        return dataclasses.replace(
            bootstrap,
            workdir=self.workdir,
            env={"HOME": self.workdir, "TMPDIR": self.workdir},
            parent_pid=os.getpid(),
        )

    async def _spawn_runner(self) -> RunnerProcess:
        if self.fork_server:
            return await shared_fork_server(self.python, self._runner_env()).spawn()
        bundle, bundle_fds = runner_executable()
        try:
            process = await asyncio.create_subprocess_exec(
                self.python,
                "-I",
                "-u",
                *bundle,
                pass_fds=bundle_fds,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                cwd=tempfile.gettempdir(),
                env=self._runner_env(),
                start_new_session=True,  # Ctrl-C reaches the host only; killpg reaches it all
            )
        except OSError as error:
            raise SandboxStartError(
                f"could not start the local runner with {self.python!r}: {error}; "
                "pass environment_kwargs={'python': '/path/to/python3'}"
            ) from error
        return LocalRunnerProcess(process)

    async def _destroy_sandbox(self) -> None:
        if self.workdir and not self._given_workdir:
            # Off the event loop: the loop serves every other session of the tree meanwhile
            # (a profile of a 100-child fan-out found ~1 ms per removal on it).
            try:
                await asyncio.to_thread(shutil.rmtree, self.workdir, ignore_errors=True)
            except RuntimeError:  # at interpreter exit no worker thread can start
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir = None


class IPythonEnvironment(LocalEnvironment):
    """``ipython``: the local environment with every cell run by a real IPython shell, as the
    reference package's ``environment="ipython"``: ``%magics`` (``%timeit``, ``%who``...),
    ``!cmd`` shell escapes, ``Out[N]:`` display of the last expression, with ``context``, the
    ``llm_query`` family, ``answer``, tools and ``SHOW_VARS`` as in ``local``.

    The runner is still a separate process, with the cell timeouts and interrupts of ``local``.
    Its Python (``python``, default this one) needs IPython: ``pip install 'rlm[ipython]'``.
    Takes every ``LocalEnvironment`` keyword; ``shell="python"`` makes it plain ``local``. The
    reference's ``kernel_mode`` (``"in_process"`` or ``"subprocess"``) is accepted: the shell
    always runs out of process here. Its ``subcall_timeout`` is accepted too: sub-calls end with
    the cell's time limit.
    """

    name = "ipython"

    def __init__(
        self,
        *,
        shell: str = "ipython",
        kernel_mode: str = "subprocess",
        subcall_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if kernel_mode not in ("in_process", "subprocess"):
            raise ConfigurationError(
                f"kernel_mode must be 'in_process' or 'subprocess', got {kernel_mode!r}"
            )
        super().__init__(shell=shell, **kwargs)
