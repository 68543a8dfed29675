"""The session proxy: the runners of one fork server share its gRPC connections to the broker.

Creating a gRPC channel in a freshly forked process costs about 10 ms of CPU (gRPC's core starts
anew in every child) and a relayed sandbox pays a relayed connection per runner on top. So the
fork server starts this proxy once, as a child of its own (it never forks again, so it may start
gRPC), and each runner it forks speaks to the proxy over a unix socket instead: the same protobuf
messages, unparsed by the proxy, framed as::

    <length u32> <stream u32> <kind u8> <payload>

Runner -> proxy: ``H`` (stream 0, once, first) the broker's address, whether it is relayed, and
the session's token, as JSON; ``O`` opens a call (``<method>\\n<timeout seconds or empty>``);
``M`` one request message; ``E`` the end of the requests; ``C`` cancels the call.
Proxy -> runner: ``M`` one response message; ``S`` the call's end (``<status code> <details>``).

Each runner's calls still carry its own session's token, so the broker's authentication,
admission and limits apply per session exactly as for a runner that dials the broker itself.
A channel carries the calls of at most :data:`RUNNERS_PER_CHANNEL` runners (the broker allows
64 concurrent streams per connection and every runner keeps one open). The proxy reads the
runner's socket only as fast as the broker takes the messages, so a runner cannot make it hold
more than a few messages per call. When the proxy is gone, every call of its runners fails as
UNAVAILABLE, as with a broker that is gone.
"""

from __future__ import annotations

import contextlib
import functools
import json
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc

HEADER = struct.Struct("!IIB")
#: The largest frame the proxy reads from a runner: a message of the broker's 2 MiB limit.
MAX_REQUEST_FRAME_BYTES = 2 * 1024 * 1024
#: The largest frame a runner reads: a message of the host's 64 MiB limit.
MAX_REPLY_FRAME_BYTES = 64 * 1024 * 1024
#: Runners whose calls share one channel (one HTTP/2 connection) to the broker.
RUNNERS_PER_CHANNEL = 16
#: Request messages of one call the proxy holds while the broker has not taken them.
QUEUED_PER_CALL = 4
#: The calls a runner makes, and whether each streams.
METHODS = {
    "Attach": True,
    "CompleteBatch": True,
    "Complete": False,
    "Subcall": False,
    "CallTool": False,
}
SERVICE = "/rlm.v1.Broker/"
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: The end every open call of a runner gets when its connection to the proxy is gone.
GONE = b"14 the session proxy is gone"


def frame(stream: int, kind: bytes, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), stream, kind[0]) + payload


class ProxyCallError(grpc.RpcError):
    """A call through the proxy that ended with a status other than OK (as ``grpc.RpcError``)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _status(payload: bytes) -> ProxyCallError | None:
    code, _, details = payload.decode("utf-8", "replace").partition(" ")
    status = _STATUS_CODES.get(int(code) if code.isdigit() else -1, grpc.StatusCode.UNKNOWN)
    return None if status == grpc.StatusCode.OK else ProxyCallError(status, details)


# ---- the runner's side -------------------------------------------------------------------------


class _Call:
    """The runner's end of one call: the responses the reader thread hands it, in order."""

    def __init__(self, connection: ProxyConnection, stream: int, reply_type: Any) -> None:
        self._connection = connection
        self.stream = stream
        self._reply_type = reply_type
        self.inbox: queue.SimpleQueue[tuple[bytes, bytes]] = queue.SimpleQueue()
        self.ended = False

    def deliver(self, kind: bytes, payload: bytes) -> None:
        """Called by the reader thread with each frame the proxy sent for this call."""
        self.inbox.put((kind, payload))

    def next_reply(self) -> Any:
        """The next response; ``StopIteration`` at an OK end; ``ProxyCallError`` otherwise."""
        if self.ended:
            raise StopIteration
        kind, payload = self.inbox.get()
        if kind == b"M":
            return self._reply_type.FromString(payload)
        self.ended = True
        self._connection.forget(self.stream)
        error = _status(payload)
        if error is not None:
            raise error
        raise StopIteration

    def send_request(self, request: Any | None) -> None:
        """Sends one request (None: the end of the requests) unless the call has ended; raises
        OSError when the proxy is gone."""
        if not self.ended:
            self._connection.send(
                frame(self.stream, b"E")
                if request is None
                else frame(self.stream, b"M", request.SerializeToString())
            )

    def cancel(self) -> None:
        if not self.ended:
            self.ended = True
            self._connection.forget(self.stream)
            self._connection.send(frame(self.stream, b"C"))


