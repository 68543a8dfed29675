"""The host side of the local environment's fork server (see ``runner/forkserver.py``).

A fresh interpreter that imports grpc costs about 130 ms of CPU; a fork of one that already has
costs a few. One server per host process, interpreter and runner environment
(:func:`shared_fork_server`), shared by every RLM tree of the process (a server holds no session
state: each runner gets its session from its own bootstrap); a depth-2 fan-out of 16 children
then starts its 16 runners at once instead of queueing 16 interpreter start-ups. The server is
closed at interpreter exit, and dies with the host process in any case.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import tempfile
from collections.abc import Mapping

from rlm.broker import cleanup
from rlm.errors import SandboxStartError

from .base import RunnerProcess
from .runner.bundle import runner_bundle_path

START_TIMEOUT = 30.0
STOP_WAIT = 5.0
KILL_WAIT = 5.0


class ForkedRunnerProcess(RunnerProcess):
    """A runner forked by the fork server; its exit code comes from the server, its parent."""

    def __init__(self, server: ForkServer, pid: int, stdin_fd: int, stderr_fd: int) -> None:
        self.pid = pid
        self._server = server
        self._stdin_fd: int | None = stdin_fd
        self._code: int | None = None
        self._ended = asyncio.Event()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._drain = asyncio.ensure_future(self._drain_stderr(stderr_fd))

    def _exited(self, code: int) -> None:
        self._code = code
        self._ended.set()

    async def _drain_stderr(self, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
        )
        try:
            while line := await reader.readline():
                self._stderr_tail.append(line[:2000].decode("utf-8", "replace").rstrip())
        finally:
            transport.close()

    def exit_code(self) -> int | None:
        return self._code

    async def send_bootstrap(self, bootstrap: bytes) -> None:
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is None:
            raise SandboxStartError("the runner's bootstrap was already sent")
        try:
            view = memoryview(bootstrap)
            while view:  # one short line: the pipe's buffer takes it whole
                view = view[os.write(fd, view) :]
        except OSError as error:
            raise SandboxStartError(
                f"the forked runner (pid {self.pid}) did not take its bootstrap: {error}"
            ) from error
        finally:
            os.close(fd)

    def diagnostics(self) -> str:
        return "\n".join(self._stderr_tail)

    async def kill(self) -> None:
        if self._code is None:
            for kill in (os.killpg, os.kill):  # os.kill: not yet in a session of its own
                with contextlib.suppress(OSError):
                    kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), KILL_WAIT)
        if self._stdin_fd is not None:
            os.close(self._stdin_fd)
            self._stdin_fd = None
        try:
            await asyncio.wait_for(self._drain, 1)
        except TimeoutError:
            self._drain.cancel()


class ForkServer:
    """One fork-server process and the runners it forked."""

    close_order = 150  # at exit: after the sandboxes and brokers that use it

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        self.python = python
        self.env = dict(env)
        self._key = _key(python, env)
        self._process: asyncio.subprocess.Process | None = None
        self._socket: socket.socket | None = None
        self._pending: collections.deque[asyncio.Future[int]] = collections.deque()
        self._children: dict[int, ForkedRunnerProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._stderr = b""
        self._closed = False

    async def _start(self) -> None:
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._process = await asyncio.create_subprocess_exec(
                self.python,
                "-I",
                "-u",
                str(runner_bundle_path()),
                "--fork-server",
                str(os.getpid()),
                stdin=server_end.fileno(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=tempfile.gettempdir(),
                env=self.env,
                start_new_session=True,
            )
        except OSError as error:
            host_end.close()
            raise SandboxStartError(
                f"could not start the local runner with {self.python!r}: {error}; "
                "pass environment_kwargs={'python': '/path/to/python3'}"
            ) from error
        finally:
            server_end.close()
        self._socket = host_end
        self._reader = asyncio.ensure_future(self._read_reports())

    async def _read_reports(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        try:
            while line := await stdout.readline():
                kind, *fields = line.split() or [b""]
                if kind == b"P" and fields and self._pending:
                    future = self._pending.popleft()
                    if not future.done():
                        future.set_result(int(fields[0]))
                elif kind == b"X" and len(fields) == 2:
                    pid, code = int(fields[0]), int(fields[1])
                    child = self._children.pop(pid, None)
                    if child is not None:
                        child._exited(code)
                    else:
                        self._early_exits[pid] = code
        finally:
            # The server is gone, and with it (PDEATHSIG) every runner it forked.
            if self._process.stderr is not None:
                with contextlib.suppress(Exception):
                    self._stderr = await asyncio.wait_for(self._process.stderr.read(), 1)
            for child in self._children.values():
                child._exited(-signal.SIGKILL)
            self._children.clear()
            while self._pending:
                future = self._pending.popleft()
                if not future.done():
                    future.set_exception(self._died())

    def _died(self) -> SandboxStartError:
        detail = self._stderr.decode("utf-8", "replace").strip()[-2000:]
        return SandboxStartError(
            f"the local fork server ({self.python}) exited"
            + (f"; its stderr: {detail}" if detail else "")
            + "; the runner needs Python >= 3.11 with grpcio and protobuf"
        )

    async def spawn(self) -> ForkedRunnerProcess:
        """A new runner, waiting for its bootstrap line."""
        async with self._lock:
            if self._closed:
                raise SandboxStartError("the local fork server is closed")
            if self._reader is not None and self._reader.done():
                await self._reset()  # it died (killed from outside): start a new one
            if self._process is None:
                await self._start()
            assert self._socket is not None
            stdin_read, stdin_write = os.pipe()
            stderr_read, stderr_write = os.pipe()
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._pending.append(future)
            try:
                socket.send_fds(self._socket, [b"F"], [stdin_read, stderr_write])
            except OSError:
                self._pending.remove(future)
                for fd in (stdin_write, stderr_read):
                    os.close(fd)
                raise self._died() from None
            finally:
                os.close(stdin_read)
                os.close(stderr_write)
        try:
            pid = await asyncio.wait_for(future, START_TIMEOUT)
        except BaseException:
            os.close(stdin_write)
            os.close(stderr_read)
            raise
        if pid < 0:
            os.close(stdin_write)
            os.close(stderr_read)
            raise SandboxStartError("the local fork server could not fork a runner")
        child = ForkedRunnerProcess(self, pid, stdin_write, stderr_read)
        if pid in self._early_exits:
            child._exited(self._early_exits.pop(pid))
        else:
            self._children[pid] = child
        return child

    async def _reset(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        self._process = None
        self._reader = None
        self._early_exits.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Kills the server and every runner it forked."""
        self._closed = True
        cleanup.untrack(self)
        if _servers.get(self._key) is self:
            del _servers[self._key]
        async with self._lock:
            for child in list(self._children.values()):
                await child.kill()
            if self._socket is not None:
                self._socket.close()  # the server sees EOF, kills what is left and exits
                self._socket = None
            process = self._process
            if process is None:
                return
            try:
                await asyncio.wait_for(process.wait(), STOP_WAIT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            if self._reader is not None:
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(self._reader, 1)


_servers: dict[tuple[object, ...], ForkServer] = {}


def _key(python: str, env: Mapping[str, str]) -> tuple[object, ...]:
    return (python, tuple(sorted(env.items())))


def shared_fork_server(python: str, env: Mapping[str, str]) -> ForkServer:
    """This process's fork server for ``python`` with the runner environment ``env`` (started on
    its first ``spawn``)."""
    server = _servers.get(_key(python, env))
    if server is None or server.closed:
        server = _servers[_key(python, env)] = ForkServer(python, env)
        cleanup.track(server)
    return server
