"""A wire-level stand-in of E2B: the real ``e2b`` SDK talks to it as it talks to E2B's cloud.

Like moto or LocalStack, it speaks the provider's own protocol on loopback so that the adapter is
exercised through the unmodified SDK. Two HTTP servers, as on the real platform:

* the **control API** (``api_url``; the SDK's ``api_url=`` option or ``E2B_API_URL``), JSON over
  REST with the ``X-API-KEY`` header: ``POST /v2/sandboxes`` (create; 201 with ``sandboxID``,
  ``envdVersion``, ``envdAccessToken``...; idempotent by ``Idempotency-Key``; unknown templates
  answer 404), ``GET /sandboxes/{id}`` and ``DELETE /sandboxes/{id}`` (204, 404 when gone);
* **envd behind the sandbox proxy** (``envd_url``; the SDK's ``sandbox_url=`` option or
  ``E2B_SANDBOX_URL``). As at ``https://sandbox.e2b.app``, one address serves every sandbox and
  the ``E2b-Sandbox-Id`` header picks one (an unknown or killed sandbox gets the proxy's 502
  "... was not found"); every call but ``/health`` needs the sandbox's ``X-Access-Token``.
  Endpoints: ``GET /health``, ``POST /files`` (``application/octet-stream``, optionally gzip, or
  ``multipart/form-data``; parent directories are created), ``GET /files``, and the Connect RPC
  service ``process.Process`` served by the SDK's own generated server classes
  (``ProcessASGIApplication``, JSON and protobuf codecs): ``Start`` and ``Connect`` (server
  streams of start, data, end and keepalive events), ``StreamInput`` (client stream),
  ``SendInput``, ``CloseStdin``, ``SendSignal`` (SIGTERM/SIGKILL) and ``List``.

Each sandbox is backed by local processes: ``Start`` runs the requested ``cmd``/``args`` as a real
subprocess in its own process group, with a fresh environment (a sandbox does not inherit the
host's) made of a base ``PATH``/``HOME``/``USER``/``LANG``, ``E2B_SANDBOX``/``E2B_SANDBOX_ID``, the
sandbox's ``envVars`` and the command's ``envs``. Each sandbox's home directory (the working
directory of commands without ``cwd``, where relative paths point) is a fresh temporary
directory; absolute paths are used as they are on this host (callers keep them unique). A
process outlives the stream that started it, as in envd (``Connect`` reattaches). Killing a
sandbox (``DELETE``, or its ``timeout`` running out) kills every process group it started and
removes its home and the directories its uploads created.

Not emulated: ``E2B_DEBUG`` mode (the SDK then skips the control API: ``kill()`` does nothing
and every sandbox is ``debug_sandbox_id``, so a stand-in could not tell sandboxes apart or see
them end), the ``filesystem.Filesystem`` RPC service, PTYs, ``Update``, users (``username`` and
Basic auth are accepted and ignored), templates (a template is only a name that must be known;
commands use the host's binaries), resource limits, network policy, pause/resume, snapshots,
volumes and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
import signal
import tempfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from rlm_standins._processes import first_missing, signal_group, with_descendants
from rlm_standins._server import AiohttpStandIn
from rlm_standins._shaping import Shaping
from rlm_standins.launch import Hermetic

#: the envd version the stand-in reports: the lowest whose features it implements (octet-stream
#: uploads, closing stdin, the default user), so the SDK uses exactly those
ENVD_VERSION = "0.5.7"
DEFAULT_TEMPLATES = ("rlm-runner", "base")
DEFAULT_TIMEOUT = 300
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READ_CHUNK = 64 * 1024
KEEPALIVE_DEFAULT = 50.0


def _pb() -> Any:
    """The SDK's own generated messages: the stand-in and the client share one schema."""
    from e2b.envd.process import process_pb

    return process_pb


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass
class Proc:
    """One process started through ``Start``: its subscribers get its events."""

    process: asyncio.subprocess.Process
    config: Any
    tag: str | None
    subscribers: list[asyncio.Queue[Any]] = field(default_factory=list)
    end: Any = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Sandbox:
    """A stand-in sandbox: its create request, its envd token, its home and its processes."""

    id: str
    template: str
    token: str
    home: str
    request: dict[str, Any]
    started_at: datetime = field(default_factory=_now)
    end_at: datetime = field(default_factory=_now)
    alive: bool = True
    procs: dict[int, Proc] = field(default_factory=dict)
    upload_dirs: set[str] = field(default_factory=set)
    lifetime: asyncio.TimerHandle | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``Sandbox`` resource that ``POST /v2/sandboxes`` returns."""
        return {
            "templateID": self.template,
            "sandboxID": self.id,
            "clientID": "standin",
            "alias": self.template,
            "envdVersion": ENVD_VERSION,
            "envdAccessToken": self.token,
            "trafficAccessToken": None,
            "domain": None,
        }

    def detail(self) -> dict[str, Any]:
        """The ``SandboxDetail`` resource that ``GET /sandboxes/{id}`` returns."""
        return {
            **self.to_json(),
            "startedAt": _iso(self.started_at),
            "endAt": _iso(self.end_at),
            "cpuCount": 2,
            "memoryMB": 512,
            "diskSizeMB": 1024,
            "metadata": self.request.get("metadata") or {},
            "state": "running",
        }


def _throttleable(request: web.Request) -> bool:
    """What the shaping may throttle: sandbox create and kill, file uploads (the control API's
    and envd's plain requests; not the process streams)."""
    path = request.path
    return (request.method, path) in {("POST", "/v2/sandboxes"), ("POST", "/files")} or (
        request.method == "DELETE" and path.startswith("/sandboxes/")
    )


class E2BStandIn(AiohttpStandIn):
    """E2B's control API and envd on loopback, backed by local processes.

    Use as a context manager. ``api_url`` goes into the SDK's ``api_url`` (``E2B_API_URL``),
    ``envd_url`` into ``sandbox_url`` (``E2B_SANDBOX_URL``) and ``api_key`` into ``api_key``
    (``E2B_API_KEY``). ``templates`` are the template names that exist.
    """

    #: the request in :attr:`calls` that creates a sandbox
    create_call = "POST /v2/sandboxes"

    def reach(self, home: str) -> tuple[Hermetic, dict[str, Any]]:
        """The environment the provider's SDK must see to reach this stand-in (``home``: an
        empty directory for SDKs that keep settings there), and the adapter's kwargs."""
        # E2B_DEBUG and friends would send the SDK elsewhere.
        kwargs = {"api_key": self.api_key, "api_url": self.api_url, "sandbox_url": self.envd_url}
        return Hermetic("E2B_"), kwargs

    def __init__(
        self,
        *,
        api_key: str | None = None,
        templates: tuple[str, ...] = DEFAULT_TEMPLATES,
        drop_output_stream_after: int | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        super().__init__(shaping)
        self.api_key = api_key or f"e2b_standin_{secrets.token_hex(12)}"
        #: the first process event stream that has sent this many output bytes is cut (as a
        #: proxy or the load balancer would); the process keeps running, and its output is
        #: dropped until someone connects again (envd keeps none for absent subscribers)
        self.drop_output_stream_after = (
            drop_output_stream_after
            if drop_output_stream_after is not None
            else self.shaping.drop_after
        )
        #: event streams cut by ``drop_output_stream_after``
        self.dropped_streams = 0
        self.templates = set(templates)
        self.sandboxes: dict[str, Sandbox] = {}
        # self.calls: every request, as ``"POST /v2/sandboxes"`` or
        # ``"envd POST /process.Process/Start"``
        self._idempotency: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._process_app: Any = None
        self.api_url = ""
        self.envd_url = ""

    # ---- lifecycle -------------------------------------------------------------------------

    thread_name = "e2b-standin"

    def start(self) -> E2BStandIn:
        """Starts the control API and envd (ports chosen by the kernel)."""
        _pb()  # fail here, not inside a handler, when the SDK is missing
        return super().start()

    def _on_started(self, ports: tuple[int, int]) -> None:
        self.api_url = f"http://127.0.0.1:{ports[0]}"
        self.envd_url = f"http://127.0.0.1:{ports[1]}"

    async def _serve(self) -> tuple[int, int]:
        from e2b.envd.process.process_connect import ProcessASGIApplication

        shape = self._shaped(_throttleable, {"code": 429, "message": "Rate limit exceeded"})
        api = web.Application(middlewares=[*shape, self._api_auth])
        api.router.add_post("/v2/sandboxes", self._create)
        api.router.add_get("/sandboxes/{id}", self._get)
        api.router.add_delete("/sandboxes/{id}", self._delete)

        self._process_app = ProcessASGIApplication(_ProcessService(self))
        envd = web.Application(middlewares=[*shape, self._proxy], client_max_size=1 << 40)
        envd.router.add_get("/health", self._health)
        envd.router.add_post("/files", self._upload)
        envd.router.add_get("/files", self._download)
        envd.router.add_post(f"{self._process_app.path}/{{method}}", self._rpc)
        api_port, envd_port = await self._listen(api, envd, handler_cancellation=True)
        return api_port, envd_port

    async def _shutdown(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self._kill_sandbox(sandbox)
        await self._stop_listening()

    # ---- what tests look at ----------------------------------------------------------------

    def live_sandboxes(self) -> list[str]:
        """Ids of sandboxes not yet killed."""
        return [s.id for s in list(self.sandboxes.values()) if s.alive]

    def end_sandboxes(self) -> None:
        """Ends every live sandbox from the provider's side, as its own timeout would (no
        client asked): what an adapter holding one, or a warm pool, must survive."""

        async def end() -> None:
            for sandbox in list(self.sandboxes.values()):
                if sandbox.alive:
                    await self._kill_sandbox(sandbox)

        self._call(end())

    def live_pids(self) -> list[int]:
        """Every live process started in any sandbox, with its descendants (from ``/proc``)."""
        roots = [
            proc.pid
            for sandbox in list(self.sandboxes.values())
            for proc in list(sandbox.procs.values())
            if proc.end is None
        ]
        return with_descendants(roots, zombies=True)

    # ---- control API -----------------------------------------------------------------------

    @web.middleware
    async def _api_auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.calls.append(f"{request.method} {request.path}")
        if request.headers.get("X-API-KEY") != self.api_key:
            return _api_error(401, "Invalid API key")
        return await handler(request)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        template = body.get("templateID")
        if not template:
            return _api_error(400, "templateID is required")
        if template not in self.templates:
            return _api_error(404, f"template '{template}' not found")
        key = request.headers.get("Idempotency-Key")
        if key and key in self._idempotency:
            return web.json_response(self.sandboxes[self._idempotency[key]].to_json(), status=201)
        sandbox = Sandbox(
            id=f"i{next(self._ids):03d}{secrets.token_hex(8)}",
            template=template,
            token=secrets.token_urlsafe(24),
            home=tempfile.mkdtemp(prefix="e2b-standin-"),
            request=body,
        )
        timeout = int(body.get("timeout") or DEFAULT_TIMEOUT)
        sandbox.end_at = sandbox.started_at + timedelta(seconds=timeout)
        loop = asyncio.get_running_loop()
        sandbox.lifetime = loop.call_later(
            timeout, lambda: self._background(self._kill_sandbox(sandbox))
        )
        self.sandboxes[sandbox.id] = sandbox
        if key:
            self._idempotency[key] = sandbox.id
        return web.json_response(sandbox.to_json(), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        sandbox = self.sandboxes.get(request.match_info["id"])
        if sandbox is None or not sandbox.alive:
            return _api_error(404, f"sandbox '{request.match_info['id']}' not found")
        return web.json_response(sandbox.detail())

    async def _delete(self, request: web.Request) -> web.Response:
        sandbox = self.sandboxes.get(request.match_info["id"])
        if sandbox is None or not sandbox.alive:
            return _api_error(404, f"sandbox '{request.match_info['id']}' not found")
        await self._kill_sandbox(sandbox)
        return web.Response(status=204)

    async def _kill_sandbox(self, sandbox: Sandbox) -> None:
        """Kills every process group of the sandbox, waits for them, removes its files."""
        if not sandbox.alive:
            return
        sandbox.alive = False
        if sandbox.lifetime is not None:
            sandbox.lifetime.cancel()
        procs = list(sandbox.procs.values())
        for proc in procs:
            signal_group(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.done.wait(), 10)
        for path in [sandbox.home, *sandbox.upload_dirs]:
            shutil.rmtree(path, ignore_errors=True)

    # ---- envd, behind the sandbox proxy ----------------------------------------------------

    @web.middleware
    async def _proxy(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Routes by ``E2b-Sandbox-Id`` as E2B's proxy does; envd checks the access token."""
        self.calls.append(f"envd {request.method} {request.path}")
        sandbox_id = request.headers.get("E2b-Sandbox-Id", "")
        sandbox = self.sandboxes.get(sandbox_id)
        if sandbox is None or not sandbox.alive:
            return web.json_response(
                {
                    "code": 502,
                    "message": f"The sandbox {sandbox_id} was not found",
                    "sandboxId": sandbox_id,
                },
                status=502,
            )
        if request.path != "/health" and request.headers.get("X-Access-Token") != sandbox.token:
            # A Connect error body (string code), which RPC clients and file calls both read.
            return web.json_response(
                {"code": "unauthenticated", "message": "invalid access token"}, status=401
            )
        request["sandbox"] = sandbox
        return await handler(request)

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        return await _serve_asgi(self._process_app, request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    def _resolve(self, sandbox: Sandbox, path: str) -> str:
        return os.path.normpath(path if path.startswith("/") else os.path.join(sandbox.home, path))

    async def _upload(self, request: web.Request) -> web.Response:
        sandbox: Sandbox = request["sandbox"]
        written: list[dict[str, Any]] = []
        if request.content_type == "application/octet-stream":
            path = request.query.get("path")
            if not path:
                return _files_error(400, "path is required")
            gzipped = request.headers.get("Content-Encoding", "").lower() == "gzip"
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None

            async def chunks() -> AsyncIterator[bytes]:
                async for chunk in request.content.iter_chunked(READ_CHUNK):
                    yield inflater.decompress(chunk) if inflater else chunk
                if inflater:
                    yield inflater.flush()

            written.append(await self._write(sandbox, path, chunks()))
        elif request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if getattr(part, "name", None) != "file":
                    continue
                path = request.query.get("path") or part.filename  # type: ignore[union-attr]
                if not path:
                    return _files_error(400, "path is required")

                async def parts(part: Any = part) -> AsyncIterator[bytes]:
                    while chunk := await part.read_chunk(1 << 20):
                        yield chunk

                written.append(await self._write(sandbox, path, parts()))
        else:
            return _files_error(400, f"unsupported content type {request.content_type!r}")
        if not written:
            return _files_error(400, "no file in the request")
        return web.json_response(written)

    async def _write(
        self, sandbox: Sandbox, path: str, data: AsyncIterator[bytes]
    ) -> dict[str, Any]:
        target = self._resolve(sandbox, path)
        parent = os.path.dirname(target)
        created = first_missing(parent)
        os.makedirs(parent, exist_ok=True)
        if created is not None and not created.startswith(sandbox.home):
            sandbox.upload_dirs.add(created)
        with open(target, "wb") as handle:
            async for chunk in data:
                handle.write(chunk)
        return {"name": os.path.basename(target), "type": "file", "path": target}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        sandbox: Sandbox = request["sandbox"]
        target = self._resolve(sandbox, request.query.get("path", ""))
        if not os.path.isfile(target):
            return _files_error(404, f"path '{target}' does not exist")
        return web.FileResponse(target, headers={"Content-Type": "application/octet-stream"})

    # ---- processes -------------------------------------------------------------------------

    async def spawn(self, sandbox: Sandbox, request: Any) -> Proc:
        """Starts the ``StartRequest``'s process in the sandbox (its own process group)."""
        config = request.process
        env = {
            "PATH": BASE_PATH,
            "HOME": sandbox.home,
            "USER": "user",
            "LANG": "C.UTF-8",
            "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": sandbox.id,
            **(sandbox.request.get("envVars") or {}),
            **dict(config.envs),
        }
        cwd = config.cwd if config.has_field("cwd") and config.cwd else sandbox.home
        stdin = request.stdin if request.has_field("stdin") else True
        process = await asyncio.create_subprocess_exec(
            config.cmd,
            *config.args,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self._resolve(sandbox, cwd),
            env=env,
            start_new_session=True,
        )
        tag = request.tag if request.has_field("tag") else None
        proc = Proc(process=process, config=config, tag=tag)
        sandbox.procs[proc.pid] = proc
        self._background(self._pump(proc))
        return proc

    async def _pump(self, proc: Proc) -> None:
        """Fans the process's output out to its subscribers, then its end event."""
        from protobuf import Oneof

        pb = _pb()

        def publish(event: Any) -> None:
            for queue in list(proc.subscribers):
                queue.put_nowait(event)

        async def read(stream: asyncio.StreamReader | None, name: str) -> None:
            assert stream is not None
            while chunk := await stream.read(READ_CHUNK):
                data = pb.ProcessEvent.DataEvent(output=Oneof(name, chunk))
                publish(pb.ProcessEvent(event=Oneof("data", data)))

        await asyncio.gather(
            read(proc.process.stdout, "stdout"), read(proc.process.stderr, "stderr")
        )
        code = await proc.process.wait()
        if code < 0:
            status = f"signal: {signal.Signals(-code).name.removeprefix('SIG').lower()}"
            exit_code = -1  # as Go reports a process ended by a signal
        else:
            status, exit_code = f"exit status {code}", code
        proc.end = pb.ProcessEvent.EndEvent(exit_code=exit_code, exited=code >= 0, status=status)
        publish(pb.ProcessEvent(event=Oneof("end", proc.end)))
        proc.done.set()


class _ProcessService:
    """The ``process.Process`` service (envd's), served by the SDK's generated ASGI classes."""

    def __init__(self, standin: E2BStandIn) -> None:
        self.standin = standin

    def _sandbox(self, ctx: Any) -> Sandbox:
        sandbox = self.standin.sandboxes.get(ctx.request_headers.get("e2b-sandbox-id", ""))
        assert sandbox is not None  # the proxy middleware let the request through
        return sandbox

    def _find(self, sandbox: Sandbox, selector: Any) -> Proc:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        choice = selector.selector if selector is not None else None
        for proc in sandbox.procs.values():
            if proc.end is not None or choice is None:
                continue
            if (choice.field == "pid" and proc.pid == choice.value) or (
                choice.field == "tag" and proc.tag == choice.value
            ):
                return proc
        what = f"{choice.field} {choice.value}" if choice is not None else "no selector"
        raise ConnectError(Code.NOT_FOUND, f"process with {what} not found")

    async def _events(self, proc: Proc, first: Any, response: type, ctx: Any) -> AsyncIterator[Any]:
        """A server stream of the process's events: ``first``, then data, keepalives, end."""
        from protobuf import Oneof

        pb = _pb()
        try:
            interval = float(ctx.request_headers.get("keepalive-ping-interval", ""))
        except ValueError:
            interval = KEEPALIVE_DEFAULT
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        queue: asyncio.Queue[Any] = asyncio.Queue()
        sent = 0
        proc.subscribers.append(queue)
        try:
            yield response(event=pb.ProcessEvent(event=first))
            if proc.end is not None and queue.empty():
                yield response(event=pb.ProcessEvent(event=Oneof("end", proc.end)))
                return
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), interval)
                except TimeoutError:
                    keepalive = pb.ProcessEvent.KeepAlive()
                    yield response(event=pb.ProcessEvent(event=Oneof("keepalive", keepalive)))
                    continue
                yield response(event=event)
                if event.event is not None and event.event.field == "end":
                    return
                if event.event is not None and event.event.field == "data":
                    sent += len(event.event.value.output.value)
                    await self.standin.shaping.carry(len(event.event.value.output.value))
                    drop = self.standin.drop_output_stream_after
                    if drop is not None and sent >= drop:
                        self.standin.drop_output_stream_after = None
                        self.standin.dropped_streams += 1
                        raise ConnectError(Code.UNAVAILABLE, "upstream connect error or disconnect")
        finally:
            with contextlib.suppress(ValueError):
                proc.subscribers.remove(queue)

    async def start(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError
        from protobuf import Oneof

        pb = _pb()
        sandbox = self._sandbox(ctx)
        try:
            proc = await self.standin.spawn(sandbox, request)
        except OSError as error:
            raise ConnectError(Code.INVALID_ARGUMENT, f"error starting process: {error}") from error
        first = Oneof("start", pb.ProcessEvent.StartEvent(pid=proc.pid))
        async for event in self._events(proc, first, pb.StartResponse, ctx):
            yield event

    async def connect(self, request: Any, ctx: Any) -> AsyncIterator[Any]:
        from protobuf import Oneof

        pb = _pb()
        proc = self._find(self._sandbox(ctx), request.process)
        first = Oneof("start", pb.ProcessEvent.StartEvent(pid=proc.pid))
        async for event in self._events(proc, first, pb.ConnectResponse, ctx):
            yield event

    async def _write_stdin(self, proc: Proc, data: Any) -> None:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        stdin = proc.process.stdin
        if stdin is None or stdin.is_closing():
            raise ConnectError(Code.FAILED_PRECONDITION, "stdin is not enabled or closed")
        if data is None or data.input is None or data.input.field != "stdin":
            raise ConnectError(Code.INVALID_ARGUMENT, "only stdin input is supported (no PTY)")
        await self.standin.shaping.carry(len(data.input.value))
        try:
            stdin.write(data.input.value)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as error:
            raise ConnectError(Code.NOT_FOUND, f"process {proc.pid} has exited") from error

    async def send_input(self, request: Any, ctx: Any) -> Any:
        proc = self._find(self._sandbox(ctx), request.process)
        await self._write_stdin(proc, request.input)
        return _pb().SendInputResponse()

    async def stream_input(self, requests: AsyncIterator[Any], ctx: Any) -> Any:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        sandbox = self._sandbox(ctx)
        proc: Proc | None = None
        async for message in requests:
            event = message.event
            if event is None or event.field == "keepalive":
                continue
            if event.field == "start":
                proc = self._find(sandbox, event.value.process)
            elif proc is None:
                raise ConnectError(Code.INVALID_ARGUMENT, "the first message must be a start")
            else:
                await self._write_stdin(proc, event.value.input)
        return _pb().StreamInputResponse()

    async def close_stdin(self, request: Any, ctx: Any) -> Any:
        proc = self._find(self._sandbox(ctx), request.process)
        if proc.process.stdin is not None:
            proc.process.stdin.close()
        return _pb().CloseStdinResponse()

    async def send_signal(self, request: Any, ctx: Any) -> Any:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        pb = _pb()
        proc = self._find(self._sandbox(ctx), request.process)
        numbers = {pb.Signal.SIGKILL: signal.SIGKILL, pb.Signal.SIGTERM: signal.SIGTERM}
        if request.signal not in numbers:
            raise ConnectError(Code.INVALID_ARGUMENT, f"unsupported signal {request.signal}")
        signal_group(proc.pid, numbers[request.signal])
        return pb.SendSignalResponse()

    async def list(self, request: Any, ctx: Any) -> Any:
        pb = _pb()
        processes = [
            pb.ProcessInfo(config=proc.config, pid=proc.pid, tag=proc.tag)
            for proc in self._sandbox(ctx).procs.values()
            if proc.end is None
        ]
        return pb.ListResponse(processes=processes)

    async def update(self, request: Any, ctx: Any) -> Any:
        from connectrpc.code import Code
        from connectrpc.errors import ConnectError

        raise ConnectError(Code.UNIMPLEMENTED, "PTYs are not emulated by the stand-in")


# ---- ASGI under aiohttp ----------------------------------------------------------------------


async def _serve_asgi(app: Any, request: web.Request) -> web.StreamResponse:
    """Runs one request through an ASGI application (the generated Connect server), streaming
    the request body in and the response out, so that client and server streams work."""
    response: web.StreamResponse | None = None
    body_done = False
    finished = asyncio.Event()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.raw_path.encode(),
        "query_string": request.query_string.encode(),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": request.transport.get_extra_info("peername") if request.transport else None,
        "server": None,
        "extensions": {},
    }

    async def receive() -> dict[str, Any]:
        nonlocal body_done
        if body_done:
            await finished.wait()
            return {"type": "http.disconnect"}
        chunk = await request.content.readany()
        if not chunk:
            body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal response
        if message["type"] == "http.response.start":
            headers = CIMultiDict((k.decode(), v.decode()) for k, v in message["headers"])
            response = web.StreamResponse(status=message["status"], headers=headers)
            await response.prepare(request)
        elif message["type"] == "http.response.body" and response is not None:
            if body := message.get("body", b""):
                await response.write(body)
            if not message.get("more_body", False):
                await response.write_eof()

    try:
        await app(scope, receive, send)
    except (ConnectionError, RuntimeError):
        pass  # the client went away mid-stream
    finally:
        finished.set()
    if response is None:
        return web.Response(status=500, text="the RPC handler sent no response")
    return response


# ---- helpers ---------------------------------------------------------------------------------


def _api_error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


def _files_error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "message": message}, status=status)


__all__ = ["DEFAULT_TEMPLATES", "ENVD_VERSION", "E2BStandIn"]


#: the stand-in :func:`rlm_standins.launch.launch` starts for this provider
STANDIN = E2BStandIn
