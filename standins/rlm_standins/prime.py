"""A wire-level stand-in of Prime Intellect sandboxes: the real ``prime-sandboxes`` SDK talks to it.

Like moto or LocalStack, it speaks the provider's own protocol on loopback, so that the adapter is
exercised through the unmodified SDK. Two HTTP servers, as on the real platform:

* the **control API** (``api_url``; the SDK reads ``PRIME_API_BASE_URL``), JSON over REST under
  ``/api/v1``: ``POST /sandbox`` (create, idempotent by ``idempotency_key``),
  ``POST /sandbox/status:batchGet`` (what ``wait_for_creation`` polls), ``GET /sandbox/{id}``,
  ``GET /sandbox/{id}/error-context``, ``POST /sandbox/{id}/auth`` (returns ``gateway_url``,
  ``token``, ``user_ns``, ``job_id``, ``expires_at``) and ``DELETE /sandbox/{id}``; every call needs
  ``Authorization: Bearer <api key>``;
* the **gateway** (``gateway_url``, handed out by ``/auth``), under ``/{user_ns}/{job_id}``:
  ``POST /upload?path=`` (multipart field ``file``, at most 16 MiB: 413 above) and the Connect RPC service
  ``command_session.CommandSession`` with the protobuf codec: ``Start`` and ``Connect`` (server
  streams of ``StartEvent``, ``DataEvent`` stdout/stderr, ``EndEvent``, ``KeepAlive``),
  ``SendInput``, ``SendSignal`` (SIGTERM/SIGKILL, idempotent by uuid) and ``List``; every call needs
  the sandbox's gateway token.

Each sandbox is backed by local processes: ``Start`` runs the requested ``cmd``/``args`` as a real
subprocess in its own process group, with a fresh environment (a VM does not inherit the host's)
made of a base ``PATH``/``HOME``, the sandbox's ``environment_vars`` and the command's ``envs``.
Each sandbox's disk (``diskMountPath``, also its ``HOME`` and default working directory) is a
fresh temporary directory; uploads are written at the absolute path they name, creating parent
directories. Deleting a sandbox (or its ``timeout_minutes`` running out) kills every process group
it started and removes its disk and the directories its uploads created.

Not emulated: PTYs, ``StreamInput``/``Update``, guest users (``user`` is accepted and ignored),
images (``docker_image`` is recorded; commands run with the host's binaries), resource limits,
network policy, checkpoints, volumes, LAN networks and background jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import struct
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from rlm_standins._processes import first_missing, signal_group, with_descendants
from rlm_standins._server import AiohttpStandIn
from rlm_standins._shaping import Shaping
from rlm_standins.launch import Hermetic

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KEEPALIVE_SECONDS = 15.0
#: Prime's sandbox files docs: "uploads are limited to 16 MiB per file"; a bigger file gets
#: 413 Payload Too Large and nothing is written
MAX_UPLOAD_BYTES = 16 * 1024 * 1024
READ_CHUNK = 64 * 1024
_SERVICE = "command_session.CommandSession"
# Connect error code -> HTTP status for unary errors (the Connect protocol's own table).
_HTTP_STATUS = {
    "invalid_argument": 400,
    "failed_precondition": 400,
    "unauthenticated": 401,
    "not_found": 404,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
}


def _pb() -> Any:
    """The SDK's own generated messages: the stand-in and the client share one schema."""
    from prime_sandboxes._proto.command_session import command_session_pb2

    return command_session_pb2


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


#: the statuses of a sandbox that has ended
_ENDED = ("TERMINATED", "TIMEOUT")


