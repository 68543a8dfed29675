"""The host side of the local environment's fork server (see ``runner/forkserver.py``).

A fresh interpreter that imports grpc costs about 130 ms of CPU; a fork of one that already has
costs a few. One server per host process, interpreter and runner environment
(:func:`shared_fork_server`), shared by every RLM tree of the process (a server holds no session
state: each runner gets its session from its own bootstrap); a depth-2 fan-out of 16 children
then starts its 16 runners at once instead of queueing 16 interpreter start-ups. The server is
closed at interpreter exit, and dies with the host process in any case.

A runner runs as the same user as its server, so its code can signal the server: a server that
died, or that was stopped (``SIGSTOP``, seen in ``/proc``) or stops answering fork requests, is
killed with everything below it and replaced, and the start that found it so is retried once on
the new server. Sessions whose runners it had forked lose their runner and restart it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import os
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from rlm.broker import cleanup
from rlm.errors import ConfigurationError, SandboxStartError

from .base import RunnerProcess
from .runner.bundle import runner_executable
from .runner.forkserver import kill_tree, process_state

#: How long a fork request may go unanswered before the server counts as hung (a fork takes a
#: few ms; a stopped server is seen at once, from /proc).
FORK_REPLY_TIMEOUT = 10.0
#: How often a pending fork request checks that its server is not stopped.
STALL_POLL = 0.1
KILL_WAIT = 5.0
#: Process states of a server that cannot answer: stopped by a signal, stopped by a tracer.
STALLED_STATES = {"T": "was stopped (SIGSTOP)", "t": "is stopped by a tracer"}


class StderrTail:
    """The last lines a sandbox process wrote to its stderr, each cut to ``width`` characters:
    bounded memory however much the process writes, in lines however long."""

    def __init__(self, lines: int = 40, width: int = 2000) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._width = width
        self._partial = bytearray()

    def feed(self, data: bytes) -> None:
        *complete, rest = data.split(b"\n")
        for piece in complete:
            self._keep(piece)
            self._lines.append(self._partial.decode("utf-8", "replace").rstrip())
            self._partial.clear()
        self._keep(rest)

    def _keep(self, piece: bytes) -> None:
        room = self._width - len(self._partial)
        if room > 0:
            self._partial += piece[:room]

    def text(self) -> str:
        partial = self._partial.decode("utf-8", "replace").rstrip()
        return "\n".join([*self._lines, partial] if partial else self._lines)

    async def drain(self, reader: asyncio.StreamReader) -> None:
        """Reads ``reader`` to its end (in chunks: a line with no end cannot stop it)."""
        while chunk := await reader.read(65536):
            self.feed(chunk)


async def kill_process_tree(pid: int) -> None:
    """:func:`kill_tree` of ``pid``, in a worker thread (it reads /proc and waits for processes
    to stop); on this thread at interpreter exit, when no worker thread can start."""
    try:
        await asyncio.to_thread(kill_tree, [pid])
    except RuntimeError:
        kill_tree([pid])


def _gone(pid: int) -> bool:
    """True for a process that has exited (a zombie) or no longer exists."""
    return process_state(pid) in (None, "Z", "X", "x")


class ForkedRunnerProcess(RunnerProcess):
    """A runner forked by the fork server; its exit code comes from the server, its parent."""

    def __init__(self, server: _Server, pid: int, stdin_fd: int, stderr_fd: int) -> None:
        self.pid = pid
        self._server = server
        self._stdin_fd: int | None = stdin_fd
        self._code: int | None = None
        self._ended = asyncio.Event()
        self._stderr = StderrTail()
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
            await self._stderr.drain(reader)
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
        return self._stderr.text()

    async def wait_exit(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout)
        return self._code is not None

    async def until_exit(self) -> None:
        await self._ended.wait()

    async def kill(self) -> None:
        """Kills the runner and everything its cells started (see ``kill_tree``)."""
        if self._code is None:
            await kill_process_tree(self.pid)
            await self._wait_ended()
        if self._stdin_fd is not None:
            os.close(self._stdin_fd)
            self._stdin_fd = None
        try:
            await asyncio.wait_for(self._drain, 1)
        except TimeoutError:
            self._drain.cancel()

    async def _wait_ended(self) -> None:
        """Until the server reports the exit; a server that cannot (stopped) is not waited for
        once /proc shows the runner dead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KILL_WAIT
        dead_since: float | None = None
        while self._code is None and loop.time() < deadline:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), 0.05)
            if self._code is None and _gone(self.pid):
                dead_since = dead_since or loop.time()
                if loop.time() - dead_since > 0.5:
                    self._exited(-signal.SIGKILL)


