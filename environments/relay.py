"""Sandboxes that cannot reach the host: the runner's gRPC connection rides the exec stream.

A provider adapter built on :class:`RelayedSandboxEnvironment` implements four things — create
the sandbox, write a file into it, start a process in it with streaming stdin/stdout, destroy it —
and gets everything else: the runner is shipped as a file, started in relay mode, and the
:class:`HostRelay` carries its connection to the broker's unix socket. Big contexts go in as files
through the provider's file API, never through the stream or a command line. By default a whole
RLM tree shares one sandbox, every session a runner forked in it, every runner's connection on
one relay (:mod:`rlm.environments.relaytree`); ``child_sandbox="own"`` gives each session a
sandbox and a relay of its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import dataclasses
import hashlib
import importlib
import itertools
import json
import logging
import secrets
from abc import abstractmethod
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from rlm.errors import ConfigurationError, SandboxDiedError, SandboxError, SandboxStartError

from .base import (
    CHILD_SANDBOX_OWN,
    CHILD_SANDBOX_SHARED,
    RunnerProcess,
    SandboxEnvironment,
    _encode_context,
    check_child_sandbox,
)
from .runner.bootstrap import Bootstrap
from .runner.bundle import runner_bundle
from .runner.relay import ACK_SECONDS, CONTROL, Frame, FrameError, FrameGap, Sequencer
from .throttling import DEFAULT_POLICY, RetryPolicy, Throttled, call_with_retries

if TYPE_CHECKING:
    from .relaytree import RelayedTree

logger = logging.getLogger(__name__)
T = TypeVar("T")

READ_CHUNK = 48 * 1024
#: contexts up to this size go through the relayed stream; bigger ones as a file
INLINE_CONTEXT_CHARS = 1 << 20
#: how long closing a relay waits for its tasks to unwind (and close the provider streams)
CLOSE_WAIT_SECONDS = 5.0
#: the largest file one upload carries when the provider sets no lower cap: bigger files go up
#: in parts (concurrently, each with a deadline of its own) and are joined inside the sandbox
UPLOAD_PART_BYTES = 8 << 20
#: parts of one file in flight at once
UPLOAD_CONCURRENCY = 4
#: an upload's deadline: this much for the request itself, plus the time the slowest link we
#: accept (UPLOAD_MIN_BYTES_PER_SECOND) needs for the bytes; an 8 MiB part gets 62 s
UPLOAD_BASE_SECONDS = 30.0
UPLOAD_MIN_BYTES_PER_SECOND = 256 * 1024
#: frames written to the provider in one call, at most (several frames per round trip)
WRITE_BATCH_BYTES = 1 << 20
#: pause before a failed write is tried again
WRITE_RETRY_SECONDS = 0.2
#: problems a relay remembers (the newest)
MAX_PROBLEMS = 100
#: sessions alive at once in a tree's shared sandbox when ``max_live_runners`` is not given (a
#: forked runner holds some 30 MB of its own; a further session waits for one to end)
DEFAULT_TREE_RUNNERS = 128


def upload_timeout(size: int) -> float:
    """Seconds an upload of ``size`` bytes may take before it counts as failed."""
    return UPLOAD_BASE_SECONDS + size / UPLOAD_MIN_BYTES_PER_SECOND


def split_sizes(size: int, part_bytes: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each part when ``size`` bytes go up in parts of ``part_bytes``."""
    if part_bytes <= 0:
        raise ValueError(f"part_bytes must be positive, not {part_bytes}")
    return [(start, min(start + part_bytes, size)) for start in range(0, size, part_bytes)] or [
        (0, 0)
    ]


#: A Python one-liner for a provider's exec API that tells whether the image can host the
#: runner. Exit 0: ready; 1: grpcio/protobuf missing or too old; 2: Python < 3.11.
REQUIREMENTS_CHECK = """\
import re, sys
if sys.version_info < (3, 11):
    sys.exit(2)
def at_least(version, minimum):
    return tuple(int(n) for n in re.findall(r"\\d+", version)[:3]) >= minimum
try:
    import grpc, google.protobuf
except ImportError:
    sys.exit(1)
sys.exit(not (at_least(grpc.__version__, (1, 85, 1))
              and at_least(google.protobuf.__version__, (7, 35))))
"""


