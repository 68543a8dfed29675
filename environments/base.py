"""The contract every environment fulfils, and the one implementation of the runner protocol.

``Environment`` is what the RLM loop talks to. ``SandboxEnvironment`` owns everything that is the
same for every provider: registering the session with the broker, bootstrapping the runner,
streaming contexts in chunks, running cells with a host-side timeout, interrupting and, when a
cell will not stop, killing and restarting the runner. A provider file only says how to create the
sandbox, how to start a process in it and how to destroy it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import pickle
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlm.broker import cleanup
from rlm.broker.server import Broker, RunnerConnection, Session, SessionHandler
from rlm.errors import ConfigurationError, SandboxDiedError, SandboxError, SandboxStartError
from rlm.protos import rlm_sandbox_pb2 as pb

from .runner.bootstrap import Bootstrap

#: characters per context message: small enough that the few in flight add little to the host's
#: peak memory (a 40 MB context peaks 3.7 MiB lower than with 1 MiB chunks), at the same speed
CHUNK_CHARS = 1 << 18
#: How long a closing session waits for its runner to end by itself after the shutdown message
#: before it kills it (a forked runner takes a few ms; an ended one needs no tree kill).
SHUTDOWN_GRACE_SECONDS = 0.5
#: how often a runner whose end is not reported as an event is checked for having exited
EXIT_POLL_SECONDS = 0.05
#: How the runner executes cells: ``exec`` of the parsed cell, or a real IPython shell (which
#: must be installed in the sandbox's Python).
SHELLS = ("python", "ipython")
#: ``child_sandbox`` values of the providers that can fork sessions inside a sandbox: every
#: session of an RLM tree in the tree's one sandbox, or a sandbox per session.
CHILD_SANDBOX_SHARED = "shared"
CHILD_SANDBOX_OWN = "own"
CHILD_SANDBOX_MODES = (CHILD_SANDBOX_SHARED, CHILD_SANDBOX_OWN)


def check_child_sandbox(child_sandbox: str, max_live_runners: int | None) -> None:
    """Raises ConfigurationError for a ``child_sandbox`` or ``max_live_runners`` that is not one."""
    if child_sandbox not in CHILD_SANDBOX_MODES:
        raise ConfigurationError(
            f"child_sandbox must be {' or '.join(map(repr, CHILD_SANDBOX_MODES))}, not "
            f"{child_sandbox!r}: 'shared' runs every session of the tree in one sandbox, "
            "'own' gives each session (each child RLM) a sandbox of its own"
        )
    if max_live_runners is not None and max_live_runners < 1:
        raise ConfigurationError("max_live_runners must be at least 1")


@dataclass
class CellResult:
    """What one cell did, as the loop and the logs see it."""

    stdout: str = ""
    stderr: str = ""
    error: str = ""
    seconds: float = 0.0
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    interrupted: bool = False
    restarted: bool = False
    fatal: bool = False
    answer_ready: bool = False
    answer_content: str = ""
    variables: list[str] = field(default_factory=list)

    @classmethod
    def from_proto(cls, result: pb.ExecuteResult) -> CellResult:
        return cls(
            stdout=result.stdout,
            stderr=result.stderr,
            error=result.error,
            seconds=result.seconds,
            stdout_dropped=result.stdout_dropped_chars,
            stderr_dropped=result.stderr_dropped_chars,
            interrupted=result.interrupted,
            fatal=result.fatal,
            answer_ready=result.answer_ready,
            answer_content=result.answer_content,
            variables=list(result.variables),
        )

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class ToolSpec:
    """A host-side callable exposed in the sandbox under ``name``."""

    name: str
    description: str = ""


class Environment(ABC):
    """What the RLM loop needs from a place that runs generated code."""

    name: ClassVar[str]

    @abstractmethod
    async def start(self) -> None:
        """Creates the sandbox and attaches its runner to the broker."""

    @abstractmethod
    async def load_context(
        self, value: Any, *, name: str = "context", aliases: tuple[str, ...] = ()
    ) -> None:
        """Binds ``value`` (str, list or dict) to ``name`` inside the sandbox."""

    @abstractmethod
    async def set_variables(self, values: dict[str, Any], tools: list[ToolSpec]) -> None:
        """Plain JSON values become variables; each tool becomes a stub calling the host."""

    @abstractmethod
    async def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Runs one cell in the persistent interpreter."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stops the runner and destroys the sandbox; safe to call twice."""

    async def __aenter__(self) -> Environment:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def encode_value(value: Any) -> tuple[bytes, bytes]:
    """``value`` for the sandbox: JSON where it can carry it, else a pickle. Only the host
    pickles and only the sandbox unpickles: nothing from a sandbox is ever unpickled here."""
    try:
        return json.dumps(value).encode(), b""
    except (TypeError, ValueError):
        pass
    try:
        return b"", pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        raise ConfigurationError(
            f"a value of type {type(value).__name__} can be neither JSON-encoded nor pickled for "
            f"the sandbox ({type(error).__name__}: {error}); pass plain data or a callable"
        ) from error