class _NoAnswer(SandboxStartError):
    """The fork server did not answer a fork request (it exited, was stopped or hangs)."""


class _Server:
    """One fork-server process: its control socket, the fork requests waiting for their pid and
    the runners it forked."""

    def __init__(
        self, python: str, process: asyncio.subprocess.Process, control: socket.socket
    ) -> None:
        self.python = python
        self.process = process
        self.control: socket.socket | None = control
        self.pending: collections.deque[asyncio.Future[int]] = collections.deque()
        self.children: dict[int, ForkedRunnerProcess] = {}
        self.early_exits: dict[int, int] = {}
        self.stderr = b""
        self._failure: _NoAnswer | None = None
        self._killed: asyncio.Task[None] | None = None
        self.reader = asyncio.ensure_future(self._read_reports())

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ended(self) -> bool:
        return self.reader.done()

    def stalled(self) -> str | None:
        """Why this server cannot answer now (stopped), or None."""
        return STALLED_STATES.get(process_state(self.pid) or "")

    async def _read_reports(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                kind, *fields = line.split() or [b""]
                if kind == b"P" and fields and self.pending:
                    future = self.pending.popleft()
                    if not future.done():
                        future.set_result(int(fields[0]))
                elif kind == b"X" and len(fields) == 2:
                    pid, code = int(fields[0]), int(fields[1])
                    child = self.children.pop(pid, None)
                    if child is not None:
                        child._exited(code)
                    else:
                        self.early_exits[pid] = code
        finally:
            # The server is gone, and with it (PDEATHSIG) every runner it forked.
            if self.process.stderr is not None:
                with contextlib.suppress(Exception):
                    self.stderr = await asyncio.wait_for(self.process.stderr.read(), 1)
            for child in self.children.values():
                child._exited(-signal.SIGKILL)
            self.children.clear()
            failure = self._failure or self.died()
            while self.pending:
                future = self.pending.popleft()
                if not future.done():
                    future.set_exception(failure)

    def died(self) -> _NoAnswer:
        detail = self.stderr.decode("utf-8", "replace").strip()[-2000:]
        return _NoAnswer(
            f"the local fork server ({self.python}) exited"
            + (f"; its stderr: {detail}" if detail else "")
            + "; the runner needs Python >= 3.11 with grpcio and protobuf"
        )

    async def kill(self, failure: _NoAnswer | None = None) -> None:
        """Kills this server and everything below it: its runners and what their cells started.
        Fork requests still waiting fail with ``failure`` (default: it exited)."""
        if self._killed is None:
            self._failure = failure
            self._killed = asyncio.ensure_future(self._kill())
        await asyncio.shield(self._killed)

    async def _kill(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.process.returncode is None:  # not reaped yet: the pid is still this server's
            await kill_process_tree(self.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), KILL_WAIT)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.reader), 2)