#: Bytes of a remote runner's stderr kept for error messages.
STDERR_TAIL_BYTES = 8192
#: How long killing a remote runner waits for the provider's confirmation.
KILL_WAIT_SECONDS = 5.0
#: The variables of the sandbox's own environment a remote runner keeps (nothing else: the
#: image's or the provider's variables could hold their secrets).
RUNNER_ENV_ALLOWLIST = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")


def fingerprint(secret: str | None) -> str | None:
    """A stand-in for a credential in a key: two keys differ where the credentials do, and the
    credential itself is kept out of it."""
    return None if secret is None else hashlib.sha256(secret.encode()).hexdigest()[:16]


def _plain(value: Any) -> Hashable:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_plain(item) for item in value)
    if isinstance(value, Mapping):
        return tuple(sorted(((str(k), _plain(v)) for k, v in value.items()), key=lambda i: i[0]))
    # An SDK object (a Modal or Daytona image...): the same object, the same sandbox.
    return (type(value).__qualname__, id(value))


def settings_key(settings: Mapping[str, Any]) -> tuple[Hashable, ...]:
    """``settings`` (a provider's sandbox options) as a hashable key, in name order."""
    return tuple((name, _plain(settings[name])) for name in sorted(settings))


def import_sdk(module: str, missing: str) -> Any:
    """A provider's SDK, imported on first use (``import rlm`` pulls in none); ``missing`` is
    the error's text when it is not installed (which extra to install, and where)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigurationError(missing) from error


class OutputTail:
    """The last ``limit`` bytes of what a process wrote (its stderr, for error messages):
    bounded however much it writes."""

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.limit = limit
        self._pieces: collections.deque[bytes] = collections.deque()
        self._size = 0

    def add(self, data: bytes | str) -> None:
        piece = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
        self._pieces.append(piece)
        self._size += len(piece)
        while self._size - len(self._pieces[0]) >= self.limit:
            self._size -= len(self._pieces.popleft())

    def text(self) -> str:
        return b"".join(self._pieces)[-self.limit :].decode("utf-8", "replace")


class RemoteProcess(RunnerProcess):
    """A process started by a provider's exec API, with streaming stdin and stdout; its stderr
    goes to ``_stderr`` (the tail its error messages quote)."""

    def diagnostics(self) -> str:
        tail = getattr(self, "_stderr", None)
        return tail.text() if isinstance(tail, OutputTail) else ""

    @abstractmethod
    async def write(self, data: bytes) -> None:
        """Writes to the process's stdin."""

    @abstractmethod
    def output(self) -> AsyncGenerator[bytes, None]:
        """The process's stdout, as it arrives; ends when the process ends or the stream
        drops (then :meth:`reattach` may give a fresh one)."""

    async def reattach(self) -> bool:
        """After :meth:`output` ended with the process still running: attaches to its output
        again (what it wrote meanwhile may be lost; the relay asks for it again) and returns
        True, or False where the provider cannot (the runner is then restarted)."""
        return False


