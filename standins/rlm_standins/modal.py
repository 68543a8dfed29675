"""A wire-level stand-in of Modal: the real ``modal`` SDK talks gRPC to it as to Modal itself.

Like moto or LocalStack, it speaks the provider's own protocol on loopback, so that the adapter is
exercised through the unmodified SDK (``MODAL_SERVER_URL=http://127.0.0.1:<port>``). One grpclib
server serves the two services the SDK uses, subclassing the abstract servers that ship with the
SDK (``modal_proto.api_grpc.ModalClientBase`` and
``modal_proto.task_command_router_grpc.TaskCommandRouterBase``):

* the **control plane** (``modal.client.ModalClient``): ``ClientHello``, ``AuthTokenGet`` (a
  short-lived JWT), ``EnvironmentGetOrCreate``, ``AppGetOrCreate``, ``ImageGetOrCreate`` (every
  image definition is recorded and reported as already built), ``SandboxCreateV2`` (returns the
  task id and the command router's URL and JWT), ``SandboxGetTaskIdV2``, ``SandboxWaitV2``,
  ``SandboxTerminateV2`` and ``SandboxGetCommandRouterAccess``. Calls need the
  ``x-modal-token-id``/``x-modal-token-secret`` metadata (any non-empty pair is accepted); the V2
  sandbox calls also need the ``x-modal-auth-token`` JWT from ``AuthTokenGet``;
* the **task command router** (``modal.task_command_router.TaskCommandRouter``, what the SDK
  reaches on the worker; plain http is what the SDK allows for a localhost control plane):
  ``TaskExecStart``, ``TaskExecStdinWrite`` (offset-idempotent), ``TaskExecStdinWriteStream``
  (client streaming, resumable at an offset), ``TaskExecStdinStatus``, ``TaskExecStdioRead``
  (server streaming from an offset until the process ends), ``TaskExecPoll`` and
  ``TaskExecWait``. Every call needs ``authorization: Bearer <jwt>`` minted for that task;
  an expired or foreign JWT is refused with UNAUTHENTICATED (the SDK then refreshes it).

Each sandbox is backed by local processes: ``TaskExecStart`` runs ``command_args`` as a real
subprocess in its own process group, in ``workdir`` (default: the sandbox's own temporary
directory), with a fresh environment (a container does not inherit the host's) made of a base
``PATH``/``HOME``, Modal's ``MODAL_TASK_ID``/``MODAL_SANDBOX_ID``, the sandbox's ``env`` (its
inline secret sources) and the exec's. Router JWTs live ``router_jwt_seconds`` (default an hour).
Modal's file API is an exec of the in-container tool ``/__modal/.bin/modal-sandbox-fs-tools``
fed through stdin; the stand-in runs its ``WriteFile`` and ``MakeDirectory`` commands itself,
writing at the absolute path named (creating parents). Terminating a sandbox, or its
``timeout_secs`` running out, kills every process group it started (SIGKILL) and removes its
directory and the directories its writes created.

Not emulated: V1 sandbox RPCs (``MODAL_SANDBOX_V2=0``), image builds (``ImageJoinStreaming``:
images are reported built, commands run with the host's binaries), the sandbox entrypoint's own
stdio, PTYs, tunnels, snapshots, volumes, secrets stored server-side, sidecars, resource limits
(``memory``/``cpu`` are recorded, not enforced), network policy (recorded in
``definition.network_access``, not enforced) and ``idle_timeout``. Anything else answers
UNIMPLEMENTED, naming the RPC.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from grpclib import GRPCError, Status
from grpclib.server import Server, Stream
from modal_proto import api_pb2
from modal_proto import task_command_router_pb2 as sr_pb2
from modal_proto.api_grpc import ModalClientBase
from modal_proto.task_command_router_grpc import TaskCommandRouterBase

from rlm_standins._shaping import Shaping
from rlm_standins.launch import Hermetic

FS_TOOLS_PATH = "/__modal/.bin/modal-sandbox-fs-tools"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IMAGE_BUILDER_VERSION = "2025.06"
JWT_SECONDS = 3600
READ_CHUNK = 64 * 1024

_SUCCESS = api_pb2.GenericResult.GENERIC_STATUS_SUCCESS
_FAILURE = api_pb2.GenericResult.GENERIC_STATUS_FAILURE
_TERMINATED = api_pb2.GenericResult.GENERIC_STATUS_TERMINATED
_TIMEOUT = api_pb2.GenericResult.GENERIC_STATUS_TIMEOUT


def _unimplemented(name: str) -> Callable[[Any, Stream[Any, Any]], Coroutine[Any, Any, None]]:
    async def handler(self: Any, stream: Stream[Any, Any]) -> None:
        raise GRPCError(Status.UNIMPLEMENTED, f"the Modal stand-in does not emulate {name}")

    handler.__name__ = name
    return handler


# The SDK's abstract servers declare every RPC; what the stand-in does not emulate says so.
_ApiBase: type = type(
    "_ApiBase",
    (ModalClientBase,),
    {name: _unimplemented(name) for name in ModalClientBase.__abstractmethods__},
)
_RouterBase: type = type(
    "_RouterBase",
    (TaskCommandRouterBase,),
    {name: _unimplemented(name) for name in TaskCommandRouterBase.__abstractmethods__},
)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Jwt:
    """HS256 JWTs with an ``exp`` claim, as the SDK expects to parse them."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def mint(self, seconds: float = JWT_SECONDS, **claims: Any) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64url(json.dumps({**claims, "exp": int(time.time() + seconds)}).encode())
        signature = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"

    def claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a valid, unexpired token minted here; else None."""
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(_b64url(expected), signature):
                return None
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (ValueError, json.JSONDecodeError):
            return None
        return claims if claims.get("exp", 0) > time.time() else None


class _Output:
    """One output stream of an exec, kept whole so readers can resume at any offset."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self._changed = asyncio.Event()

    def append(self, chunk: bytes) -> None:
        self.data += chunk
        self._notify()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self) -> None:
        await self._changed.wait()