class _StreamCall(_Call):
    """A streaming call: iterate it for the responses; its requests are sent by a thread."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self.next_reply()

    def pump(self, requests: Iterable[Any]) -> None:
        try:
            for request in requests:
                if self.ended:
                    return
                self.send_request(request)
            self.send_request(None)
        except OSError:
            pass  # the proxy is gone: the reader ends every call


class _PushedStream(_Call):
    """A streaming call whose responses go to ``on_message`` as they arrive, on the reader
    thread (which must not block), and whose end goes to ``on_end`` (None for OK); requests are
    sent by whoever ``put``s them. The runner's session stream takes no thread of its own."""

    def __init__(
        self,
        connection: ProxyConnection,
        stream: int,
        reply_type: Any,
        on_message: Callable[[Any], None],
        on_end: Callable[[grpc.RpcError | None], None],
    ) -> None:
        super().__init__(connection, stream, reply_type)
        self._on_message = on_message
        self._on_end = on_end

    def deliver(self, kind: bytes, payload: bytes) -> None:
        if self.ended:
            return
        if kind == b"M":
            self._on_message(self._reply_type.FromString(payload))
            return
        self.ended = True
        self._connection.forget(self.stream)
        self._on_end(_status(payload))

    def put(self, request: Any | None) -> None:
        """Sends one request; None ends the requests."""
        with contextlib.suppress(OSError):  # the proxy is gone: the reader ends the call
            self.send_request(request)


@functools.cache
def _reply_types() -> dict[str, Any]:
    from rlm.protos import rlm_sandbox_pb2 as pb

    return {
        "Attach": pb.HostMessage,
        "CompleteBatch": pb.BatchResult,
        "CallTool": pb.ToolReply,
        "Complete": pb.CompleteReply,
        "Subcall": pb.CompleteReply,
    }


class ProxyConnection:
    """One runner's connection to the session proxy, shaped like the broker's gRPC stub: each
    method takes a request (or an iterator of them) and returns the reply (or an iterator)."""

    def __init__(self, path: str, address: str, token: str, *, relayed: bool = False) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._socket.connect(path)
        except OSError:
            self._socket.close()
            raise
        self._send_lock = threading.Lock()  # whole frames, one writer at a time
        self._lock = threading.Lock()  # the calls table (never held while sending)
        self._calls: dict[int, _Call] = {}
        self._next_stream = 1
        self._closed = False
        hello = json.dumps({"address": address, "relayed": relayed, "token": token})
        self.send(frame(0, b"H", hello.encode()))
        threading.Thread(target=self._read, daemon=True, name="rlm-proxy-reader").start()

    def send(self, data: bytes) -> None:
        with self._send_lock:
            self._socket.sendall(data)

    def forget(self, stream: int) -> None:
        with self._lock:
            self._calls.pop(stream, None)

    def _open(self, method: str, call_type: Callable[..., _Call]) -> _Call:
        reply_type = _reply_types()[method]
        with self._lock:
            stream = self._next_stream
            self._next_stream += 1
            call = call_type(self, stream, reply_type)
            closed = self._closed
            if not closed:
                self._calls[stream] = call
        if closed:  # outside the lock: delivering may call back into the runner
            call.deliver(b"S", GONE)
        return call

    def _opening(self, call: _Call, method: str, timeout: float | None) -> bytes:
        return frame(call.stream, b"O", f"{method}\n{timeout if timeout else ''}".encode())

    def _unary(self, method: str, request: Any, timeout: float | None) -> Any:
        call = self._open(method, _Call)
        with contextlib.suppress(OSError):  # the proxy is gone: the reader ends the call
            self.send(
                self._opening(call, method, timeout)
                + frame(call.stream, b"M", request.SerializeToString())
                + frame(call.stream, b"E")
            )
        try:
            reply = call.next_reply()
            with contextlib.suppress(StopIteration):
                call.next_reply()  # the status that follows the reply
        except StopIteration:
            raise ProxyCallError(
                grpc.StatusCode.INTERNAL, "the call ended without a reply"
            ) from None
        finally:
            call.cancel()  # a no-op once ended; tells the proxy when the cell was interrupted
        return reply

    def _stream(self, method: str, requests: Iterable[Any], timeout: float | None) -> Any:
        call = self._open(method, _StreamCall)
        with contextlib.suppress(OSError):
            self.send(self._opening(call, method, timeout))
        assert isinstance(call, _StreamCall)
        threading.Thread(target=call.pump, args=(requests,), daemon=True).start()
        return call

    def attach(
        self,
        on_message: Callable[[Any], None],
        on_end: Callable[[grpc.RpcError | None], None],
    ) -> _PushedStream:
        """Opens the session's Attach stream: the host's messages go to ``on_message`` and its
        end to ``on_end`` (both on the reader thread); ``put`` on the result sends."""
        call = self._open(
            "Attach", functools.partial(_PushedStream, on_message=on_message, on_end=on_end)
        )
        with contextlib.suppress(OSError):
            self.send(self._opening(call, "Attach", None))
        assert isinstance(call, _PushedStream)
        return call

    def CompleteBatch(self, requests: Iterable[Any], timeout: float | None = None) -> Any:
        return self._stream("CompleteBatch", requests, timeout)

    def Complete(self, request: Any, timeout: float | None = None) -> Any:
        return self._unary("Complete", request, timeout)

    def Subcall(self, request: Any, timeout: float | None = None) -> Any:
        return self._unary("Subcall", request, timeout)

    def CallTool(self, request: Any, timeout: float | None = None) -> Any:
        return self._unary("CallTool", request, timeout)

    def _read(self) -> None:
        reader = self._socket.makefile("rb")
        try:
            while True:
                header = reader.read(HEADER.size)
                if len(header) < HEADER.size:
                    return
                length, stream, kind = HEADER.unpack(header)
                if length > MAX_REPLY_FRAME_BYTES:
                    return
                payload = reader.read(length)
                if len(payload) < length:
                    return
                with self._lock:
                    call = self._calls.get(stream)
                if call is not None:
                    call.deliver(bytes([kind]), payload)
        except OSError:
            return
        finally:
            with self._lock:
                self._closed = True
                calls, self._calls = list(self._calls.values()), {}
            for call in calls:
                call.deliver(b"S", GONE)