class ForkServer:
    """The fork server of one interpreter and runner environment, replaced when it fails."""

    close_order = 150  # at exit: after the sandboxes and brokers that use it

    def __init__(self, python: str, env: Mapping[str, str]) -> None:
        self.python = python
        self.env = dict(env)
        self._key = _key(python, env)
        self._server: _Server | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def _start(self) -> _Server:
        host_end, server_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        bundle, bundle_fds = runner_executable()
        try:
            process = await asyncio.create_subprocess_exec(
                self.python,
                "-I",
                "-u",
                *bundle,
                "--fork-server",
                str(os.getpid()),
                stdin=server_end.fileno(),
                pass_fds=bundle_fds,
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
        return _Server(self.python, process, host_end)

    async def _usable_server(self) -> _Server:
        """The running server (called under the lock): one that exited or was stopped is killed
        with everything below it, and a new one started."""
        server = self._server
        if server is not None:
            stalled = server.stalled()
            if server.ended or stalled:
                self._server = None
                reason = f"the local fork server (pid {server.pid}) {stalled}" if stalled else None
                await server.kill(_NoAnswer(reason) if reason else None)
        if self._server is None:
            self._server = await self._start()
        return self._server

    async def spawn(self) -> ForkedRunnerProcess:
        """A new runner, waiting for its bootstrap line. A server that does not answer is
        replaced and the request retried once; a second failure raises SandboxStartError."""
        try:
            return await self._spawn_once()
        except _NoAnswer as first:
            try:
                return await self._spawn_once()
            except _NoAnswer as second:
                message = str(second)
                if str(first) != message:
                    message += f" (before that: {first}; it was replaced)"
                raise SandboxStartError(message) from second

    async def _spawn_once(self) -> ForkedRunnerProcess:
        async with self._lock:
            if self._closed:
                raise SandboxStartError("the local fork server is closed")
            server = await self._usable_server()
            assert server.control is not None
            stdin_read, stdin_write = os.pipe()
            stderr_read, stderr_write = os.pipe()
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            server.pending.append(future)
            try:
                socket.send_fds(server.control, [b"F"], [stdin_read, stderr_write])
            except OSError:
                server.pending.remove(future)
                for fd in (stdin_write, stderr_read):
                    os.close(fd)
                await server.kill()
                raise server.died() from None
            finally:
                os.close(stdin_read)
                os.close(stderr_write)
        try:
            pid = await self._fork_reply(server, future)
        except BaseException:
            future.cancel()
            os.close(stdin_write)
            os.close(stderr_read)
            raise
        if pid < 0:
            os.close(stdin_write)
            os.close(stderr_read)
            raise SandboxStartError("the local fork server could not fork a runner")
        child = ForkedRunnerProcess(server, pid, stdin_write, stderr_read)
        if pid in server.early_exits:
            child._exited(server.early_exits.pop(pid))
        else:
            server.children[pid] = child
        return child

    async def _fork_reply(self, server: _Server, future: asyncio.Future[int]) -> int:
        """The forked runner's pid; a server that is stopped, or silent for
        ``FORK_REPLY_TIMEOUT``, is killed and replaced (raises _NoAnswer: retry)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORK_REPLY_TIMEOUT
        while True:
            done, _ = await asyncio.wait({future}, timeout=STALL_POLL)
            if done:
                return future.result()
            why = server.stalled()
            if why is None and loop.time() >= deadline:
                why = f"did not answer a fork request within {FORK_REPLY_TIMEOUT:g}s"
            if why is not None:
                failure = _NoAnswer(f"the local fork server (pid {server.pid}) {why}")
                async with self._lock:
                    if self._server is server:
                        self._server = None
                await server.kill(failure)
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # failed by the kill, or a runner the kill took
                raise failure

    @property
    def closed(self) -> bool:
        return self._closed

    async def aclose(self) -> None:
        """Kills the server and everything below it."""
        self._closed = True
        cleanup.untrack(self)
        if _servers.get(self._key) is self:
            del _servers[self._key]
        async with self._lock:
            server, self._server = self._server, None
            if server is not None:
                await server.kill()


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


# ---- the fork server inside a shared sandbox -------------------------------------------------


#: Longest line a shared sandbox's fork server writes (an ``E`` line: 4 KiB of stderr, base64).
MAX_REPORT_LINE = 64 * 1024


class StreamForkServer:
    """The host side of a fork server that runs inside a sandbox as its main process
    (``runner.pyz --fork-server-stdio``, see ``runner/forkserver.py`` :func:`serve_stdio`),
    spoken to over the sandbox's stdin/stdout: one sandbox serves every session of an RLM tree,
    each in a runner process of its own.

    The transport calls :meth:`feed` with what the server wrote to its stdout and :meth:`end`
    when that stream ends; ``write`` sends bytes to the server's stdin. At most ``max_runners``
    runners are alive at once (the tree-wide cap): a further start waits for one to end, up to
    its start-up timeout.
    """

    def __init__(
        self, write: Callable[[bytes], Awaitable[None]], *, max_runners: int, what: str
    ) -> None:
        if max_runners < 1:
            raise ConfigurationError("max_live_runners must be at least 1")
        self._write = write
        self.max_runners = max_runners
        self.what = what
        self._slots = asyncio.Semaphore(max_runners)
        self._seq = itertools.count(1)
        #: starts waiting for their pid: the future to answer and the runner to register
        self._pending: dict[int, tuple[asyncio.Future[int], StreamRunnerProcess]] = {}
        self._children: dict[int, StreamRunnerProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._kills: set[asyncio.Task[None]] = set()
        self._buffer = b""
        self.ready = asyncio.Event()
        self.ended: str | None = None
        #: runners this server has forked (reported with a pid)
        self.forked = 0

    @property
    def live_runners(self) -> int:
        return len(self._children)

    # ---- what the transport calls (on the event loop) --------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes the server wrote to its stdout."""
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_REPORT_LINE:  # no report is this long: not the server's
            self._buffer = b""
        for line in lines:
            self._on_line(line)

    def _on_line(self, line: bytes) -> None:
        kind, *fields = line.split(b" ")
        try:
            if kind == b"R":
                self.ready.set()
            elif kind == b"P" and len(fields) == 2:
                started = self._pending.pop(int(fields[0]), None)
                if started is not None and not started[0].done():
                    future, starting = started
                    pid = int(fields[1])
                    if pid > 0:
                        # Registered now, not when the start resumes: the lines that follow
                        # in this same read (a runner that fails at once writes its stderr and
                        # exits) must find it.
                        self._children[pid] = starting
                        self.forked += 1
                    future.set_result(pid)
            elif kind == b"X" and len(fields) == 2:
                pid, code = int(fields[0]), int(fields[1])
                ended = self._children.pop(pid, None)
                if ended is None:
                    self._early_exits[pid] = code
                else:
                    ended._exited(code)
            elif kind == b"E" and len(fields) == 2:
                writer = self._children.get(int(fields[0]))
                if writer is not None:
                    writer._stderr.feed(base64.b64decode(fields[1], validate=False))
        except ValueError:
            pass  # a garbled line: the sandbox's own stdout is never a runner's, so not ours

    def end(self, reason: str) -> None:
        """The server's stdout ended (the sandbox is gone): every runner with it."""
        if self.ended is not None:
            return
        self.ended = reason or f"the {self.what} sandbox ended"
        self.ready.set()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(SandboxStartError(self.ended))
        self._pending.clear()
        for child in list(self._children.values()):
            child._exited(-signal.SIGKILL)
        self._children.clear()

    # ---- what the runners call -------------------------------------------------------------

    async def _start(self, child: StreamRunnerProcess, bootstrap: bytes, timeout: float) -> int:
        """Forks ``child``'s runner with ``bootstrap`` on its stdin; returns its pid."""
        if self.ended is not None:
            raise SandboxStartError(self.ended)
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise SandboxStartError(
                f"the {self.what} sandbox shared by this RLM tree already runs "
                f"{self.max_runners} sessions and none ended within {timeout:g}s; raise "
                "environment_kwargs['max_live_runners'] or lower max_concurrent_subcalls"
            ) from None
        child._holds_slot = True
        seq = next(self._seq)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[seq] = (future, child)
        try:
            await self._write(b"S %d " % seq + bootstrap.rstrip(b"\n") + b"\n")
            pid = await asyncio.wait_for(future, timeout)
        except BaseException:
            self._pending.pop(seq, None)
            if (
                future.done()
                and not future.cancelled()
                and future.exception() is None
                and future.result() > 0
            ):
                # Forked, but the start was given up: nobody will use that runner.
                self._spawn_kill(future.result())
            child._exited(-signal.SIGKILL)
            raise
        if pid < 0:
            child._exited(-1)
            raise SandboxStartError(f"the fork server in the {self.what} sandbox could not fork")
        if pid in self._early_exits:
            self._children.pop(pid, None)
            child._exited(self._early_exits.pop(pid))
        return pid

    def _release(self) -> None:
        self._slots.release()

    def _spawn_kill(self, pid: int) -> None:
        task = asyncio.ensure_future(self._kill(pid))
        self._kills.add(task)
        task.add_done_callback(self._kills.discard)

    async def _kill(self, pid: int) -> None:
        if self.ended is None and pid in self._children:
            with contextlib.suppress(Exception):
                await self._write(b"K %d\n" % pid)


class StreamRunnerProcess(RunnerProcess):
    """A runner forked inside a shared sandbox by its :class:`StreamForkServer`; it is forked
    when its bootstrap is sent (a fork costs a few ms: nothing to start ahead)."""

    def __init__(self, server: StreamForkServer, start_timeout: float, sandbox: Any = None) -> None:
        self.server = server
        #: the provider's handle of the shared sandbox (docker: the container), for diagnostics
        self.sandbox = sandbox
        self.pid: int | None = None
        self._start_timeout = start_timeout
        self._code: int | None = None
        self._ended = asyncio.Event()
        self._stderr = StderrTail()
        self._holds_slot = False

    def _exited(self, code: int) -> None:
        if self._code is None:
            self._code = code
        self._ended.set()
        if self._holds_slot:
            self._holds_slot = False
            self.server._release()

    async def send_bootstrap(self, bootstrap: bytes) -> None:
        if self.pid is not None or self._code is not None:
            raise SandboxStartError("the runner's bootstrap was already sent")
        self.pid = await self.server._start(self, bootstrap, self._start_timeout)

    def exit_code(self) -> int | None:
        return self._code

    def diagnostics(self) -> str:
        return self._stderr.text()

    async def wait_exit(self, timeout: float) -> bool:
        if self.pid is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), timeout)
        return self._code is not None

    async def until_exit(self) -> None:
        await self._ended.wait()

    async def kill(self) -> None:
        """Kills the runner and everything its cells started (the server kills its tree)."""
        if self._code is not None:
            return
        if self.pid is None:
            self._exited(-signal.SIGKILL)
            return
        await self.server._kill(self.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), KILL_WAIT)
        if self._code is None:  # the server did not answer: it is gone or stuck
            self._exited(-signal.SIGKILL)