@dataclass
class _Exec:
    """A process started by ``TaskExecStart`` (or a file written through fs-tools)."""

    exec_id: str
    argv: list[str]
    process: asyncio.subprocess.Process | None = None
    file: Any = None  # fs-tools WriteFile: the file that stdin goes to
    stdout: _Output = field(default_factory=_Output)
    stderr: _Output = field(default_factory=_Output)
    stdin_written: int = 0
    stdin_closed: bool = False
    exit_code: int | None = None
    exit_signal: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def finish(self, code: int | None = None, signal_number: int | None = None) -> None:
        if self.done.is_set():
            return
        self.exit_code, self.exit_signal = code, signal_number
        self.stdout.close()
        self.stderr.close()
        self.done.set()


@dataclass
class _Sandbox:
    sandbox_id: str
    task_id: str
    app_id: str
    definition: api_pb2.Sandbox
    root: str
    env: dict[str, str] = field(default_factory=dict)
    execs: dict[str, _Exec] = field(default_factory=dict)
    created_dirs: list[str] = field(default_factory=list)
    result: api_pb2.GenericResult | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None


def _metadata(stream: Stream[Any, Any], name: str) -> str:
    value = stream.metadata.get(name) if stream.metadata else None
    return value if isinstance(value, str) else ""


class _ControlPlane(_ApiBase):
    """``modal.client.ModalClient``: apps, images and the sandbox lifecycle."""

    def __init__(self, standin: ModalStandIn) -> None:
        self.s = standin

    def _authenticate(self, stream: Stream[Any, Any], name: str) -> None:
        self.s.calls.append(name)
        if not (
            _metadata(stream, "x-modal-token-id") and _metadata(stream, "x-modal-token-secret")
        ):
            raise GRPCError(Status.UNAUTHENTICATED, "Token missing. Could not authenticate client.")
        self.s.token_ids.add(_metadata(stream, "x-modal-token-id"))

    def _authenticate_v2(self, stream: Stream[Any, Any], name: str) -> None:
        self._authenticate(stream, name)
        if self.s.jwt.claims(_metadata(stream, "x-modal-auth-token")) is None:
            raise GRPCError(Status.UNAUTHENTICATED, "invalid or expired x-modal-auth-token")

    async def ClientHello(self, stream: Stream[Any, Any]) -> None:
        self._authenticate(stream, "ClientHello")
        await stream.recv_message()
        await stream.send_message(
            api_pb2.ClientHelloResponse(image_builder_version=IMAGE_BUILDER_VERSION)
        )

    async def AuthTokenGet(self, stream: Stream[Any, Any]) -> None:
        self._authenticate(stream, "AuthTokenGet")
        await stream.recv_message()
        token = self.s.jwt.mint(sub=_metadata(stream, "x-modal-token-id"))
        await stream.send_message(api_pb2.AuthTokenGetResponse(token=token))

    async def EnvironmentGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        self._authenticate(stream, "EnvironmentGetOrCreate")
        request = await stream.recv_message()
        assert request is not None
        name = request.deployment_name or "main"
        settings = api_pb2.EnvironmentSettings(image_builder_version=IMAGE_BUILDER_VERSION)
        await stream.send_message(
            api_pb2.EnvironmentGetOrCreateResponse(
                environment_id=f"en-{hashlib.sha1(name.encode()).hexdigest()[:20]}",
                metadata=api_pb2.EnvironmentMetadata(name=name, settings=settings),
            )
        )

    async def AppGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        self._authenticate(stream, "AppGetOrCreate")
        request = await stream.recv_message()
        assert request is not None
        key = (request.environment_name, request.app_name)
        if key not in self.s.apps:
            if request.object_creation_type != api_pb2.OBJECT_CREATION_TYPE_CREATE_IF_MISSING:
                raise GRPCError(Status.NOT_FOUND, f"App '{request.app_name}' not found")
            self.s.apps[key] = f"ap-{secrets.token_hex(11)}"
        app_id = self.s.apps[key]
        await stream.send_message(
            api_pb2.AppGetOrCreateResponse(
                app_id=app_id,
                handle_metadata=api_pb2.AppHandleMetadata(
                    app_id=app_id, environment_name=request.environment_name
                ),
            )
        )

    async def ImageGetOrCreate(self, stream: Stream[Any, Any]) -> None:
        self._authenticate(stream, "ImageGetOrCreate")
        request = await stream.recv_message()
        assert request is not None
        digest = hashlib.sha256(request.image.SerializeToString(deterministic=True)).hexdigest()
        image_id = f"im-{digest[:22]}"
        self.s.images[image_id] = request.image
        await stream.send_message(
            api_pb2.ImageGetOrCreateResponse(
                image_id=image_id,
                result=api_pb2.GenericResult(status=_SUCCESS),
                metadata=api_pb2.ImageMetadata(
                    python_version_info=f"Python {sys.version.split()[0]}",
                    image_builder_version=request.builder_version or IMAGE_BUILDER_VERSION,
                ),
            )
        )

    async def SandboxCreateV2(self, stream: Stream[Any, Any]) -> None:
        self.s.throttle("SandboxCreateV2")
        self._authenticate_v2(stream, "SandboxCreateV2")
        request = await stream.recv_message()
        assert request is not None
        if request.definition.image_id not in self.s.images:
            raise GRPCError(Status.NOT_FOUND, f"image {request.definition.image_id} not found")
        env = {k: v for source in request.secret_sources for k, v in source.env.contents.items()}
        sandbox = self.s.create_sandbox(request.app_id, request.definition, env)
        await stream.send_message(
            api_pb2.SandboxCreateV2Response(
                sandbox_id=sandbox.sandbox_id,
                task_id=sandbox.task_id,
                metadata=api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id),
                command_router_access=self.s.router_access(sandbox),
            )
        )

    async def SandboxGetTaskIdV2(self, stream: Stream[Any, Any]) -> None:
        self._authenticate_v2(stream, "SandboxGetTaskIdV2")
        request = await stream.recv_message()
        assert request is not None
        sandbox = self.s.sandbox(request.sandbox_id)
        response = api_pb2.SandboxGetTaskIdResponse(task_id=sandbox.task_id)
        if sandbox.result is not None:
            response = api_pb2.SandboxGetTaskIdResponse(task_result=sandbox.result)
        await stream.send_message(response)

    async def SandboxGetCommandRouterAccess(self, stream: Stream[Any, Any]) -> None:
        self._authenticate_v2(stream, "SandboxGetCommandRouterAccess")
        request = await stream.recv_message()
        assert request is not None
        sandbox = self.s.sandbox(request.sandbox_id, task_id=request.task_id)
        access = self.s.router_access(sandbox)
        await stream.send_message(
            api_pb2.SandboxGetCommandRouterAccessResponse(jwt=access.jwt, url=access.url)
        )

    async def SandboxWaitV2(self, stream: Stream[Any, Any]) -> None:
        self._authenticate_v2(stream, "SandboxWaitV2")
        request = await stream.recv_message()
        assert request is not None
        sandbox = self.s.sandbox(request.sandbox_id)
        if request.timeout > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sandbox.finished.wait(), request.timeout)
        await stream.send_message(
            api_pb2.SandboxWaitResponse(
                result=sandbox.result or api_pb2.GenericResult(),
                metadata=api_pb2.SandboxHandleMetadata(app_id=sandbox.app_id),
            )
        )

    async def SandboxTerminateV2(self, stream: Stream[Any, Any]) -> None:
        self.s.throttle("SandboxTerminateV2")
        self._authenticate_v2(stream, "SandboxTerminateV2")
        request = await stream.recv_message()
        assert request is not None
        sandbox = self.s.sandbox(request.sandbox_id)
        existing = sandbox.result
        await self.s.finish_sandbox(sandbox, api_pb2.GenericResult(status=_TERMINATED))
        await stream.send_message(api_pb2.SandboxTerminateResponse(existing_result=existing))