# ---- the proxy -----------------------------------------------------------------------------


def serve(listener: socket.socket) -> int:
    """Serves the runners that connect to ``listener`` until the process is killed (its fork
    server's end kills it)."""
    import asyncio

    return asyncio.run(_Proxy().serve(listener))


class _Proxy:
    def __init__(self) -> None:
        #: (address, relayed) -> the channels to it
        self._channels: dict[tuple[str, bool], list[_SharedChannel]] = {}
        self._closing: set[Any] = set()  # channels being closed (their tasks, kept alive)

    async def serve(self, listener: socket.socket) -> int:
        import asyncio

        listener.setblocking(False)
        server = await asyncio.start_unix_server(self._runner, sock=listener, limit=1 << 16)
        async with server:
            await server.serve_forever()
        return 0

    def _channel(self, address: str, relayed: bool) -> _SharedChannel:
        """A channel to ``address`` with room for one more runner (a new one when all are full)."""
        from grpc import aio

        from rlm.environments.runner.runner import channel_options

        key = (address, relayed)
        shared = self._channels.setdefault(key, [])
        for channel in shared:
            if channel.runners < RUNNERS_PER_CHANNEL:
                channel.runners += 1
                return channel
        options = [
            *channel_options(relayed),
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own
        ]
        channel = _SharedChannel(key, aio.insecure_channel(address, options=options))
        shared.append(channel)
        return channel

    async def _runner(self, reader: Any, writer: Any) -> None:
        import asyncio

        calls: dict[int, _ProxiedCall] = {}
        channel: _SharedChannel | None = None
        try:
            kind, stream, payload = await _read_frame(reader)
            if kind != b"H":
                return
            hello = json.loads(payload)
            channel = self._channel(str(hello["address"]), bool(hello.get("relayed")))
            metadata = (("authorization", f"Bearer {hello['token']}"),)
            del hello
            while True:
                kind, stream, payload = await _read_frame(reader)
                call = calls.get(stream)
                if kind == b"O" and call is None:
                    method, _, timeout = payload.decode().partition("\n")
                    call = _ProxiedCall(channel, method, metadata, timeout, stream, writer)
                    calls[stream] = call
                    call.task.add_done_callback(functools.partial(_forget, calls, stream))
                elif call is None:
                    continue  # a call that has ended already
                elif kind == b"M":
                    await call.requests.put(payload)
                elif kind == b"E":
                    await call.requests.put(None)
                elif kind == b"C":
                    call.task.cancel()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, KeyError, TypeError):
            pass  # the runner is gone, or is not speaking this protocol: drop its connection
        finally:
            for call in list(calls.values()):
                call.task.cancel()
            if channel is not None:
                self._release(channel)
            writer.close()

    def _release(self, channel: _SharedChannel) -> None:
        """One runner fewer on ``channel``; a channel no runner uses is closed (so the proxy
        holds no more channels than runners, whatever addresses its connections name)."""
        import asyncio

        channel.runners -= 1
        if channel.runners == 0:
            shared = self._channels[channel.key]
            shared.remove(channel)
            if not shared:
                del self._channels[channel.key]
            closing = asyncio.ensure_future(channel.channel.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)