class HostRelay:
    """The host end: one broker connection per relayed connection, bytes pumped both ways.

    Frames are numbered and acknowledged (:mod:`rlm.environments.runner.relay` describes the
    protocol); the frames written while the sandbox may not have read them are kept for a
    resend; a corrupt line or a gap is reported in :attr:`problems` and repaired by a resend;
    a stream that drops is re-attached where the provider can. Several frames go in one write.
    """

    def __init__(self, process: RemoteProcess, broker_socket: str) -> None:
        self.process = process
        self.broker_socket = broker_socket
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._pumps: set[asyncio.Task[None]] = set()
        self._state = Sequencer()
        self._room = asyncio.Condition()
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._requests = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        #: what went wrong on the stream (corrupt lines, gaps, re-attachments), oldest first
        self.problems: list[str] = []
        #: how often the output stream dropped and was re-attached
        self.reattachments = 0
        #: set by the first intact frame from the sandbox (a tree's relay announces itself)
        self.ready = asyncio.Event()
        self.task = asyncio.ensure_future(self._from_sandbox())
        self._writer = asyncio.ensure_future(self._write_loop())
        self._acker = asyncio.ensure_future(self._ack_loop())

    # ---- writing ---------------------------------------------------------------------------

    async def _send(self, conn_id: int, kind: bytes, data: bytes = b"") -> None:
        async with self._room:
            await self._room.wait_for(lambda: not self._state.full)
            self._queue(self._state.stamp(conn_id, kind, data))

    def _queue(self, line: bytes) -> None:
        self._outgoing.append(line)
        self._wake.set()

    async def _write_loop(self) -> None:
        """Writes what is queued, several frames per provider write (each may be a round
        trip: one unary call per write on Modal and Prime). A failed write is retried while
        the process lives: the frames are numbered, so a repeat is harmless."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                batch, size = [], 0
                while self._outgoing and size < WRITE_BATCH_BYTES:
                    line = self._outgoing.popleft()
                    batch.append(line)
                    size += len(line)
                try:
                    await self.process.write(b"".join(batch))
                except (SandboxError, OSError) as error:
                    if self.process.exit_code() is not None:
                        return
                    self._report(f"writing to the runner failed ({error}); retrying")
                    self._outgoing.extendleft(reversed(batch))
                    await asyncio.sleep(WRITE_RETRY_SECONDS)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_SECONDS)
            line = self._state.overdue_resend()
            if line is None and self._state.needs_ack:
                line = self._state.control(b"K")
            for frame in (line, self._state.probe()):
                if frame is not None:
                    self._queue(frame)

    def _report(self, problem: str) -> None:
        self.problems.append(problem)
        del self.problems[:-MAX_PROBLEMS]
        logger.warning("relay: %s", problem)

    def _ask_resend(self, force: bool = False) -> None:
        if (request := self._state.resend_request(force)) is not None:
            self._queue(request)

    # ---- reading ---------------------------------------------------------------------------

    async def _from_sandbox(self) -> None:
        try:
            while True:
                pending = b""
                async with contextlib.aclosing(self.process.output()) as output:
                    async for data in output:
                        pending += data
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            await self._on_line(line)
                # A partial line left by a dropped stream is asked for again below.
                if not await self._reattach():
                    return
        finally:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()
            for reply in self._replies.values():
                if not reply.done():
                    reply.set_exception(SandboxDiedError("the relay stream ended"))

    async def _reattach(self) -> bool:
        if self.process.exit_code() is not None:
            return False
        try:
            attached = await self.process.reattach()
        except (SandboxError, OSError) as error:
            self._report(f"re-attaching to the runner's output failed: {error}")
            return False
        if not attached:
            self._report("the runner's output stream dropped and the provider cannot re-attach")
            return False
        self.reattachments += 1
        self._report(f"the runner's output stream dropped; re-attached ({self.reattachments})")
        self._ask_resend(force=True)
        return True

    async def _on_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            frame = self._state.receive(line)
        except (FrameError, FrameGap) as error:
            self._report(f"{error}; asking the sandbox to resend")
            self._ask_resend()
            return
        self.ready.set()
        async with self._room:
            self._room.notify_all()  # acknowledgements may have made room
        if frame is not None:
            await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        if frame.kind == b"R":
            try:
                lines = self._state.replay_from(int(frame.data))
            except (FrameError, ValueError) as error:
                self._report(f"the sandbox asked for a resend that cannot be made: {error}")
                return
            self._outgoing = collections.deque(lines)  # everything queued is among them
            self._wake.set()
            return
        if frame.conn == CONTROL:
            self._on_control(frame.kind, frame.data)
        elif frame.kind == b"O":
            reader, writer = await asyncio.open_unix_connection(self.broker_socket)
            self._writers[frame.conn] = writer
            pump = asyncio.ensure_future(self._to_sandbox(frame.conn, reader))
            self._pumps.add(pump)
            pump.add_done_callback(self._pumps.discard)
        elif frame.kind == b"D":
            open_writer = self._writers.get(frame.conn)
            if open_writer is not None:
                open_writer.write(frame.data)
                await open_writer.drain()
        elif frame.kind == b"C":
            closed_writer = self._writers.pop(frame.conn, None)
            if closed_writer is not None:
                closed_writer.close()

    async def join(self, parts: list[str], path: str, timeout: float) -> None:
        """Has the sandbox end concatenate the uploaded ``parts`` (in order) into ``path`` and
        delete them; raises :class:`SandboxError` when it cannot."""
        request_id = next(self._requests)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[request_id] = reply
        body = {"id": request_id, "op": "join", "parts": parts, "path": path}
        try:
            await self._send(CONTROL, b"J", json.dumps(body).encode())
            try:
                answer = await asyncio.wait_for(asyncio.shield(reply), timeout)
            except TimeoutError:
                raise SandboxError(
                    f"the sandbox did not join the {len(parts)} uploaded parts of {path} within "
                    f"{timeout:.0f} s; its disk may be full or slow"
                ) from None
        finally:
            self._replies.pop(request_id, None)
        if answer.get("error"):
            raise SandboxError(
                f"joining the uploaded parts of {path} in the sandbox failed: {answer['error']}"
            )

    def _on_control(self, kind: bytes, data: bytes) -> None:
        if kind != b"j":
            return
        try:
            answer = json.loads(data)
            reply = self._replies.get(int(answer["id"]))
        except (ValueError, KeyError, TypeError):
            return
        if reply is not None and not reply.done():
            reply.set_result(answer if isinstance(answer, dict) else {})

    async def _to_sandbox(self, conn_id: int, reader: asyncio.StreamReader) -> None:
        try:
            while data := await reader.read(READ_CHUNK):
                await self._send(conn_id, b"D", data)
        except (ConnectionError, SandboxDiedError):
            return
        with contextlib.suppress(Exception):
            await self._send(conn_id, b"C")

    async def aclose(self) -> None:
        tasks = {self.task, self._writer, self._acker, *self._pumps}
        for task in tasks:
            task.cancel()
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        # The cancelled tasks close the provider's streams as they unwind: wait for that.
        await asyncio.wait(tasks, timeout=CLOSE_WAIT_SECONDS)


class RelayedSandboxEnvironment(SandboxEnvironment):
    """Base class of the cloud adapters: the provider hooks are files and exec streams.

    ``child_sandbox="shared"`` (the default): every session of an RLM tree is a runner forked
    in the tree's one sandbox (:class:`~rlm.environments.relaytree.RelayedTree`, a resource of
    the tree), at most ``max_live_runners`` at once (default ``DEFAULT_TREE_RUNNERS``); its
    connection rides the tree's one relay. ``"own"``: a sandbox per session, the runner started
    in it directly with a relay of its own.

    With ``pool_size`` (and/or ``max_sandboxes``) in shared mode, a tree's sandbox comes from
    the broker's warm pool: created, the runner uploaded, its fork server and relay answering
    before the tree asks for it. One tree takes one pooled sandbox (its whole fan-out runs
    there), which is destroyed when the tree closes; the pool refills to ``pool_size`` in the
    background, destroys those waiting longer than ``pool_idle_timeout`` seconds and keeps at
    most ``max_sandboxes`` alive. A waiting sandbox is billed as an idle one
    (docs/providers.md says when that pays). Only sandboxes whose :meth:`sandbox_settings` (and
    interpreter, runner cap and start-up timeout) match are interchangeable.
    """

    #: the interpreter inside the provider's image
    python: str = "python3"
    #: a writable directory inside the sandbox for the runner, its relay socket and context
    #: files (unique per environment, so sandboxes that share a file system never collide)
    sandbox_dir: str = ""
    #: the provider's cap on one uploaded file, in bytes (None: no cap below UPLOAD_PART_BYTES)
    max_file_bytes: int | None = None
    #: how many parts of one file may be uploaded at once
    upload_concurrency: int = UPLOAD_CONCURRENCY
    #: the provider's name in messages
    provider: str = ""
    #: how long a call the provider throttles keeps being tried (see :mod:`.throttling`)
    throttle_policy: RetryPolicy = DEFAULT_POLICY

    def __init__(
        self,
        *,
        child_sandbox: str = CHILD_SANDBOX_SHARED,
        max_live_runners: int | None = None,
        **kwargs: Any,
    ) -> None:
        check_child_sandbox(child_sandbox, max_live_runners)
        if child_sandbox == CHILD_SANDBOX_OWN:
            kwargs["max_live_runners"] = max_live_runners  # counted per sandbox (base.py)
        super().__init__(**kwargs)
        self.child_sandbox = child_sandbox
        self.max_live_runners = max_live_runners or DEFAULT_TREE_RUNNERS
        self.sandbox_dir = self.sandbox_dir or self._new_sandbox_dir()
        self._relay: HostRelay | None = None
        self._files = 0
        #: the tree's shared sandbox this session runs in (``child_sandbox="shared"``)
        self.tree: RelayedTree | None = None
        self._workdir: str | None = None

    # ---- provider hooks --------------------------------------------------------------------

    def sandbox_settings(self) -> dict[str, Any]:
        """The options the sandbox is created with (image or template, resources, timeouts,
        network, account): a tree's sandbox from the warm pool fits only a tree whose settings
        are the same. Credentials go in as a :func:`fingerprint`."""
        return {}

    def _new_sandbox_dir(self) -> str:
        """A fresh directory name for a sandbox's runner files (unique, so that sandboxes that
        share a file system, as the stand-ins do, never collide)."""
        return f"/tmp/rlm-{secrets.token_hex(6)}"

    @abstractmethod
    async def _write_file(self, path: str, data: bytes) -> None:
        """Writes ``data`` to ``path`` inside the sandbox (the provider's file API); it is
        never bigger than :meth:`part_bytes` and should be given ``upload_timeout(len(data))``."""

    @abstractmethod
    async def _exec(self, argv: list[str]) -> RemoteProcess:
        """Starts ``argv`` in the sandbox with stdin and stdout streaming to and from the host."""

    def _throttled(self, error: BaseException) -> Throttled | None:
        """Whether ``error`` is the provider throttling the call (and the wait it asked for);
        each adapter knows how its SDK says so."""
        return None

    async def _retrying(self, action: str, call: Callable[[], Awaitable[T]]) -> T:
        """``await call()``, tried again while the provider throttles it (bounded by
        :attr:`throttle_policy`; then :class:`rlm.errors.SandboxThrottledError`)."""
        return await call_with_retries(
            call,
            self._throttled,
            provider=self.provider or self.name,
            action=action,
            policy=self.throttle_policy,
        )

    # ---- the tree's shared sandbox ---------------------------------------------------------

    def tree_key(self) -> tuple[Hashable, ...]:
        """What makes two trees' sandboxes interchangeable: the provider and its sandbox
        settings, the interpreter, the cap on live runners, the start-up timeout."""
        return (
            "relayed-tree",
            self.name,
            self.python,
            self.max_live_runners,
            self.startup_timeout,
            settings_key(self.sandbox_settings()),
        )

    def sandbox_owner(self) -> RelayedSandboxEnvironment:
        """A session-less copy of this (not started) environment that creates, holds and
        destroys one tree sandbox, in a directory of its own: the provider hooks work on it as
        on a session's own."""
        owner = copy.copy(self)
        owner.sandbox_dir = self._new_sandbox_dir()
        owner.child_sandbox = CHILD_SANDBOX_OWN
        owner.label = "tree"
        owner._session = None
        owner._slots = None
        owner.pool = None
        owner._contexts = []
        owner.tree = None
        return owner

    async def _open_sandbox(self) -> None:
        if self.child_sandbox == CHILD_SANDBOX_OWN:
            await self._create_sandbox()
            return
        from .relaytree import RelayedTree

        key = self.tree_key()
        tree: RelayedTree = self.broker.resource(
            key, lambda: RelayedTree(self.sandbox_owner(), key, self.pool)
        )
        self.tree = tree
        await tree.open()
        self.sandbox_dir = tree.sandbox_dir

    async def _close_sandbox(self) -> None:
        if self.tree is None:
            await self._destroy_sandbox()
        # A tree's sandbox is closed with the tree (its broker scope).

    # ---- files -----------------------------------------------------------------------------

    @classmethod
    def part_bytes(cls) -> int:
        """The size of the parts a big file is uploaded in (under the provider's cap)."""
        return min(UPLOAD_PART_BYTES, cls.max_file_bytes or UPLOAD_PART_BYTES)

    async def _upload(self, path: str, data: bytes) -> None:
        """Puts ``data`` at ``path`` in the sandbox: one upload when it fits in a part, else
        parts uploaded concurrently and joined by the sandbox end of the relay."""
        # A session of a tree's sandbox: the tree's owner holds the provider's handle.
        files = self.tree.owner if self.tree is not None else self
        relay = self.tree.relay if self.tree is not None else self._relay
        ranges = split_sizes(len(data), self.part_bytes())
        if len(ranges) == 1:
            await files._write_file(path, data)
            return
        if relay is None:
            raise SandboxError("the runner is not running: start the environment first")
        view = memoryview(data)
        parts = [f"{path}.part{index}" for index in range(len(ranges))]
        slots = asyncio.Semaphore(max(1, self.upload_concurrency))

        async def put(part: str, start: int, end: int) -> None:
            async with slots:
                await files._write_file(part, bytes(view[start:end]))

        uploads = [
            asyncio.ensure_future(put(part, start, end))
            for part, (start, end) in zip(parts, ranges, strict=True)
        ]
        try:
            await asyncio.gather(*uploads)
        except BaseException:
            for upload in uploads:
                upload.cancel()
            await asyncio.gather(*uploads, return_exceptions=True)
            raise
        await relay.join(parts, path, timeout=upload_timeout(len(data)))

    # ---- the relay -------------------------------------------------------------------------

    def _broker_address(self) -> str:
        return f"unix:{self.sandbox_dir}/relay.sock"

    def _bootstrap(self, bootstrap: Bootstrap) -> Bootstrap:
        if self.tree is not None:
            # A directory of its own (removed when its runner ends), for its files and contexts;
            # the tree's relay serves the socket it dials.
            self._workdir = workdir = self.tree.next_workdir()
            return dataclasses.replace(
                bootstrap,
                workdir=workdir,
                make_workdir=True,
                env={"HOME": workdir, "TMPDIR": workdir},
            )
        return dataclasses.replace(
            bootstrap, relay="stdio", relay_socket=f"{self.sandbox_dir}/relay.sock"
        )

    async def _spawn_runner(self) -> RunnerProcess:
        if self.tree is None:
            raise SandboxError("only a session of a tree's shared sandbox is forked")
        return await self.tree.runner()

    async def _start_runner(self) -> None:
        """The base start; a tree's first session that fails to start in a sandbox fresh from
        the warm pool (ended by the provider while it waited) starts again in another one."""
        from .relaytree import POOL_TAKES

        for take in range(1, POOL_TAKES + 1):
            try:
                await super()._start_runner()
                return
            except SandboxStartError:
                tree = self.tree
                if tree is None or take == POOL_TAKES:
                    raise
                if not await tree.drop_unused_pooled_sandbox():
                    raise
                await tree.open()
                self.sandbox_dir = tree.sandbox_dir

    async def _launch_runner(self, bootstrap: bytes) -> RunnerProcess:
        if self.tree is not None:
            return await super()._launch_runner(bootstrap)
        bundle = f"{self.sandbox_dir}/runner.pyz"
        await self._upload(bundle, runner_bundle())
        process = await self._exec([self.python, "-I", "-u", bundle])
        await process.write(bootstrap)
        assert self.broker.socket_path is not None
        if self._relay is not None:
            await self._relay.aclose()
        self._relay = HostRelay(process, self.broker.socket_path)
        return process

    async def _kill_runner(self) -> None:
        relay, self._relay = self._relay, None
        if relay is not None:
            await relay.aclose()
        await super()._kill_runner()

    async def _send_context(self, name: str, value: Any, aliases: tuple[str, ...]) -> None:
        """Small contexts travel on the stream; big ones as a file through the provider's file
        API (never through the relay or a command line)."""
        encoding, text = _encode_context(value)
        if len(text) <= INLINE_CONTEXT_CHARS:
            await super()._send_context(name, value, aliases)
            return
        from rlm.protos import rlm_sandbox_pb2 as pb

        connection = self._require_connection()
        self._files += 1
        path = f"{self._workdir or self.sandbox_dir}/context-{self._files}.bin"
        data = text.encode("utf-8")
        del text
        await self._upload(path, data)
        del data
        chunk = pb.ContextChunk(name=name, last=True, encoding=encoding, aliases=aliases, path=path)
        await connection.send(pb.HostMessage(context=chunk))
        await self._await_ack(connection, f"context:{name}")