class _Router(_RouterBase):
    """``modal.task_command_router.TaskCommandRouter``: processes and their stdio."""

    def __init__(self, standin: ModalStandIn) -> None:
        self.s = standin

    async def _request(self, stream: Stream[Any, Any], name: str) -> Any:
        self.s.calls.append(name)
        await self.s.shaping.round_trip()
        # Unary calls only: the SDK honours a retry policy there (call_with_retries_on_
        # transient_errors); its stdio read stream retries no RESOURCE_EXHAUSTED at all.
        if name != "TaskExecStdioRead":
            self.s.throttle(name)
        request = await stream.recv_message()
        assert request is not None
        self._authorize(stream, request.task_id)
        return request

    def _authorize(self, stream: Stream[Any, Any], task_id: str) -> None:
        bearer = _metadata(stream, "authorization").removeprefix("Bearer ")
        claims = self.s.jwt.claims(bearer)
        if claims is None or claims.get("task_id") != task_id:
            raise GRPCError(Status.UNAUTHENTICATED, "invalid or expired command router JWT")

    def _exec(self, task_id: str, exec_id: str) -> _Exec:
        sandbox = self.s.sandbox_by_task(task_id)
        try:
            return sandbox.execs[exec_id]
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"exec {exec_id} not found") from None

    async def TaskExecStart(self, stream: Stream[Any, Any]) -> None:
        request = await self._request(stream, "TaskExecStart")
        sandbox = self.s.sandbox_by_task(request.task_id)
        if sandbox.result is not None:
            raise GRPCError(Status.FAILED_PRECONDITION, "the sandbox has finished")
        if request.exec_id not in sandbox.execs:  # exec_id is the idempotency key
            await self.s.start_exec(sandbox, request)
        await stream.send_message(sr_pb2.TaskExecStartResponse())

    async def TaskExecStdinWrite(self, stream: Stream[Any, Any]) -> None:
        request = await self._request(stream, "TaskExecStdinWrite")
        execution = self._exec(request.task_id, request.exec_id)
        await self.s.write_stdin(execution, request.offset, request.data, request.eof)
        await stream.send_message(sr_pb2.TaskExecStdinWriteResponse())

    async def TaskExecStdinWriteStream(self, stream: Stream[Any, Any]) -> None:
        self.s.calls.append("TaskExecStdinWriteStream")
        first = await stream.recv_message()
        if first is None or not first.HasField("start"):
            raise GRPCError(Status.INVALID_ARGUMENT, "the first message must be `start`")
        self._authorize(stream, first.start.task_id)
        execution = self._exec(first.start.task_id, first.start.exec_id)
        offset = first.start.offset
        async for message in stream:
            if message.HasField("end"):
                await self.s.write_stdin(execution, offset, b"", True)
                break
            await self.s.write_stdin(execution, offset, message.data, False)
            offset += len(message.data)
        await stream.send_message(sr_pb2.TaskExecStdinWriteStreamResponse())

    async def TaskExecStdinStatus(self, stream: Stream[Any, Any]) -> None:
        request = await self._request(stream, "TaskExecStdinStatus")
        execution = self._exec(request.task_id, request.exec_id)
        await stream.send_message(
            sr_pb2.TaskExecStdinStatusResponse(
                num_bytes_written=execution.stdin_written, closed=execution.stdin_closed
            )
        )

    async def TaskExecStdioRead(self, stream: Stream[Any, Any]) -> None:
        request = await self._request(stream, "TaskExecStdioRead")
        execution = self._exec(request.task_id, request.exec_id)
        output = (
            execution.stderr
            if request.file_descriptor == sr_pb2.TASK_EXEC_STDIO_FILE_DESCRIPTOR_STDERR
            else execution.stdout
        )
        offset = request.offset
        sent = 0
        while True:
            if offset < len(output.data):
                chunk = bytes(output.data[offset : offset + READ_CHUNK])
                offset += len(chunk)
                sent += len(chunk)
                await self.s.shaping.carry(len(chunk))
                await stream.send_message(sr_pb2.TaskExecStdioReadResponse(data=chunk))
                drop = self.s.drop_stdout_stream_after
                if output is execution.stdout and drop is not None and sent >= drop:
                    self.s.drop_stdout_stream_after = None
                    self.s.dropped_streams += 1
                    raise GRPCError(Status.UNAVAILABLE, "upstream connect error or disconnect")
            elif output.closed:
                return
            else:
                await output.changed()

    async def _exit_status(self, stream: Stream[Any, Any], execution: _Exec, kind: type) -> None:
        if execution.exit_signal is not None:
            await stream.send_message(kind(signal=execution.exit_signal))
        elif execution.exit_code is not None:
            await stream.send_message(kind(code=execution.exit_code))
        else:
            await stream.send_message(kind())

    async def TaskExecPoll(self, stream: Stream[Any, Any]) -> None:
        request = await self._request(stream, "TaskExecPoll")
        execution = self._exec(request.task_id, request.exec_id)
        await self._exit_status(stream, execution, sr_pb2.TaskExecPollResponse)

    async def TaskExecWait(self, stream: Stream[Any, Any]) -> None:
        request = await self._request(stream, "TaskExecWait")
        execution = self._exec(request.task_id, request.exec_id)
        await execution.done.wait()
        await self._exit_status(stream, execution, sr_pb2.TaskExecWaitResponse)