class RpcError(Exception):
    """A Connect error: ``code`` is the protocol's snake_case code name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Session:
    """One command session: a process group, its subscribers and, once ended, its exit code."""

    uuid: str
    process: asyncio.subprocess.Process
    argv: list[str]
    subscribers: list[asyncio.Queue[Any]] = field(default_factory=list)
    exit_code: int | None = None
    applied: set[str] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Sandbox:
    """A stand-in sandbox: its create request, its gateway credentials and its processes."""

    id: str
    request: dict[str, Any]
    home: str
    job_id: str
    token: str
    status: str = "PENDING"
    created_at: str = field(default_factory=_now)
    started_at: str | None = None
    terminated_at: str | None = None
    error_type: str | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    upload_dirs: set[str] = field(default_factory=set)
    polls: int = 0
    lifetime: asyncio.TimerHandle | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``Sandbox`` resource as the API returns it (camelCase)."""
        r = self.request
        return {
            "id": self.id,
            "name": r.get("name", self.id),
            "dockerImage": r.get("docker_image", ""),
            "startCommand": r.get("start_command"),
            "cpuCores": r.get("cpu_cores", 1.0),
            "memoryGB": r.get("memory_gb", 1.0),
            "diskSizeGB": r.get("disk_size_gb", 5.0),
            "diskMountPath": self.home,
            "gpuCount": r.get("gpu_count", 0),
            "gpuType": r.get("gpu_type"),
            "vm": bool(r.get("vm", True)),
            "networkAllowlist": r.get("network_allowlist"),
            "networkDenylist": r.get("network_denylist"),
            "status": self.status,
            "timeoutMinutes": r.get("timeout_minutes", 60),
            "idleTimeoutMinutes": r.get("idle_timeout_minutes"),
            "environmentVars": r.get("environment_vars"),
            "labels": r.get("labels", []),
            "createdAt": self.created_at,
            "updatedAt": _now(),
            "startedAt": self.started_at,
            "terminatedAt": self.terminated_at,
            "errorType": self.error_type,
            "errorMessage": None,
            "teamId": r.get("team_id"),
            "region": r.get("region"),
        }


def _throttleable(request: web.Request) -> bool:
    """What the shaping may throttle: uploads. (The SDK answers a 429 on the control API with
    fixed 10 s and 30 s waits, ignoring Retry-After (prime-sandboxes ``core/client.py``
    ``_PLATFORM_RATE_LIMIT_DELAYS``): throttling create and delete would make a shaped suite
    wait minutes to learn nothing about the adapter.)"""
    return request.method == "POST" and request.path.endswith("/upload")


