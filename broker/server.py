"""The host-side gRPC server that runners dial.

One server per RLM tree, on a unix socket in a private directory (or 127.0.0.1 when asked), or one
server for many trees (:meth:`BrokerServer.scope`: each tree gets a :class:`BrokerScope` of it).
Every call must carry a session token; a token only reaches its own session's handler, so a
sandbox can only spend its own session's budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from rlm.errors import (
    BrokerError,
    ConfigurationError,
    LimitExceededError,
    LMError,
    SandboxDiedError,
)
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.protos import rlm_sandbox_pb2_grpc as pb_grpc

MIB = 1024 * 1024
MAX_MESSAGE_BYTES = 64 * MIB
"""The largest message the host sends (a context chunk, a tool's value) and the largest whole
request or runner message it reassembles from parts."""
MAX_RECEIVE_MESSAGE_BYTES = 2 * MIB
"""The largest single message the broker reads from a runner. gRPC reads a message whole before
a handler can look at it, so this, not the bytes-in-flight cap, bounds what an open call makes the
host buffer unasked; bigger requests and results travel in parts (see ``CompleteBatch``)."""
MAX_BYTES_IN_FLIGHT = 256 * MIB
"""Call-back requests (prompts, tool arguments) the host holds at once for one tree; a call that
would pass it is refused at once (the sandbox's ``llm_query`` gets an "Error: ..." string), so
sandbox code cannot make the host hold an unbounded amount of memory. A request sent in parts is
admitted on its declared size, before any part is read."""
MAX_CONCURRENT_STREAMS = 64
"""Calls one runner connection may have open at once; more wait on the runner's side. With
``MAX_RECEIVE_MESSAGE_BYTES`` this bounds the unadmitted bytes one connection can make the host
buffer: 64 x 2 MiB = 128 MiB."""
MAX_BATCH_ITEMS_HELD = 256
"""Items of one ``CompleteBatch`` stream the broker holds at once (running, or finished and not
yet written back); it reads the next item only when one is written, so a huge batch waits in the
runner (gRPC flow control), not in host memory, and a runner that stops reading stalls itself."""


MAX_RUNNER_MESSAGES_QUEUED = 4
"""Messages of one runner's ``Attach`` stream the host holds unread; the broker reads the next
only when the host has taken one, so a runner that floods results stalls itself (gRPC flow
control) instead of filling host memory."""
MAX_RUNNER_BYTES_QUEUED = MAX_MESSAGE_BYTES
"""The same in bytes: a message that would pass it waits until the queue is empty (so one
message of up to ``MAX_MESSAGE_BYTES`` always gets through)."""


class PartsError(BrokerError):
    """A runner sent parts that do not add up to the message they announced (a broken or hostile
    runner); the stream is failed with INVALID_ARGUMENT."""


class SessionHandler(Protocol):
    """What a session's call-backs do; implemented by the RLM loop for each run."""

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply: ...

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply: ...

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply: ...


try:  # what gRPC's core raises for a write on a stream whose connection has just gone
    from grpc._cython.cygrpc import BaseError as _GRPC_CALL_ERRORS
except ImportError:  # pragma: no cover - another gRPC build
    _GRPC_CALL_ERRORS = RuntimeError


class RunnerConnection:
    """The host's end of one runner's ``Attach`` stream."""

    def __init__(self, context: grpc.aio.ServicerContext, hello: pb.Hello) -> None:
        self.hello = hello
        self._context = context
        self._write_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[pb.RunnerMessage | None] = asyncio.Queue()
        self._room = asyncio.Condition()
        self._queued_bytes = 0
        self.closed = asyncio.Event()

    async def send(self, message: pb.HostMessage) -> None:
        if self.closed.is_set():
            raise SandboxDiedError("the runner is gone (its stream to the broker closed)")
        async with self._write_lock:
            try:
                await self._context.write(message)
            except (
                grpc.aio.AioRpcError,
                RuntimeError,
                asyncio.InvalidStateError,
                _GRPC_CALL_ERRORS,  # the connection went away mid-write (gRPC's core says so)
            ) as error:
                self._close()
                raise SandboxDiedError(f"could not reach the runner: {error}") from error

    async def receive(self) -> pb.RunnerMessage:
        """The next message from the runner; SandboxDiedError once the stream has ended."""
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)
            raise SandboxDiedError("the runner's stream to the broker closed")
        async with self._room:
            self._queued_bytes -= message.ByteSize()
            self._room.notify_all()
        return message

    async def _deliver(self, message: pb.RunnerMessage) -> None:
        """Queues ``message`` for :meth:`receive`, first waiting until the queue has room."""
        size = message.ByteSize()

        def has_room() -> bool:
            if self._inbox.empty():
                return True
            return (
                self._inbox.qsize() < MAX_RUNNER_MESSAGES_QUEUED
                and self._queued_bytes + size <= MAX_RUNNER_BYTES_QUEUED
            )

        async with self._room:
            await self._room.wait_for(has_room)
            self._queued_bytes += size
            self._inbox.put_nowait(message)

    def _close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._inbox.put_nowait(None)


@dataclass
class Session:
    """One sandbox's standing with the broker."""

    token: str
    handler: SessionHandler
    label: str
    _attached: asyncio.Future[RunnerConnection] = field(init=False)

    def __post_init__(self) -> None:
        self._attached = asyncio.get_running_loop().create_future()

    def expect_runner(self) -> None:
        """Arms the session for a (re)started runner."""
        if self._attached.done():
            self._attached = asyncio.get_running_loop().create_future()

    async def wait_runner(self) -> RunnerConnection:
        """The (re)started runner's connection once it attaches; cancelling the wait leaves the
        session armed."""
        return await asyncio.shield(self._attached)


async def _read_parts(
    context: grpc.aio.ServicerContext, total: int, data: bytearray, part_of: Callable[[Any], bytes]
) -> bytearray:
    """Reads parts (``part_of`` picks a message's part, raising PartsError for anything else)
    into ``data`` until it holds ``total`` bytes; one part at a time is read, never more."""
    while len(data) < total:
        message = await context.read()
        if message is grpc.aio.EOF:
            raise PartsError(f"the stream ended after {len(data)} of {total} announced bytes")
        data += part_of(message)
        if len(data) > total:
            raise PartsError(f"the parts carry more than the {total} bytes announced")
    return data


async def _whole_runner_message(
    context: grpc.aio.ServicerContext, first: pb.MessagePart
) -> pb.RunnerMessage:
    """The RunnerMessage whose first part is ``first``, read from the following parts."""
    total = first.total_bytes
    if not 0 < total <= MAX_MESSAGE_BYTES:
        raise PartsError(f"a message in parts must announce 1 to {MAX_MESSAGE_BYTES} bytes")

    def part_of(message: pb.RunnerMessage) -> bytes:
        if message.WhichOneof("kind") != "part" or message.part.total_bytes:
            raise PartsError("a message in parts was interrupted by another message")
        return message.part.data

    data = await _read_parts(context, total, bytearray(first.data), part_of)
    whole = _parse(pb.RunnerMessage, data)
    if whole.WhichOneof("kind") in (None, "part"):
        raise PartsError("a message in parts must hold a hello, ack or result")
    return whole


def _parse(message_type: Any, data: bytearray) -> Any:
    try:
        return message_type.FromString(bytes(data))
    except DecodeError as error:
        raise PartsError(f"the parts do not hold a {message_type.__name__}: {error}") from None


def _status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, LimitExceededError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, f"{type(error).__name__}: {error}"
    if isinstance(error, ConfigurationError):
        return grpc.StatusCode.FAILED_PRECONDITION, f"{type(error).__name__}: {error}"
    if isinstance(error, LMError):
        return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"
    if isinstance(error, asyncio.TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the call timed out"
    return grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"


class _Servicer(pb_grpc.BrokerServicer):
    def __init__(self, server: BrokerServer) -> None:
        self._server = server

    @staticmethod
    async def _admitted(context: grpc.aio.ServicerContext) -> None:
        """Sends an accepted stream its (empty) initial metadata once its token is checked. The
        session proxy waits for it before it forwards the requests: a request written while a
        refusal is on its way makes gRPC's client report the call as INTERNAL ("Internal error
        from Core") instead of with the refusal's own status."""
        await context.send_initial_metadata(())

    async def _session(self, context: grpc.aio.ServicerContext) -> Session:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization" and value.startswith("Bearer "):
                session = self._server.sessions.get(value[len("Bearer ") :])
                if session is not None:
                    return session
        await context.abort(
            grpc.StatusCode.UNAUTHENTICATED, "missing, unknown or expired session token"
        )
        raise AssertionError("unreachable")  # abort() raises

    async def Attach(self, request_iterator, context):
        session = await self._session(context)
        if session._attached.done():  # checked before reading anything from this stream
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a runner is already attached")
        await self._admitted(context)
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        if session._attached.done():
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a runner is already attached")
        connection = RunnerConnection(context, first.hello)
        session._attached.set_result(connection)
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                if message.WhichOneof("kind") == "part":
                    message = await _whole_runner_message(context, message.part)
                await connection._deliver(message)
        except PartsError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            connection._close()

    def _refusal(self, size: int = 0) -> str:
        if size > MAX_MESSAGE_BYTES:
            return (
                f"a call-back request of {size / MIB:.0f} MiB is over the "
                f"{MAX_MESSAGE_BYTES / MIB:.0f} MiB limit for one request; send a smaller one"
            )
        return (
            f"the host already holds {self._server.bytes_in_flight / MIB:.0f} MiB of "
            f"sub-call requests (limit {self._server.max_bytes_in_flight / MIB:.0f} MiB); "
            "make fewer or smaller calls at once"
        )

    async def _answer(
        self,
        context: grpc.aio.ServicerContext,
        request: Any,
        call: Callable[[SessionHandler], Awaitable[object]],
    ):
        session = await self._session(context)
        size = request.ByteSize()
        if not self._server.admit(size):
            await context.abort(grpc.StatusCode.ABORTED, self._refusal())
        try:
            return await call(session.handler)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            code, details = _status_for(error)
            await context.abort(code, details)
        finally:
            self._server.release(size)

    async def Complete(self, request, context):
        return await self._answer(context, request, lambda h: h.complete(request))

    async def Subcall(self, request, context):
        return await self._answer(context, request, lambda h: h.subcall(request))

    async def CallTool(self, request, context):
        return await self._answer(context, request, lambda h: h.call_tool(request))

    async def CompleteBatch(self, request_iterator, context):
        session = await self._session(context)
        await self._admitted(context)
        batch = _Batch(self._server, session.handler, self._refusal)
        await batch.serve(context)


class _Batch:
    """One ``CompleteBatch`` stream: reads items, runs each as its own task (the same handler
    calls, limits and budget reservations as the unary RPCs), writes results as they finish.

    Each item is admitted against the bytes-in-flight cap when it is read, exactly as a unary
    call is; a refused item gets its ABORTED result at once and the batch goes on.
    """

    def __init__(
        self, server: BrokerServer, handler: SessionHandler, refusal: Callable[[int], str]
    ) -> None:
        self._server = server
        self._handler = handler
        self._refusal = refusal
        self._held = asyncio.Semaphore(MAX_BATCH_ITEMS_HELD)
        self._results: asyncio.Queue[pb.BatchResult | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._read = 0

    async def serve(self, context: grpc.aio.ServicerContext) -> None:
        reader = asyncio.create_task(self._read_items(context))
        written = 0
        reading = True
        try:
            while reading or written < self._read:
                result = await self._results.get()
                if result is None:  # the reader is done
                    reading = False
                    try:
                        await reader  # re-raises what broke the request stream
                    except PartsError as error:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                    continue
                await context.write(result)
                written += 1
                self._held.release()
        finally:
            reader.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(reader, *self._tasks, return_exceptions=True)

    async def _read_items(self, context: grpc.aio.ServicerContext) -> None:
        try:
            call = None  # an item already read (the one that ended a refused item's parts)
            while True:
                await self._held.acquire()
                if call is None:
                    call = await context.read()
                if call is grpc.aio.EOF:
                    return
                index, self._read = self._read, self._read + 1
                if call.WhichOneof("kind") == "part":
                    raise PartsError("a part came before the size of its item (parts_total_bytes)")
                parted = call.WhichOneof("kind") == "parts_total_bytes"
                size = call.parts_total_bytes if parted else call.ByteSize()
                if not (size <= MAX_MESSAGE_BYTES and self._server.admit(size)):
                    code = grpc.StatusCode.ABORTED.value[0]
                    self._results.put_nowait(
                        pb.BatchResult(index=index, code=code, details=self._refusal(size))
                    )
                    call = await self._skip_parts(context, size) if parted else None
                    continue
                try:
                    if parted:
                        call = await self._whole_item(context, size)
                except BaseException:
                    self._server.release(size)
                    raise
                task = asyncio.create_task(self._run(index, call, size))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                call = None
        finally:
            self._results.put_nowait(None)

    @staticmethod
    def _part_of(message: pb.BatchCall) -> bytes:
        if message.WhichOneof("kind") != "part":
            raise PartsError("an item in parts was interrupted by another item")
        return message.part

    async def _whole_item(self, context: grpc.aio.ServicerContext, size: int) -> pb.BatchCall:
        """The item announced with ``size`` bytes, read from its parts (already admitted)."""
        data = await _read_parts(context, size, bytearray(), self._part_of)
        call = _parse(pb.BatchCall, data)
        if call.WhichOneof("kind") not in ("complete", "subcall", "tool"):
            raise PartsError("an item in parts must hold a complete, subcall or tool call")
        return call

    async def _skip_parts(self, context: grpc.aio.ServicerContext, size: int) -> Any:
        """Reads and drops the parts of a refused item, one at a time; the runner may stop
        sending them once it has the refusal. Returns the next item (or EOF)."""
        skipped = 0
        while True:
            message = await context.read()
            if message is grpc.aio.EOF or message.WhichOneof("kind") != "part":
                return message
            skipped += len(message.part)
            if skipped > size:
                raise PartsError(f"the parts carry more than the {size} bytes announced")

    async def _run(self, index: int, call: pb.BatchCall, size: int) -> None:
        try:
            result = await self._outcome(call)
        finally:
            self._server.release(size)
        result.index = index
        self._results.put_nowait(result)

    async def _outcome(self, call: pb.BatchCall) -> pb.BatchResult:
        kind = call.WhichOneof("kind")
        try:
            if kind == "complete":
                reply = await self._handler.complete(call.complete)
            elif kind == "subcall":
                reply = await self._handler.subcall(call.subcall)
            elif kind == "tool":
                return pb.BatchResult(tool_reply=await self._handler.call_tool(call.tool))
            else:
                code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                details = "a batch item must be complete, subcall, tool or parts"
                return pb.BatchResult(code=code, details=details)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            code, details = _status_for(error)
            return pb.BatchResult(code=code.value[0], details=details)
        return pb.BatchResult(reply=reply)


class Broker(Protocol):
    """What a sandbox needs of its broker: a :class:`BrokerServer` or a tree's
    :class:`BrokerScope` of a shared one."""

    @property
    def address(self) -> str: ...

    @property
    def socket_dir(self) -> str | None: ...

    @property
    def socket_path(self) -> str | None: ...

    def open_session(self, handler: SessionHandler, label: str) -> Session: ...

    def close_session(self, session: Session) -> None: ...

    def resource(self, key: object, factory: Callable[[], Any]) -> Any: ...

    def shared_resource(self, key: object, factory: Callable[[], Any]) -> Any: ...


class BrokerServer:
    """A grpc.aio server bound to a private unix socket (default) or to 127.0.0.1."""

    close_order = 100  # closed after the sandboxes that use it

    def __init__(self, *, transport: str = "unix", max_bytes_in_flight: int | None = None) -> None:
        if transport not in ("unix", "tcp"):
            raise ConfigurationError("broker transport must be 'unix' or 'tcp'")
        self.transport = transport
        self.max_bytes_in_flight = max_bytes_in_flight or MAX_BYTES_IN_FLIGHT
        self.bytes_in_flight = 0
        self.sessions: dict[str, Session] = {}
        self.socket_dir: str | None = None
        self.address: str = ""
        self._server: grpc.aio.Server | None = None
        self._resources: dict[object, Any] = {}

    def resource(self, key: object, factory: Callable[[], Any]) -> Any:
        """A resource shared by the sandboxes of this tree (e.g. a docker tree's container),
        created on first use and closed (``aclose``) with the broker."""
        if key not in self._resources:
            self._resources[key] = factory()
        return self._resources[key]

    def shared_resource(self, key: object, factory: Callable[[], Any]) -> Any:
        """A resource shared by every tree on this server (e.g. a warm pool), closed with it."""
        return self.resource(key, factory)

    def shared_resources(self) -> list[Any]:
        """The resources made so far (warm pools...)."""
        return list(self._resources.values())

    def scope(self) -> BrokerScope:
        """A view of this server for one more tree: its own sessions and resources, the
        server's shared resources and limits."""
        return BrokerScope(self)

    def admit(self, size: int) -> bool:
        """Counts a request of ``size`` bytes as held, unless that would pass the cap."""
        if self.bytes_in_flight + size > self.max_bytes_in_flight:
            return False
        self.bytes_in_flight += size
        return True

    def release(self, size: int) -> None:
        self.bytes_in_flight -= size

    @property
    def socket_path(self) -> str | None:
        return os.path.join(self.socket_dir, "broker.sock") if self.socket_dir else None

    async def start(self) -> None:
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ]
        )
        pb_grpc.add_BrokerServicer_to_server(_Servicer(self), server)
        if self.transport == "unix":
            self.socket_dir = tempfile.mkdtemp(prefix="rlm-")
            server.add_insecure_port(f"unix:{self.socket_path}")
            self.address = f"unix:{self.socket_path}"
        else:
            port = server.add_insecure_port("127.0.0.1:0")
            self.address = f"127.0.0.1:{port}"
        await server.start()
        self._server = server

    def open_session(self, handler: SessionHandler, label: str) -> Session:
        """A new session with a fresh random token."""
        if self._server is None:
            raise BrokerError("the broker is not running")
        session = Session(token=secrets.token_urlsafe(32), handler=handler, label=label)
        self.sessions[session.token] = session
        return session

    def close_session(self, session: Session) -> None:
        self.sessions.pop(session.token, None)

    async def aclose_resources(self) -> None:
        """Closes the shared resources (warm pools...) of this tree."""
        resources, self._resources = list(self._resources.values()), {}
        for resource in resources:
            with contextlib.suppress(Exception):
                await resource.aclose()

    async def aclose(self, grace: float = 1.0) -> None:
        await self.aclose_resources()
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
        self.sessions.clear()
        if self.socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            self.socket_dir = None


class BrokerScope:
    """One RLM tree on a shared :class:`BrokerServer`. Its sessions are the server's (each with
    its own token, reaching only its own handler); :meth:`resource` is the tree's own, closed
    with the scope, while :meth:`shared_resource` (warm pools) is the server's. Closing the
    scope leaves the server running."""

    close_order = 90  # at exit: after the tree's sandboxes, before the server

    def __init__(self, server: BrokerServer) -> None:
        self.server = server
        self._sessions: dict[str, Session] = {}
        self._resources: dict[object, Any] = {}
        self._closed = False

    @property
    def address(self) -> str:
        return self.server.address

    @property
    def socket_dir(self) -> str | None:
        return self.server.socket_dir

    @property
    def socket_path(self) -> str | None:
        return self.server.socket_path

    def open_session(self, handler: SessionHandler, label: str) -> Session:
        if self._closed:
            raise BrokerError("this tree's broker scope is closed")
        session = self.server.open_session(handler, label)
        self._sessions[session.token] = session
        return session

    def close_session(self, session: Session) -> None:
        self._sessions.pop(session.token, None)
        self.server.close_session(session)

    def resource(self, key: object, factory: Callable[[], Any]) -> Any:
        """A resource of this tree only, closed with the scope."""
        if self._closed:
            raise BrokerError("this tree's broker scope is closed")
        if key not in self._resources:
            self._resources[key] = factory()
        return self._resources[key]

    def shared_resource(self, key: object, factory: Callable[[], Any]) -> Any:
        return self.server.shared_resource(key, factory)

    async def aclose(self) -> None:
        """Closes this tree's resources and ends its sessions; the server runs on."""
        self._closed = True
        resources, self._resources = list(self._resources.values()), {}
        for resource in resources:
            with contextlib.suppress(Exception):
                await resource.aclose()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            self.server.close_session(session)