def _forget(calls: dict[int, _ProxiedCall], stream: int, _task: object) -> None:
    calls.pop(stream, None)


async def _read_frame(reader: Any) -> tuple[bytes, int, bytes]:
    length, stream, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
    if length > MAX_REQUEST_FRAME_BYTES:
        raise ValueError("frame too long")
    return bytes([kind]), stream, await reader.readexactly(length)


class _SharedChannel:
    """One channel (one connection) to the broker, the runners on it, and its methods."""

    def __init__(self, key: tuple[str, bool], channel: Any) -> None:
        self.key = key  # (address, relayed)
        self.channel = channel
        self.runners = 1
        self._methods: dict[str, Any] = {}

    def method(self, name: str) -> Any:
        """The channel's callable for ``name`` (made once): bytes in, bytes out."""
        made = self._methods.get(name)
        if made is None:
            kind = self.channel.stream_stream if METHODS[name] else self.channel.unary_unary
            made = self._methods[name] = kind(SERVICE + name)
        return made


class _ProxiedCall:
    """One runner call, made on the shared channel with the runner's own token."""

    def __init__(
        self, channel: Any, method: str, metadata: Any, timeout: str, stream: int, writer: Any
    ) -> None:
        import asyncio

        self.requests: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUED_PER_CALL)
        self._stream = stream
        self._writer = writer
        self.task = asyncio.ensure_future(self._run(channel, method, metadata, timeout))

    async def _run(self, channel: Any, method: str, metadata: Any, timeout: str) -> None:
        """Makes the call, forwards its replies, and ends with one status frame (after a
        unary call's reply, in the same write)."""
        from grpc import aio

        last = b""  # a unary call's reply frame, written with the status
        status = b"0 "
        call: Any = None
        try:
            seconds = float(timeout) if timeout else None
            if method not in METHODS:
                status = b"%d no method %r" % (grpc.StatusCode.UNIMPLEMENTED.value[0], method)
            elif METHODS[method]:
                call = channel.method(method)(metadata=metadata, timeout=seconds)
                writing = _forward_requests(self.requests, call)
                try:
                    async for reply in call:
                        self._writer.write(frame(self._stream, b"M", reply))
                        await self._writer.drain()
                finally:
                    writing.cancel()
            else:
                request = await self.requests.get()
                if request is None:
                    raise ValueError("a call without its request")
                call = channel.method(method)(request, metadata=metadata, timeout=seconds)
                last = frame(self._stream, b"M", await call)
        except aio.AioRpcError as error:
            status = f"{error.code().value[0]} {error.details() or ''}".encode()
        except ValueError as error:
            status = f"{grpc.StatusCode.INVALID_ARGUMENT.value[0]} {error}".encode()
        except ConnectionError:
            return  # the runner is gone
        finally:
            if call is not None:
                call.cancel()  # a no-op once the call is done
        with contextlib.suppress(ConnectionError):
            self._writer.write(last + frame(self._stream, b"S", status))
            await self._writer.drain()


def _forward_requests(requests: Any, call: Any) -> Any:
    import asyncio

    async def forward() -> None:
        try:
            # Only once the broker has admitted the stream (its initial metadata, sent when
            # the token is checked; see broker/server.py): a request written while a refusal
            # is on its way would turn the call's status into gRPC's own INTERNAL error.
            await call.initial_metadata()
            if call.done():
                return
            while (request := await requests.get()) is not None:
                await call.write(request)
            await call.done_writing()
        except Exception:
            return

    return asyncio.ensure_future(forward())