class PrimeStandIn(AiohttpStandIn):
    """The Prime control API and gateway on loopback, backed by local processes.

    Use as a context manager; ``api_url`` goes into ``PRIME_API_BASE_URL`` (or the adapter's
    ``api_url``) and ``api_key`` into ``PRIME_API_KEY``. ``provisioning_polls`` makes that many
    status polls answer ``PROVISIONING`` before ``RUNNING``. ``drop_stream_after``: the first
    following output stream that has sent that many stdout bytes ends with ``unavailable`` (a
    link fault): the SDK re-attaches with ``Connect`` and, as on the platform, what the
    process wrote while nobody was attached is not replayed (``open_process`` docstring).
    """

    #: the request in :attr:`calls` that creates a sandbox
    create_call = "POST /api/v1/sandbox"

    def reach(self, home: str) -> tuple[Hermetic, dict[str, Any]]:
        """The environment the provider's SDK must see to reach this stand-in (``home``: an
        empty directory for SDKs that keep settings there), and the adapter's kwargs."""
        # The SDK reads ~/.prime and caches gateway tokens there.
        kwargs = {"api_url": self.api_url, "api_key": self.api_key}
        return Hermetic("PRIME_", ("HOME",), {"HOME": home}), kwargs

    def __init__(
        self,
        *,
        api_key: str | None = None,
        provisioning_polls: int = 0,
        drop_stream_after: int | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        super().__init__(shaping)
        self.api_key = api_key or f"pit_standin_{secrets.token_hex(8)}"
        self.provisioning_polls = provisioning_polls
        self.drop_stream_after = (
            drop_stream_after if drop_stream_after is not None else self.shaping.drop_after
        )
        #: output streams ended by ``drop_stream_after``
        self.dropped_streams = 0
        self.sandboxes: dict[str, Sandbox] = {}
        #: the size of every upload the gateway received, refused ones included
        self.upload_sizes: list[int] = []
        self._by_job: dict[str, Sandbox] = {}
        self._idempotency: dict[str, str] = {}
        self._ids = itertools.count(1)
        self.api_url = ""
        self.gateway_url = ""

    # ---- lifecycle -------------------------------------------------------------------------

    thread_name = "prime-standin"

    def start(self) -> PrimeStandIn:
        """Starts the API and the gateway (ports chosen by the kernel)."""
        _pb()  # fail here, not inside a handler, when the SDK is missing
        return super().start()

    def _on_started(self, ports: tuple[int, int]) -> None:
        self.api_url = f"http://127.0.0.1:{ports[0]}"
        self.gateway_url = f"http://127.0.0.1:{ports[1]}"

    async def _serve(self) -> tuple[int, int]:
        shape = self._shaped(_throttleable, {"detail": "Rate limit exceeded"})
        api = web.Application(middlewares=shape)
        api.router.add_post("/api/v1/sandbox", self._create)
        api.router.add_post("/api/v1/sandbox/status:batchGet", self._batch_status)
        api.router.add_get("/api/v1/sandbox/{id}", self._get)
        api.router.add_get("/api/v1/sandbox/{id}/error-context", self._error_context)
        api.router.add_post("/api/v1/sandbox/{id}/auth", self._auth)
        api.router.add_delete("/api/v1/sandbox/{id}", self._delete)
        gateway = web.Application(client_max_size=1 << 40, middlewares=shape)
        gateway.router.add_post("/{ns}/{job}/upload", self._upload)
        gateway.router.add_post(f"/{{ns}}/{{job}}/{_SERVICE}/{{method}}", self._rpc)
        api_port, gateway_port = await self._listen(api, gateway, handler_cancellation=False)
        return api_port, gateway_port

    async def _shutdown(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self._terminate(sandbox, "TERMINATED")
        await self._stop_listening()

    # ---- what tests look at ----------------------------------------------------------------

    def live_sandboxes(self) -> list[str]:
        """Ids of sandboxes not yet terminated."""
        return [s.id for s in list(self.sandboxes.values()) if s.status not in _ENDED]

    def end_sandboxes(self) -> None:
        """Ends every live sandbox from the provider's side, as its own timeout would (no
        client asked): what an adapter holding one, or a warm pool, must survive."""

        async def end() -> None:
            for sandbox in list(self.sandboxes.values()):
                if sandbox.status not in _ENDED:
                    await self._terminate(sandbox, "TIMEOUT")

        self._call(end())

    def live_pids(self) -> list[int]:
        """Every live process started in any sandbox, with its descendants (from ``/proc``)."""
        roots = [
            session.pid
            for sandbox in list(self.sandboxes.values())
            for session in list(sandbox.sessions.values())
            if session.exit_code is None
        ]
        return with_descendants(roots, zombies=True)

    def rotate_tokens(self) -> None:
        """Gives every sandbox a new gateway token, as when one expires: clients must re-auth."""
        for sandbox in list(self.sandboxes.values()):
            sandbox.token = secrets.token_urlsafe(24)

    # ---- control API -----------------------------------------------------------------------

    def _check_key(self, request: web.Request) -> None:
        self.calls.append(f"{request.method} {request.path}")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise web.HTTPUnauthorized(
                text=json.dumps({"detail": "Invalid API key"}), content_type="application/json"
            )

    def _sandbox(self, sandbox_id: str) -> Sandbox:
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None:
            raise web.HTTPNotFound(
                text=json.dumps({"detail": f"Sandbox {sandbox_id} not found"}),
                content_type="application/json",
            )
        return sandbox

    async def _create(self, request: web.Request) -> web.Response:
        self._check_key(request)
        body = await request.json()
        if not body.get("name") or not (body.get("docker_image") or body.get("checkpoint_id")):
            raise web.HTTPUnprocessableEntity(
                text=json.dumps({"detail": "name and docker_image are required"}),
                content_type="application/json",
            )
        key = body.get("idempotency_key")
        if key and key in self._idempotency:
            return web.json_response(self.sandboxes[self._idempotency[key]].to_json())
        sandbox = Sandbox(
            id=f"sbx{next(self._ids):04d}{secrets.token_hex(6)}",
            request=body,
            home=tempfile.mkdtemp(prefix="prime-standin-"),
            job_id=f"job-{secrets.token_hex(6)}",
            token=secrets.token_urlsafe(24),
        )
        self.sandboxes[sandbox.id] = sandbox
        self._by_job[sandbox.job_id] = sandbox
        if key:
            self._idempotency[key] = sandbox.id
        minutes = body.get("timeout_minutes", 60)
        if minutes and minutes > 0:
            loop = asyncio.get_running_loop()
            sandbox.lifetime = loop.call_later(
                minutes * 60,
                lambda: self._background(self._terminate(sandbox, "TIMEOUT")),
            )
        return web.json_response(sandbox.to_json())

    def _advance(self, sandbox: Sandbox) -> str:
        """A status poll: PENDING/PROVISIONING for ``provisioning_polls`` polls, then RUNNING."""
        if sandbox.status in ("PENDING", "PROVISIONING"):
            sandbox.polls += 1
            if sandbox.polls > self.provisioning_polls:
                sandbox.status = "RUNNING"
                sandbox.started_at = _now()
            else:
                sandbox.status = "PROVISIONING"
        return sandbox.status

    async def _batch_status(self, request: web.Request) -> web.Response:
        self._check_key(request)
        body = await request.json()
        statuses, errors = [], []
        for sandbox_id in body.get("sandbox_ids", []):
            sandbox = self.sandboxes.get(sandbox_id)
            if sandbox is None:
                errors.append(
                    {"sandbox_id": sandbox_id, "code": "NOT_FOUND", "message": "not found"}
                )
                continue
            statuses.append(
                {
                    "sandbox_id": sandbox.id,
                    "status": self._advance(sandbox),
                    "error_type": sandbox.error_type,
                    "error_message": None,
                    "pending_image_build_id": None,
                }
            )
        return web.json_response({"statuses": statuses, "errors": errors})

    async def _get(self, request: web.Request) -> web.Response:
        self._check_key(request)
        sandbox = self._sandbox(request.match_info["id"])
        self._advance(sandbox)
        return web.json_response(sandbox.to_json())

    async def _error_context(self, request: web.Request) -> web.Response:
        self._check_key(request)
        sandbox = self._sandbox(request.match_info["id"])
        return web.json_response(
            {"status": sandbox.status, "errorType": sandbox.error_type, "errorMessage": None}
        )

    async def _auth(self, request: web.Request) -> web.Response:
        self._check_key(request)
        sandbox = self._sandbox(request.match_info["id"])
        expires = datetime.now(UTC) + timedelta(hours=1)
        return web.json_response(
            {
                "gateway_url": self.gateway_url,
                "token": sandbox.token,
                "user_ns": "standin",
                "job_id": sandbox.job_id,
                "expires_at": expires.isoformat().replace("+00:00", "Z"),
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        self._check_key(request)
        sandbox = self._sandbox(request.match_info["id"])
        if sandbox.status == "TERMINATED":
            raise web.HTTPNotFound(
                text=json.dumps({"detail": f"Sandbox {sandbox.id} already terminated"}),
                content_type="application/json",
            )
        await self._terminate(sandbox, "TERMINATED")
        return web.json_response({"success": True, "message": f"Sandbox {sandbox.id} deleted"})

    async def _terminate(self, sandbox: Sandbox, status: str) -> None:
        """Kills every process group of the sandbox, waits for them, removes its files."""
        if sandbox.status in _ENDED:
            return
        sandbox.status = status
        sandbox.error_type = "TIMEOUT" if status == "TIMEOUT" else None
        sandbox.terminated_at = _now()
        if sandbox.lifetime is not None:
            sandbox.lifetime.cancel()
        sessions = list(sandbox.sessions.values())
        for session in sessions:
            signal_group(session.pid, signal.SIGKILL)
        for session in sessions:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.done.wait(), 10)
        for path in [sandbox.home, *sandbox.upload_dirs]:
            shutil.rmtree(path, ignore_errors=True)

    # ---- gateway ---------------------------------------------------------------------------

    def _gateway_sandbox(self, request: web.Request) -> Sandbox:
        """The sandbox a gateway path names, if the bearer token is its own and it is running."""
        self.calls.append(f"{request.method} gateway:/{request.path.split('/', 3)[-1]}")
        sandbox = self._by_job.get(request.match_info["job"])
        if sandbox is None:
            raise RpcError("not_found", "no such sandbox")
        if request.headers.get("Authorization") != f"Bearer {sandbox.token}":
            raise RpcError("unauthenticated", "invalid sandbox token")
        if sandbox.status != "RUNNING":
            raise RpcError("not_found", f"sandbox {sandbox.id} is {sandbox.status}")
        return sandbox

    async def _upload(self, request: web.Request) -> web.Response:
        try:
            sandbox = self._gateway_sandbox(request)
        except RpcError as error:
            status = 401 if error.code == "unauthenticated" else 410
            body = {"error": "sandbox_terminated" if status == 410 else error.code}
            return web.json_response(body, status=status)
        path = request.query.get("path", "")
        if not path.startswith("/") or "\x00" in path:
            return web.json_response({"detail": "path must be absolute"}, status=400)
        parent = os.path.dirname(path)
        created = first_missing(parent)
        os.makedirs(parent, exist_ok=True)
        if created is not None:
            sandbox.upload_dirs.add(created)
        size = 0
        reader = await request.multipart()
        async for part in reader:
            if getattr(part, "name", None) != "file":
                continue
            with open(path, "wb") as handle:
                while chunk := await part.read_chunk(1 << 20):  # type: ignore[union-attr]
                    size += len(chunk)
                    if size <= MAX_UPLOAD_BYTES:
                        handle.write(chunk)
            self.upload_sizes.append(size)
            if size > MAX_UPLOAD_BYTES:
                os.unlink(path)
                detail = f"file exceeds the maximum upload size of {MAX_UPLOAD_BYTES} bytes"
                return web.json_response({"detail": detail}, status=413)
            return web.json_response(
                {"success": True, "path": path, "size": size, "timestamp": _now()}
            )
        return web.json_response({"detail": "multipart field 'file' missing"}, status=400)

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        streaming = method in ("Start", "Connect")
        try:
            sandbox = self._gateway_sandbox(request)
            body = await request.read()
            if streaming:
                if len(body) < 5 or body[0] & 0b01:
                    raise RpcError("invalid_argument", "expected one uncompressed envelope")
                body = body[5 : 5 + int.from_bytes(body[1:5], "big")]
            if method == "Start":
                return await self._start(request, sandbox, body)
            if method == "Connect":
                return await self._connect(request, sandbox, body)
            if method == "SendInput":
                reply = await self._send_input(sandbox, body)
            elif method == "SendSignal":
                reply = self._send_signal(sandbox, body)
            elif method == "List":
                reply = self._list(sandbox)
            else:
                raise RpcError("unimplemented", f"{_SERVICE}/{method} is not emulated")
        except RpcError as error:
            if streaming:
                response = await _open_stream(request)
                await response.write(_end_frame(error))
                return response
            payload = {"code": error.code, "message": error.message}
            return web.json_response(payload, status=_HTTP_STATUS.get(error.code, 500))
        return web.Response(body=reply.SerializeToString(), content_type="application/proto")

    def _session(self, sandbox: Sandbox, selector: Any) -> Session:
        which = selector.WhichOneof("selector")
        for session in sandbox.sessions.values():
            if (which == "session_uuid" and session.uuid == selector.session_uuid) or (
                which == "pid" and session.pid == selector.pid
            ):
                return session
        raise RpcError("not_found", "no such command session")

    async def _start(self, request: web.Request, sandbox: Sandbox, body: bytes) -> Any:
        pb = _pb()
        start = pb.StartRequest.FromString(body)
        if start.HasField("pty"):
            raise RpcError("unimplemented", "PTY sessions are not emulated")
        session_uuid = start.session_uuid if start.HasField("session_uuid") else ""
        session = sandbox.sessions.get(session_uuid) if session_uuid else None
        if session is None:
            session = await self._spawn(sandbox, start.command, start.stdin, session_uuid)
        return await self._stream(request, session, pb.StartResponse)

    async def _connect(self, request: web.Request, sandbox: Sandbox, body: bytes) -> Any:
        pb = _pb()
        session = self._session(sandbox, pb.ConnectRequest.FromString(body).session)
        return await self._stream(request, session, pb.ConnectResponse)

    async def _spawn(self, sandbox: Sandbox, spec: Any, stdin: bool, uuid: str) -> Session:
        if not spec.cmd:
            raise RpcError("invalid_argument", "command.cmd is empty")
        env = {"PATH": BASE_PATH, "HOME": sandbox.home, "LANG": "C.UTF-8"}
        env.update(sandbox.request.get("environment_vars") or {})
        env.update(sandbox.request.get("secrets") or {})
        env.update(dict(spec.envs))
        cwd = spec.cwd if spec.HasField("cwd") else sandbox.home
        try:
            process = await asyncio.create_subprocess_exec(
                spec.cmd,
                *spec.args,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        except OSError as error:
            raise RpcError("failed_precondition", f"cannot start {spec.cmd}: {error}") from error
        session = Session(
            uuid=uuid or secrets.token_hex(16), process=process, argv=[spec.cmd, *spec.args]
        )
        sandbox.sessions[session.uuid] = session
        self._background(self._pump(session))
        return session

    async def _pump(self, session: Session) -> None:
        """Copies the process's output to every subscriber, then its exit as the EndEvent."""
        pb = _pb()

        def publish(event: Any) -> None:
            for queue in list(session.subscribers):
                queue.put_nowait(event)

        async def copy(stream: asyncio.StreamReader | None, kind: str) -> None:
            assert stream is not None
            while data := await stream.read(READ_CHUNK):
                event = pb.CommandSessionEvent()
                setattr(event.data, kind, data)
                publish(event)

        process = session.process
        await asyncio.gather(copy(process.stdout, "stdout"), copy(process.stderr, "stderr"))
        session.exit_code = await process.wait()
        end = pb.CommandSessionEvent()
        end.end.exit_code = session.exit_code
        end.end.exited = True
        end.end.status = "exited" if session.exit_code >= 0 else "signaled"
        publish(end)
        session.done.set()

    async def _stream(self, request: web.Request, session: Session, kind: Any) -> Any:
        """One server stream: StartEvent, then live output, then the EndEvent (or a replay of it
        when the session has already ended)."""
        pb = _pb()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sent = 0
        session.subscribers.append(queue)
        response = await _open_stream(request)
        try:
            first = pb.CommandSessionEvent()
            first.start.pid = session.pid
            await response.write(_frame(kind(event=first)))
            if session.exit_code is not None:
                queue.put_nowait(
                    pb.CommandSessionEvent(
                        end=pb.CommandSessionEvent.EndEvent(
                            exit_code=session.exit_code, exited=True, status="exited"
                        )
                    )
                )
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    event = pb.CommandSessionEvent()
                    event.keepalive.SetInParent()
                await response.write(_frame(kind(event=event)))
                if event.WhichOneof("event") == "end":
                    break
                if event.WhichOneof("event") == "data":
                    sent += len(event.data.stdout)
                    await self.shaping.carry(len(event.data.stdout) + len(event.data.stderr))
                    if self.drop_stream_after is not None and sent >= self.drop_stream_after:
                        self.drop_stream_after = None
                        self.dropped_streams += 1
                        await response.write(_end_frame(RpcError("unavailable", "stream reset")))
                        return response
            await response.write(_end_frame(None))
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away; the process goes on, as on the real platform
        finally:
            session.subscribers.remove(queue)
        return response

    async def _send_input(self, sandbox: Sandbox, body: bytes) -> Any:
        pb = _pb()
        request = pb.SendInputRequest.FromString(body)
        session = self._session(sandbox, request.session)
        key = request.input_uuid if request.HasField("input_uuid") else ""
        if key and key in session.applied:
            return pb.SendInputResponse()
        stdin = session.process.stdin
        if stdin is None:
            raise RpcError("failed_precondition", "the session was started without stdin")
        if session.exit_code is not None or stdin.is_closing():
            raise RpcError("failed_precondition", "the process has exited")
        if request.input.WhichOneof("input") != "stdin":
            raise RpcError("unimplemented", "only stdin input is emulated")
        try:
            stdin.write(request.input.stdin)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise RpcError("failed_precondition", "the process closed its stdin") from error
        if key:
            session.applied.add(key)
        return pb.SendInputResponse()

    def _send_signal(self, sandbox: Sandbox, body: bytes) -> Any:
        pb = _pb()
        request = pb.SendSignalRequest.FromString(body)
        session = self._session(sandbox, request.session)
        numbers = {pb.SIGNAL_SIGTERM: signal.SIGTERM, pb.SIGNAL_SIGKILL: signal.SIGKILL}
        if request.signal not in numbers:
            raise RpcError("invalid_argument", "signal must be SIGTERM or SIGKILL")
        key = request.signal_uuid if request.HasField("signal_uuid") else ""
        if not (key and key in session.applied) and session.exit_code is None:
            signal_group(session.pid, numbers[request.signal])
        if key:
            session.applied.add(key)
        return pb.SendSignalResponse()

    def _list(self, sandbox: Sandbox) -> Any:
        pb = _pb()
        reply = pb.ListResponse()
        for session in sandbox.sessions.values():
            if session.exit_code is None:
                info = reply.sessions.add(pid=session.pid, session_uuid=session.uuid)
                info.command.cmd = session.argv[0]
                info.command.args.extend(session.argv[1:])
        return reply


# ---- Connect framing -----------------------------------------------------------------------


async def _open_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/connect+proto"})
    await response.prepare(request)
    return response


def _frame(message: Any) -> bytes:
    data = message.SerializeToString()
    return struct.pack(">BI", 0, len(data)) + data


def _end_frame(error: RpcError | None) -> bytes:
    """The Connect end-of-stream message: flag 0x02 and a JSON body, with the error if any."""
    body: dict[str, Any] = {}
    if error is not None:
        body["error"] = {"code": error.code, "message": error.message}
    data = json.dumps(body).encode()
    return struct.pack(">BI", 0b10, len(data)) + data


__all__ = ["PrimeStandIn", "RpcError"]


#: the stand-in :func:`rlm_standins.launch.launch` starts for this provider
STANDIN = PrimeStandIn
