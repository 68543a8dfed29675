"""The host-side gRPC server that runners dial.

One server per RLM tree, on a unix socket in a private directory (or 127.0.0.1 when asked). Every
call must carry a session token; a token only reaches its own session's handler, so a sandbox can
only spend its own session's budget.
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
"""The largest message either side accepts (a sub-call prompt, a context chunk, a result)."""
MAX_BYTES_IN_FLIGHT = 256 * MIB
"""Call-back requests (prompts, tool arguments) the host holds at once for one tree; a call that
would pass it is refused at once (the sandbox's ``llm_query`` gets an "Error: ..." string), so
sandbox code cannot make the host hold an unbounded amount of memory."""
MAX_CONCURRENT_STREAMS = 256
"""Calls one runner connection may have open at once; more wait on the runner's side."""
MAX_BATCH_ITEMS_HELD = MAX_CONCURRENT_STREAMS
"""Items of one ``CompleteBatch`` stream the broker holds at once (running, or finished and not
yet written back); it reads the next item only when one is written, so a huge batch waits in the
runner (gRPC flow control), not in host memory, and a runner that stops reading stalls itself."""


class SessionHandler(Protocol):
    """What a session's call-backs do; implemented by the RLM loop for each run."""

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply: ...

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply: ...

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply: ...


class RunnerConnection:
    """The host's end of one runner's ``Attach`` stream."""

    def __init__(self, context: grpc.aio.ServicerContext, hello: pb.Hello) -> None:
        self.hello = hello
        self._context = context
        self._write_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[pb.RunnerMessage | None] = asyncio.Queue()
        self.closed = asyncio.Event()

    async def send(self, message: pb.HostMessage) -> None:
        if self.closed.is_set():
            raise SandboxDiedError("the runner is gone (its stream to the broker closed)")
        async with self._write_lock:
            try:
                await self._context.write(message)
            except (grpc.aio.AioRpcError, RuntimeError, asyncio.InvalidStateError) as error:
                self._close()
                raise SandboxDiedError(f"could not reach the runner: {error}") from error

    async def receive(self) -> pb.RunnerMessage:
        """The next message from the runner; SandboxDiedError once the stream has ended."""
        message = await self._inbox.get()
        if message is None:
            self._inbox.put_nowait(None)
            raise SandboxDiedError("the runner's stream to the broker closed")
        return message

    def _deliver(self, message: pb.RunnerMessage | None) -> None:
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

    async def wait_runner(self, timeout: float) -> RunnerConnection:
        return await asyncio.wait_for(asyncio.shield(self._attached), timeout)


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
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        connection = RunnerConnection(context, first.hello)
        if session._attached.done():
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, "a runner is already attached")
        session._attached.set_result(connection)
        try:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    break
                connection._deliver(message)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            connection._close()

    def _refusal(self) -> str:
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
        batch = _Batch(self._server, session.handler, self._refusal)
        await batch.serve(context)


class _Batch:
    """One ``CompleteBatch`` stream: reads items, runs each as its own task (the same handler
    calls, limits and budget reservations as the unary RPCs), writes results as they finish.

    Each item is admitted against the bytes-in-flight cap when it is read, exactly as a unary
    call is; a refused item gets its ABORTED result at once and the batch goes on.
    """

    def __init__(
        self, server: BrokerServer, handler: SessionHandler, refusal: Callable[[], str]
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
                    await reader  # re-raises what broke the request stream
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
            while True:
                await self._held.acquire()
                call = await context.read()
                if call is grpc.aio.EOF:
                    return
                index, self._read = self._read, self._read + 1
                size = call.ByteSize()
                if not self._server.admit(size):
                    code = grpc.StatusCode.ABORTED.value[0]
                    self._results.put_nowait(
                        pb.BatchResult(index=index, code=code, details=self._refusal())
                    )
                    continue
                task = asyncio.create_task(self._run(index, call, size))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._results.put_nowait(None)

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
            else:
                code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
                return pb.BatchResult(code=code, details="a batch item must be complete or subcall")
        except asyncio.CancelledError:
            raise
        except Exception as error:
            code, details = _status_for(error)
            return pb.BatchResult(code=code.value[0], details=details)
        return pb.BatchResult(reply=reply)


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
        """A resource shared by the sandboxes of this tree (e.g. a warm pool), created on first
        use and closed (``aclose``) with the broker."""
        if key not in self._resources:
            self._resources[key] = factory()
        return self._resources[key]

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
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
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