#: the token pair a stand-in run gives the SDK (the stand-in records, and accepts, any)
TOKEN_ID = "ak-standin"
TOKEN_SECRET = "as-standin-secret"


class ModalStandIn:
    """The Modal control plane and task command router on loopback, backed by local processes.

    Use as a context manager; ``server_url`` is what ``MODAL_SERVER_URL`` must say. ``calls``
    records every RPC by name; ``images``, ``exec_log`` and :meth:`live_sandboxes` /
    :meth:`live_pids` let tests see what the SDK asked for and what is still running.
    """

    #: the request in :attr:`calls` that creates a sandbox
    create_call = "SandboxCreateV2"

    def reach(self, home: str) -> tuple[Hermetic, dict[str, Any]]:
        """The environment the provider's SDK must see to reach this stand-in (``home``: an
        empty directory for SDKs that keep settings there), and the adapter's kwargs."""
        # The SDK reads MODAL_* and ~/.modal.toml: an empty home keeps the developer's out.
        values = {
            "HOME": home,
            "MODAL_CONFIG_PATH": os.path.join(home, ".modal.toml"),
            "MODAL_SERVER_URL": self.server_url,
            "MODAL_TOKEN_ID": TOKEN_ID,
            "MODAL_TOKEN_SECRET": TOKEN_SECRET,
        }
        return Hermetic("MODAL_", ("HOME",), values), {"server_url": self.server_url}

    def __init__(
        self,
        *,
        router_jwt_seconds: float = JWT_SECONDS,
        drop_stdout_stream_after: int | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        #: latency, bandwidth and a stream drop (default: RLM_STANDIN_SHAPING, else none)
        self.shaping = shaping or Shaping.from_env()
        #: the first stdout stream that has sent this many bytes ends with UNAVAILABLE (the
        #: SDK reads again from its offset: TaskExecStdioRead resumes anywhere)
        self.drop_stdout_stream_after = (
            drop_stdout_stream_after
            if drop_stdout_stream_after is not None
            else self.shaping.drop_after
        )
        #: stdout streams ended by ``drop_stdout_stream_after``
        self.dropped_streams = 0
        #: calls answered RESOURCE_EXHAUSTED by the shaping's throttling (sandbox create and
        #: terminate, and the command router's unary calls)
        self.throttled_calls = 0
        self.jwt = _Jwt()
        self.router_jwt_seconds = router_jwt_seconds
        self.calls: list[str] = []
        self.token_ids: set[str] = set()
        self.apps: dict[tuple[str, str], str] = {}
        self.images: dict[str, api_pb2.Image] = {}
        self.sandboxes: dict[str, _Sandbox] = {}
        #: (sandbox_id, argv, pid or None) of every exec, in order
        self.exec_log: list[tuple[str, list[str], int | None]] = []
        self.port = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def server_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ModalStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the server on a free loopback port, in a thread with its own event loop."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._start_server())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="modal-standin", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Modal stand-in did not start within 10s")

    async def _start_server(self) -> None:
        from grpclib.encoding.proto import ProtoStatusDetailsCodec

        self._server = Server(
            [_ControlPlane(self), _Router(self)], status_details_codec=ProtoStatusDetailsCodec()
        )
        await self._server.start("127.0.0.1", 0)
        listening: Any = self._server._server  # an asyncio Server once started
        sockets = listening.sockets if listening else []
        self.port = sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Terminates every sandbox (killing its processes) and stops the server."""
        if self._loop is None or self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        future.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self.finish_sandbox(sandbox, api_pb2.GenericResult(status=_TERMINATED))
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    # ---- what tests inspect ------------------------------------------------------------

    def throttle(self, name: str) -> None:
        """Answers ``name`` RESOURCE_EXHAUSTED with an RPCRetryPolicy when the shaping's
        throttling says so (Modal's servers attach one; its SDK waits it out)."""
        if self.shaping.throttled():
            self.throttled_calls += 1
            policy = api_pb2.RPCRetryPolicy(retry_after_secs=self.shaping.retry_after)
            raise GRPCError(Status.RESOURCE_EXHAUSTED, f"{name}: rate limit exceeded", [policy])

    def live_sandboxes(self) -> list[str]:
        """Ids of the sandboxes not yet terminated."""
        return [s.sandbox_id for s in list(self.sandboxes.values()) if s.result is None]

    def end_sandboxes(self) -> None:
        """Ends every live sandbox from the provider's side, as its own timeout would (no
        client asked): what an adapter holding one, or a warm pool, must survive."""
        assert self._loop is not None, "the stand-in is not started"

        async def end() -> None:
            for sandbox in list(self.sandboxes.values()):
                if sandbox.result is None:
                    await self.finish_sandbox(sandbox, api_pb2.GenericResult(status=_TIMEOUT))

        asyncio.run_coroutine_threadsafe(end(), self._loop).result(30)

    def live_pids(self) -> list[int]:
        """Pids of the processes still running in any sandbox."""
        return [
            e.process.pid
            for s in list(self.sandboxes.values())
            for e in list(s.execs.values())
            if e.process is not None and not e.done.is_set()
        ]

    # ---- sandboxes ---------------------------------------------------------------------

    def create_sandbox(
        self, app_id: str, definition: api_pb2.Sandbox, env: dict[str, str]
    ) -> _Sandbox:
        number = next(self._ids)
        sandbox = _Sandbox(
            sandbox_id=f"sb-standin-{number:04d}-{secrets.token_hex(4)}",
            task_id=f"ta-{secrets.token_hex(10)}V",  # V: a V2 sandbox's task, as the SDK tells
            app_id=app_id,
            definition=definition,
            root=tempfile.mkdtemp(prefix="modal-standin-"),
            env=env,
        )
        self.sandboxes[sandbox.sandbox_id] = sandbox
        if definition.timeout_secs:
            loop = asyncio.get_running_loop()
            sandbox.timer = loop.call_later(
                definition.timeout_secs,
                lambda: asyncio.ensure_future(
                    self.finish_sandbox(sandbox, api_pb2.GenericResult(status=_TIMEOUT))
                ),
            )
        return sandbox

    def router_access(self, sandbox: _Sandbox) -> api_pb2.CommandRouterAccess:
        return api_pb2.CommandRouterAccess(
            url=self.server_url,
            jwt=self.jwt.mint(self.router_jwt_seconds, task_id=sandbox.task_id),
        )

    def sandbox(self, sandbox_id: str, task_id: str = "") -> _Sandbox:
        if not sandbox_id and task_id:
            return self.sandbox_by_task(task_id)
        try:
            return self.sandboxes[sandbox_id]
        except KeyError:
            raise GRPCError(Status.NOT_FOUND, f"Sandbox {sandbox_id} not found") from None

    def sandbox_by_task(self, task_id: str) -> _Sandbox:
        for sandbox in self.sandboxes.values():
            if sandbox.task_id == task_id:
                return sandbox
        raise GRPCError(Status.NOT_FOUND, f"task {task_id} not found")

    async def finish_sandbox(self, sandbox: _Sandbox, result: api_pb2.GenericResult) -> None:
        """Ends a sandbox: every process group is killed and its files are removed."""
        if sandbox.result is not None:
            return
        sandbox.result = result
        if sandbox.timer is not None:
            sandbox.timer.cancel()
        for execution in list(sandbox.execs.values()):
            await self._kill_exec(execution)
        shutil.rmtree(sandbox.root, ignore_errors=True)
        for directory in reversed(sandbox.created_dirs):
            shutil.rmtree(directory, ignore_errors=True)
        sandbox.finished.set()

    # ---- execs -------------------------------------------------------------------------

    async def start_exec(self, sandbox: _Sandbox, request: sr_pb2.TaskExecStartRequest) -> None:
        argv = list(request.command_args)
        execution = _Exec(exec_id=request.exec_id, argv=argv)
        sandbox.execs[request.exec_id] = execution
        if argv and argv[0] == FS_TOOLS_PATH:
            self.exec_log.append((sandbox.sandbox_id, argv, None))
            self._start_fs_tool(sandbox, execution, argv[1:])
            return
        env = {
            "PATH": BASE_PATH,
            "HOME": sandbox.root,
            "MODAL_TASK_ID": sandbox.task_id,
            "MODAL_SANDBOX_ID": sandbox.sandbox_id,
            **sandbox.env,
        }
        for source in request.secret_sources:
            env.update(source.env.contents)
        env.update(request.env)
        pipe, devnull = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
        wants_stderr = request.stderr_config != sr_pb2.TASK_EXEC_STDERR_CONFIG_DEVNULL
        wants_stdout = request.stdout_config != sr_pb2.TASK_EXEC_STDOUT_CONFIG_DEVNULL
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=pipe,
                stdout=pipe if wants_stdout else devnull,
                stderr=pipe if wants_stderr else devnull,
                cwd=request.workdir or sandbox.root,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            # As in a container: the exec starts, then fails the way a shell reports it.
            self.exec_log.append((sandbox.sandbox_id, argv, None))
            execution.stderr.append(f"{argv[0] if argv else ''}: {error}\n".encode())
            execution.finish(code=127 if isinstance(error, FileNotFoundError) else 126)
            return
        self.exec_log.append((sandbox.sandbox_id, argv, process.pid))
        execution.process = process
        loop = asyncio.get_running_loop()
        if process.stdout is not None:
            execution.tasks.append(loop.create_task(self._pump(process.stdout, execution.stdout)))
        if process.stderr is not None:
            execution.tasks.append(loop.create_task(self._pump(process.stderr, execution.stderr)))
        execution.tasks.append(loop.create_task(self._reap(execution)))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, output: _Output) -> None:
        while chunk := await reader.read(READ_CHUNK):
            output.append(chunk)

    @staticmethod
    async def _reap(execution: _Exec) -> None:
        assert execution.process is not None
        code = await execution.process.wait()
        # Output first, then the exit status: readers must see every byte before the end.
        pumps = [t for t in execution.tasks if t is not asyncio.current_task()]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*pumps, return_exceptions=True), 5)
        if code < 0:
            execution.finish(signal_number=-code)
        else:
            execution.finish(code=code)

    async def _kill_exec(self, execution: _Exec) -> None:
        process = execution.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)
        if execution.file is not None:
            execution.file.close()
            execution.file = None
        if not execution.done.is_set():
            execution.finish(signal_number=signal.SIGKILL)
        for task in execution.tasks:
            task.cancel()

    async def write_stdin(self, execution: _Exec, offset: int, data: bytes, eof: bool) -> None:
        """Appends to an exec's stdin; bytes before ``stdin_written`` were delivered already
        (a retried write), a gap is refused."""
        await self.shaping.carry(len(data))
        if offset > execution.stdin_written:
            raise GRPCError(
                Status.OUT_OF_RANGE,
                f"stdin offset {offset} is past the {execution.stdin_written} bytes written",
            )
        fresh = data[execution.stdin_written - offset :]
        if fresh and execution.stdin_closed:
            raise GRPCError(Status.FAILED_PRECONDITION, "stdin of this exec is closed")
        if fresh and execution.done.is_set():
            raise GRPCError(Status.FAILED_PRECONDITION, "the process has exited")
        if execution.file is not None:
            self._write_file_chunk(execution, fresh)
        elif execution.process is not None and execution.process.stdin is not None:
            stdin = execution.process.stdin
            try:
                if fresh:
                    stdin.write(fresh)
                    await stdin.drain()
                if eof:
                    stdin.close()
            except (BrokenPipeError, ConnectionResetError):
                raise GRPCError(Status.FAILED_PRECONDITION, "the process has exited") from None
        execution.stdin_written += len(fresh)
        if eof and not execution.stdin_closed:
            execution.stdin_closed = True
            if execution.file is not None:
                execution.file.close()
                execution.file = None
                execution.finish(code=0)

    # ---- the in-container file tool ----------------------------------------------------

    def _start_fs_tool(self, sandbox: _Sandbox, execution: _Exec, args: list[str]) -> None:
        try:
            command = json.loads(args[0]) if args else {}
            (name, options), *_ = command.items()
            path = options["path"]
        except (ValueError, KeyError, AttributeError, json.JSONDecodeError):
            self._fs_error(execution, "InvalidArgument", f"bad fs-tools command {args!r}")
            return
        try:
            if name == "WriteFile":
                self._make_parents(sandbox, os.path.dirname(path))
                execution.file = open(path, "wb")  # noqa: SIM115 (closed on EOF or terminate)
            elif name == "MakeDirectory":
                self._make_parents(sandbox, path)
                execution.finish(code=0)
            else:
                self._fs_error(
                    execution, "Unsupported", f"the Modal stand-in does not emulate fs-tools {name}"
                )
        except IsADirectoryError as error:
            self._fs_error(execution, "IsDirectory", str(error))
        except NotADirectoryError as error:
            self._fs_error(execution, "NotDirectory", str(error))
        except PermissionError as error:
            self._fs_error(execution, "PermissionDenied", str(error))
        except OSError as error:
            self._fs_error(execution, "Other", str(error))

    @staticmethod
    def _make_parents(sandbox: _Sandbox, directory: str) -> None:
        """``mkdir -p``, remembering the top directory it created (removed on terminate)."""
        missing = []
        while directory and not os.path.isdir(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        if missing:
            os.makedirs(missing[0], exist_ok=True)
            sandbox.created_dirs.append(missing[-1])

    def _write_file_chunk(self, execution: _Exec, data: bytes) -> None:
        try:
            execution.file.write(data)
        except OSError as error:
            execution.file.close()
            execution.file = None
            self._fs_error(execution, "Other", str(error))

    @staticmethod
    def _fs_error(execution: _Exec, kind: str, message: str) -> None:
        execution.stderr.append(json.dumps({"error_kind": kind, "message": message}).encode())
        execution.finish(code=1)


__all__ = ["FS_TOOLS_PATH", "ModalStandIn"]


#: the stand-in :func:`rlm_standins.launch.launch` starts for this provider
STANDIN = ModalStandIn