def encode_values(values: dict[str, Any]) -> tuple[bytes, bytes]:
    """Variables for the sandbox: the JSON-able ones as one JSON object, the rest pickled."""
    plain: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for name, value in values.items():
        as_json, _ = encode_value(value)
        (plain if as_json else other)[name] = value
    return (
        json.dumps(plain).encode() if plain else b"",
        encode_value(other)[1] if other else b"",
    )


class RunnerProcess(ABC):
    """A runner process inside a sandbox, as the provider started it."""

    @abstractmethod
    async def kill(self) -> None:
        """Kills the process (and whatever it spawned) for good."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit code once it has ended, else None."""

    def diagnostics(self) -> str:
        """The end of what the process wrote to its stderr, for error messages."""
        return ""

    async def wait_exit(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the process to end by itself (after a shutdown);
        True when it has. Where its end is only seen by killing it, False at once."""
        return self.exit_code() is not None

    async def until_exit(self) -> None:
        """Returns once the process has ended. Polls ``exit_code()`` every
        ``EXIT_POLL_SECONDS``; a process whose end is reported as an event waits on that."""
        while self.exit_code() is None:
            await asyncio.sleep(EXIT_POLL_SECONDS)

    async def send_bootstrap(self, bootstrap: bytes) -> None:
        """Hands the waiting runner its session (one JSON line on its stdin)."""
        raise NotImplementedError(f"{type(self).__name__} takes its bootstrap at launch")


class WarmPool:
    """Sandboxes (runners, or the containers they fork in) started ahead of time, each waiting
    for a session's bootstrap line, and the bound on how many are alive at once.

    A sandbox serves one session (or one tree) and is then killed: nothing is reused, so no
    session sees another's state. Taking one refills the pool in the background to ``size``
    waiting; those idle longer than ``idle_timeout`` are removed. With ``max_live``, at most that
    many are alive at once, waiting ones included: a start past it waits for one to end (up to
    its start-up timeout). A resource of the broker, shared by every tree on it, closed with it.
    """

    close_order = 10

    def __init__(self, size: int, idle_timeout: float = 300.0, max_live: int | None = None) -> None:
        if size < 0:
            raise ConfigurationError("pool_size must be at least 0")
        if max_live is not None and max_live < 1:
            raise ConfigurationError("max_sandboxes must be at least 1")
        if max_live is None and size < 1:
            raise ConfigurationError("pool_size must be at least 1 (or give max_sandboxes)")
        self.size = size
        self.idle_timeout = idle_timeout
        self.max_live = max_live
        self.live = 0
        """Sandboxes of this pool alive now: waiting, in use, or being started."""
        self.peak_live = 0
        self.started = 0
        """Sandboxes started through this pool in all."""
        self._ready: dict[Hashable, list[tuple[float, RunnerProcess]]] = {}
        self._starting: dict[Hashable, int] = {}
        self._starters: dict[Hashable, Callable[[], Awaitable[RunnerProcess]]] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def waiting(self) -> int:
        """Sandboxes started and waiting for a session."""
        return sum(len(ready) for ready in self._ready.values())

    def _spawn_task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _has_room(self) -> bool:
        return self.max_live is None or self.live < self.max_live

    async def _start_counted(self, start: Callable[[], Awaitable[RunnerProcess]]) -> RunnerProcess:
        self.live += 1
        self.peak_live = max(self.peak_live, self.live)
        try:
            process = await start()
        except BaseException:
            self.live -= 1
            self._notify()
            raise
        self.started += 1
        return process

    async def _kill(self, process: RunnerProcess) -> None:
        try:
            await process.kill()
        finally:
            self.live -= 1
            self._notify()

    async def acquire(
        self,
        key: Hashable,
        start: Callable[[], Awaitable[RunnerProcess]],
        timeout: float = 60.0,
    ) -> RunnerProcess:
        """A started sandbox for ``key``: a waiting one, else one started now (past
        ``max_live``, once one ends, for up to ``timeout`` seconds). Call :meth:`release` once
        it is killed. The pool refills for ``key`` in the background."""
        if self._reaper is None and not self._closed:
            cleanup.track(self)
            self._reaper = asyncio.ensure_future(self._reap())
        self._starters[key] = start
        deadline = time.monotonic() + timeout
        while True:
            if self._closed:
                raise SandboxStartError("the warm pool is closed")
            ready = self._ready.setdefault(key, [])
            while ready:
                started, candidate = ready.pop(0)
                if candidate.exit_code() is None and time.monotonic() - started < self.idle_timeout:
                    self._refill(key)
                    return candidate
                await self._kill(candidate)
            if self._has_room():
                process = await self._start_counted(start)
                self._refill(key)
                return process
            changed = self._changed
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxStartError(
                    f"all {self.max_live} sandboxes of the pool are in use and none ended within "
                    f"{timeout:g}s; raise max_sandboxes or run fewer sessions at once"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def release(self) -> None:
        """A sandbox :meth:`acquire` gave out was killed: its place is free again."""
        self.live -= 1
        self._notify()
        for key in list(self._starters):
            self._refill(key)

    def _refill(self, key: Hashable) -> None:
        if self.size and not self._closed:
            self._spawn_task(self.fill(key, self._starters[key]))

    async def fill(self, key: Hashable, start: Callable[[], Awaitable[RunnerProcess]]) -> None:
        """Starts sandboxes for ``key`` until ``size`` are waiting (or ``max_live`` are alive);
        returns once they are (or no more can start)."""
        self._starters.setdefault(key, start)
        ready = self._ready.setdefault(key, [])
        while not self._closed and len(ready) < self.size:
            starting = self._starting.get(key, 0)
            if len(ready) + starting >= self.size or not self._has_room():
                if not starting:
                    return
                await self._changed.wait()  # another fill's start, or a freed place
                continue
            self._starting[key] = starting + 1
            try:
                process = await self._start_counted(start)
            except Exception:
                return  # the session that needs one starts it and reports the error
            finally:
                self._starting[key] -= 1
            if self._closed:
                await self._kill(process)
                return
            ready.append((time.monotonic(), process))
            self._notify()

    async def _reap(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(self.idle_timeout, 30.0))
            now = time.monotonic()
            for ready in self._ready.values():
                for item in [i for i in ready if now - i[0] >= self.idle_timeout]:
                    ready.remove(item)
                    await self._kill(item[1])

    async def aclose(self) -> None:
        self._closed = True
        self._notify()
        cleanup.untrack(self)
        if self._reaper is not None:
            self._reaper.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for ready in self._ready.values():
            while ready:
                await self._kill(ready.pop()[1])


class RunnerSlots:
    """A cap on the runners alive at once in one RLM tree (``max_live_runners``): one per
    tree (a broker resource), taken when a session's runner starts and given back when it is
    killed. A start that finds none free within its start-up timeout fails, and the child's
    parent gets the error as a string (waiting for ever could deadlock parents waiting on
    children)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigurationError("max_live_runners must be at least 1")
        self.size = size
        self._free = asyncio.Semaphore(size)

    async def acquire(self, timeout: float, what: str) -> None:
        try:
            await asyncio.wait_for(self._free.acquire(), timeout)
        except TimeoutError:
            raise SandboxStartError(
                f"the RLM tree already runs {self.size} {what} sessions and none ended within "
                f"{timeout:g}s; raise environment_kwargs['max_live_runners'] or lower "
                "max_concurrent_subcalls"
            ) from None

    def release(self) -> None:
        self._free.release()

    async def aclose(self) -> None:
        pass


def _encode_context(value: Any) -> tuple[pb.Encoding, str]:
    if isinstance(value, str):
        return pb.TEXT, value
    if isinstance(value, (list, dict, tuple)):
        return pb.JSON, json.dumps(value, ensure_ascii=False)
    raise ConfigurationError(
        f"context must be a str, a list or a dict, not {type(value).__name__}; "
        "convert it (for example json.loads or str) before calling completion()"
    )


class SandboxEnvironment(Environment):
    """Runs the runner in a provider's sandbox; subclasses implement the four provider hooks.

    ``shell="ipython"`` runs every cell through a real IPython shell in the runner (``%magics``,
    ``!shell`` escapes, IPython's display of the last expression); the sandbox's Python then needs
    the ``ipython`` package, or the runner fails to start saying so.
    """

    close_order = 0
    #: how long a cell may ignore an interrupt before the runner is killed and restarted
    interrupt_grace: ClassVar[float] = 1.5
    #: restarts after which the sandbox counts as broken
    max_restarts: ClassVar[int] = 3

    def __init__(
        self,
        *,
        broker: Broker,
        handler: SessionHandler,
        label: str = "root",
        cell_timeout: float = 120.0,
        startup_timeout: float = 60.0,
        max_output_chars: int = 20_000,
        memory_mb: int = 4096,
        max_file_mb: int = 1024,
        pool_size: int = 0,
        pool_idle_timeout: float = 300.0,
        max_sandboxes: int | None = None,
        shell: str = "python",
        max_live_runners: int | None = None,
    ) -> None:
        if cell_timeout <= 0:
            raise ConfigurationError("cell_timeout must be positive (seconds)")
        if shell not in SHELLS:
            raise ConfigurationError(
                f"shell must be one of {', '.join(map(repr, SHELLS))}, not {shell!r}"
            )
        self.broker = broker
        self.handler = handler
        self.label = label
        self.cell_timeout = cell_timeout
        self.startup_timeout = startup_timeout
        self.max_output_chars = max_output_chars
        self.memory_mb = memory_mb
        self.max_file_mb = max_file_mb
        self.shell = shell
        self._session: Session | None = None
        self._connection: RunnerConnection | None = None
        self._process: RunnerProcess | None = None
        self._cells = itertools.count(1)
        self._contexts: list[tuple[str, Any, tuple[str, ...]]] = []
        self._variables: tuple[dict[str, Any], list[ToolSpec]] | None = None
        self._restarts = 0
        self._closed = False
        self.startup_seconds = 0.0
        self.pool: WarmPool | None = None
        self._slots: RunnerSlots | None = None
        self._holds_slot = False
        if max_live_runners is not None:
            self._slots = broker.resource(
                ("runner-slots", self.name), lambda: RunnerSlots(max_live_runners)
            )
        self._pooled = False
        if pool_size > 0 or max_sandboxes is not None:
            self.pool = broker.shared_resource(
                ("pool", self.name, pool_size, pool_idle_timeout, max_sandboxes),
                lambda: WarmPool(pool_size, pool_idle_timeout, max_sandboxes),
            )

    # ---- provider hooks --------------------------------------------------------------------

    @abstractmethod
    async def _create_sandbox(self) -> None:
        """Creates the sandbox (container, VM, directory) but not the runner."""

    async def _spawn_runner(self) -> RunnerProcess:
        """Starts ``python runner.pyz`` in the sandbox, waiting for its bootstrap on stdin
        (providers that can pre-start runners implement this; see ``pool_key``)."""
        raise NotImplementedError

    def pool_key(self) -> Hashable | None:
        """What makes pre-started runners interchangeable for this environment; None: this
        environment cannot use a warm pool."""
        return None

    async def _launch_runner(self, bootstrap: bytes) -> RunnerProcess:
        """A runner for this session: from the warm pool when there is one, else started now."""
        key = self.pool_key()
        if self.pool is not None and key is not None:
            process = await self.pool.acquire(key, self._spawn_runner, self.startup_timeout)
            self._pooled = True
        else:
            process = await self._spawn_runner()
        try:
            await process.send_bootstrap(bootstrap)
        except BaseException:
            await self._kill_process(process)
            raise
        return process

    @abstractmethod
    def _broker_address(self) -> str:
        """The broker's address as the runner inside the sandbox must dial it."""

    @abstractmethod
    async def _destroy_sandbox(self) -> None:
        """Destroys the sandbox and everything in it; safe to call twice."""

    async def _open_sandbox(self) -> None:
        """The session's sandbox: created here (or, where the provider shares one sandbox per
        tree, the tree's joined)."""
        await self._create_sandbox()

    async def _close_sandbox(self) -> None:
        """Undoes :meth:`_open_sandbox` (a tree's shared sandbox outlives its sessions)."""
        await self._destroy_sandbox()

    def _bootstrap(self, bootstrap: Bootstrap) -> Bootstrap:
        """The runner's bootstrap with this provider's fields set (work directory, parent pid,
        relay...): ``dataclasses.replace(bootstrap, ...)``."""
        return bootstrap

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        started = time.perf_counter()
        self._session = self.broker.open_session(self.handler, self.label)
        cleanup.track(self)
        try:
            await self._open_sandbox()
            await self._start_runner()
        except BaseException:
            await self.aclose()
            raise
        self.startup_seconds = time.perf_counter() - started

    async def _start_runner(self) -> None:
        assert self._session is not None
        self._session.expect_runner()
        bootstrap = self._bootstrap(
            Bootstrap(
                address=self._broker_address(),
                token=self._session.token,
                limits={
                    "memory_bytes": self.memory_mb * 1024 * 1024,
                    "file_bytes": self.max_file_mb * 1024 * 1024,
                },
                shell=self.shell,
            )
        )
        if self._slots is not None and not self._holds_slot:
            await self._slots.acquire(self.startup_timeout, self.name)
            self._holds_slot = True
        try:
            self._process = await self._launch_runner(bootstrap.to_line())
        except SandboxDiedError as error:
            raise SandboxStartError(
                f"the runner in the {self.name} sandbox failed to start: {error}"
            ) from error
        try:
            self._connection = await self._wait_attached()
        except (TimeoutError, SandboxDiedError) as error:
            details = self._process.diagnostics() if self._process else ""
            await self._kill_runner()
            what = (
                str(error)
                if isinstance(error, SandboxDiedError)
                else f"it did not attach within {self.startup_timeout:g}s"
            )
            raise SandboxStartError(
                f"the runner in the {self.name} sandbox failed to start: {what}"
                f"{'; its stderr: ' + details if details else ''}"
            ) from error

    async def _wait_attached(self) -> RunnerConnection:
        """The runner's connection once it attaches; SandboxDiedError if it exits first,
        TimeoutError after ``startup_timeout``. Waits on both at once: a hundred runners
        starting together do not each wake the loop to poll."""
        assert self._session is not None and self._process is not None
        process = self._process
        attached = asyncio.ensure_future(self._session.wait_runner())
        exited = asyncio.ensure_future(process.until_exit())
        try:
            await asyncio.wait(
                (attached, exited),
                timeout=self.startup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            attached.cancel()
            exited.cancel()
        if attached.done() and not attached.cancelled():
            return attached.result()
        if process.exit_code() is not None:
            raise SandboxDiedError(f"the runner exited with code {process.exit_code()}")
        raise TimeoutError

    async def _kill_process(self, process: RunnerProcess) -> None:
        try:
            await process.kill()
        finally:
            if self._pooled and self.pool is not None:
                self._pooled = False
                self.pool.release()

    async def _kill_runner(self) -> None:
        process, self._process = self._process, None
        self._connection = None
        try:
            if process is not None:
                await self._kill_process(process)
        finally:
            if self._holds_slot and self._slots is not None:
                self._holds_slot = False
                self._slots.release()

    async def _restart(self) -> None:
        self._restarts += 1
        if self._restarts > self.max_restarts:
            raise SandboxDiedError(
                f"the {self.name} runner had to be restarted more than {self.max_restarts} times; "
                "the sandbox is considered broken"
            )
        await self._kill_runner()
        await self._start_runner()
        for name, value, aliases in self._contexts:
            await self._send_context(name, value, aliases)
        if self._variables is not None:
            await self._send_variables(*self._variables)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        connection = self._connection
        if connection is not None and not connection.closed.is_set():
            with contextlib.suppress(TimeoutError, SandboxError):
                await asyncio.wait_for(connection.send(pb.HostMessage(shutdown=pb.Shutdown())), 1)
                # A runner that ends by itself needs no tree kill: its server (a subreaper) has
                # killed what its cells left by the time it reports the exit.
                if self._process is not None:
                    await self._process.wait_exit(SHUTDOWN_GRACE_SECONDS)
        try:
            await self._kill_runner()
        finally:
            try:
                await self._close_sandbox()
            finally:
                if self._session is not None:
                    self.broker.close_session(self._session)
                cleanup.untrack(self)

    # ---- the protocol ----------------------------------------------------------------------

    def _require_connection(self) -> RunnerConnection:
        if self._closed:
            raise SandboxError(f"the {self.name} environment is closed")
        if self._connection is None:
            raise SandboxError(f"the {self.name} environment is not started; call start() first")
        return self._connection

    async def _await_ack(self, connection: RunnerConnection, what: str) -> None:
        while True:
            message = await connection.receive()
            if message.WhichOneof("kind") == "ack" and message.ack.what == what:
                if message.ack.error:
                    raise ConfigurationError(message.ack.error)
                return

    async def _send_context(self, name: str, value: Any, aliases: tuple[str, ...]) -> None:
        connection = self._require_connection()
        encoding, text = _encode_context(value)
        total = len(text) if text.isascii() else 0
        if not text:
            await connection.send(
                pb.HostMessage(
                    context=pb.ContextChunk(
                        name=name, last=True, encoding=encoding, aliases=aliases
                    )
                )
            )
        for start in range(0, len(text), CHUNK_CHARS):
            last = start + CHUNK_CHARS >= len(text)
            chunk = pb.ContextChunk(
                name=name,
                data=text[start : start + CHUNK_CHARS].encode("utf-8"),
                last=last,
                encoding=encoding,
                total_bytes=total if start == 0 else 0,
                aliases=aliases if last else (),
            )
            await connection.send(pb.HostMessage(context=chunk))
        await self._await_ack(connection, f"context:{name}")

    async def load_context(
        self, value: Any, *, name: str = "context", aliases: tuple[str, ...] = ()
    ) -> None:
        await self._send_context(name, value, tuple(aliases))
        self._contexts.append((name, value, tuple(aliases)))

    async def _send_variables(self, values: dict[str, Any], tools: list[ToolSpec]) -> None:
        connection = self._require_connection()
        as_json, as_pickle = encode_values(values)
        message = pb.SetVariables(
            values_json=as_json,
            values_pickle=as_pickle,
            tools=[pb.ToolSpec(name=t.name, description=t.description) for t in tools],
        )
        await connection.send(pb.HostMessage(set_variables=message))
        await self._await_ack(connection, "variables")

    async def set_variables(self, values: dict[str, Any], tools: list[ToolSpec]) -> None:
        await self._send_variables(values, tools)
        # Kept (merged with earlier calls) so that a restarted runner gets them all again.
        old_values, old_tools = self._variables or ({}, [])
        names = {tool.name for tool in tools}
        self._variables = (
            {**old_values, **values},
            [t for t in old_tools if t.name not in names] + list(tools),
        )

    async def _wait_result(self, connection: RunnerConnection, cell_id: int) -> pb.ExecuteResult:
        while True:
            message = await connection.receive()
            if message.WhichOneof("kind") == "result" and message.result.cell_id == cell_id:
                return message.result

    async def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        connection = self._require_connection()
        timeout = self.cell_timeout if timeout is None else min(timeout, self.cell_timeout)
        cell_id = next(self._cells)
        request = pb.ExecuteRequest(
            cell_id=cell_id,
            code=code,
            max_output_chars=self.max_output_chars,
            timeout_seconds=timeout,
        )
        try:
            await connection.send(pb.HostMessage(execute=request))
            waiting = asyncio.ensure_future(self._wait_result(connection, cell_id))
            try:
                return CellResult.from_proto(
                    await asyncio.wait_for(asyncio.shield(waiting), timeout)
                )
            except TimeoutError:
                await connection.send(pb.HostMessage(interrupt=pb.Interrupt(cell_id=cell_id)))
                try:
                    result = await asyncio.wait_for(waiting, self.interrupt_grace)
                except TimeoutError:
                    pass
                else:
                    cell = CellResult.from_proto(result)
                    cell.interrupted = True
                    cell.error = (
                        f"TimeoutError: the cell ran longer than {timeout:g}s and was interrupted; "
                        "the REPL state is kept. Process less data per cell or use llm_query_batched."
                    )
                    return cell
            finally:
                if not waiting.done():
                    waiting.cancel()
            await self._restart()
            return CellResult(
                error=(
                    f"TimeoutError: the cell ran longer than {timeout:g}s and ignored the interrupt; "
                    "the sandbox was restarted: every variable you defined is lost "
                    "(context and tools are loaded again)."
                ),
                interrupted=True,
                restarted=True,
            )
        except SandboxDiedError:
            if self._closed:
                raise
            process = self._process
            code_ = process.exit_code() if process else None
            details = process.diagnostics() if process else ""
            await self._restart()
            return CellResult(
                error=(
                    f"SandboxDied: the runner process died while running this cell "
                    f"(exit code {code_}; a memory limit of {self.memory_mb} MB applies)"
                    f"{': ' + details[-500:] if details else ''}. The sandbox was restarted: "
                    "every variable you defined is lost (context and tools are loaded again)."
                ),
                restarted=True,
            )
