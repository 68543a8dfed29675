"""A wire-level stand-in of Daytona: the real ``daytona`` SDK (``AsyncDaytona``) talks to it.

Like moto or LocalStack, it speaks the provider's own protocol on loopback, so that the adapter is
exercised through the unmodified SDK. One HTTP server carries the three surfaces the SDK uses:

* the **control API** under ``/api`` (``api_url``; the SDK reads ``DAYTONA_API_URL``), JSON over
  REST with ``Authorization: Bearer <api key>``: ``POST /sandbox`` (from a snapshot, or from an
  image: ``buildInfo.dockerfileContent`` is recorded and the sandbox goes through
  ``pending_build`` and ``building_snapshot``), ``GET /sandbox/{id}``, ``DELETE /sandbox/{id}``,
  ``GET /sandbox/{id}/toolbox-proxy-url``;
* the **event socket**: Socket.IO at ``/api/socket.io/`` (token in the ``auth`` payload), which
  pushes ``sandbox.state.updated`` so that the SDK's wait-until-started wakes up without
  polling (it falls back to polling ``GET /sandbox/{id}`` when the socket is unreachable);
* the **toolbox** (the daemon inside each sandbox, behind the ``toolboxProxyUrl`` the control
  API returns) under ``/toolbox/{sandboxId}``: ``POST /files/bulk-upload`` (multipart
  ``files[i].path`` / ``files[i].file``, parent directories created), ``POST /files/folder``,
  and the process *sessions*: ``POST /process/session``, ``GET``/``DELETE
  /process/session/{sid}``, ``POST /process/session/{sid}/exec`` (``runAsync``,
  ``suppressInputEcho``), ``GET .../command/{cid}``, ``GET .../command/{cid}/logs`` (plain, or a
  WebSocket with ``follow=true`` carrying the log with the daemon's ``\\x01\\x01\\x01`` /
  ``\\x02\\x02\\x02`` stdout/stderr markers until the command exits) and ``POST
  .../command/{cid}/input`` (written to the command's stdin; echoed into its log as stdout unless
  the command was started with ``suppressInputEcho``, as the daemon does).

Sessions behave like the daemon's: each is a long-lived ``bash`` in its own process group, with
the sandbox's environment (a fresh one: a base ``PATH``/``HOME``, ``DAYTONA_SANDBOX_*`` and the
create request's ``env``; never the host's). A command is written to that shell wrapped as the
daemon wraps it (``session/execute.go``): its stdout and stderr go to two FIFOs, each read by a
bash ``while IFS= read -r line`` loop that ``printf``s every line behind its stream marker into
one shared log file (bash reads a pipe a byte at a time, and ``printf`` writes a long line in
several ``write`` calls, so a long stdout line can be split by stderr lines); its exit status
lands in a file. The log file is tailed every 20 ms and streamed in 1 KiB WebSocket messages
(``util/log_reader.go``). Commands in one session run one after another, and ``cd`` or exported
variables carry over. Deleting a session sends SIGTERM to its process group, then SIGKILL after ``kill_grace``
seconds. Each sandbox's home is a fresh temporary directory; uploads are written at the absolute
path they name. Deleting a sandbox kills all its sessions and removes its home and the
directories its uploads created.

Not emulated: images (recorded; commands run with the host's binaries), resources, network
policy, auto-stop/archive timers, snapshots, volumes, PTY sessions, ``process/execute``,
``code-run``, preview links, git, LSP and computer use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

from rlm_standins._processes import alive, first_missing, with_descendants
from rlm_standins._server import AiohttpStandIn
from rlm_standins._shaping import Shaping
from rlm_standins.launch import Hermetic

BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDOUT_PREFIX = b"\x01\x01\x01"
STDERR_PREFIX = b"\x02\x02\x02"
READ_CHUNK = 256 * 1024
PIPE_SIZE = 1 << 20
EXIT_POLL_SECONDS = 0.02
#: the daemon's log reader polls the command's log file every 20 ms (util/log_reader.go, v0.190)
LOG_POLL_SECONDS = 0.02
#: and sends what it read in WebSocket messages of at most 1 KiB (same file)
WS_MESSAGE_BYTES = 1024
_F_SETPIPE_SZ = 1031


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _error(status: int, message: str, request: web.Request) -> web.HTTPException:
    """An error in the shape of the daemon's and the API's ``ErrorResponse``."""
    body = {
        "statusCode": status,
        "message": message,
        "path": request.path,
        "method": request.method,
        "timestamp": _now(),
    }
    error = web.HTTPException(text=json.dumps(body), content_type="application/json")
    error.set_status(status)
    return error


@dataclass
class Command:
    """One command run in a session: its FIFOs, its log (with stream markers), its exit code."""

    id: str
    command: str
    directory: str
    suppress_echo: bool
    log: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    fds: dict[str, int] = field(default_factory=dict)
    updated: asyncio.Event = field(default_factory=asyncio.Event)
    input_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def append(self, data: bytes) -> None:
        self.log += data
        self.notify()

    def notify(self) -> None:
        event, self.updated = self.updated, asyncio.Event()
        event.set()

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "command": self.command, "exitCode": self.exit_code}


@dataclass
class Session:
    """A daemon session: one ``bash`` reading wrapped commands from its stdin."""

    id: str
    shell: asyncio.subprocess.Process
    directory: str
    commands: dict[str, Command] = field(default_factory=dict)
    ended: bool = False

    @property
    def pid(self) -> int:
        return self.shell.pid


@dataclass
class Sandbox:
    """A stand-in sandbox: its create request, state, home directory and sessions."""

    id: str
    request: dict[str, Any]
    home: str
    organization_id: str
    state: str = "creating"
    created_at: str = field(default_factory=_now)
    sessions: dict[str, Session] = field(default_factory=dict)
    upload_dirs: set[str] = field(default_factory=set)

    def environment(self) -> dict[str, str]:
        """What processes in this sandbox see: a fresh environment, as in a container."""
        return {
            "PATH": BASE_PATH,
            "HOME": self.home,
            "DAYTONA_SANDBOX_ID": self.id,
            "DAYTONA_SANDBOX_USER": self.request.get("user") or "daytona",
            **(self.request.get("env") or {}),
        }

    def to_json(self, toolbox_url: str) -> dict[str, Any]:
        """The ``Sandbox`` resource as the API returns it (camelCase)."""
        r = self.request
        build = r.get("buildInfo")
        return {
            "id": self.id,
            "organizationId": self.organization_id,
            "name": r.get("name") or self.id,
            "snapshot": r.get("snapshot"),
            "user": r.get("user") or "daytona",
            "env": r.get("env") or {},
            "labels": r.get("labels") or {},
            "public": bool(r.get("public")),
            "networkBlockAll": bool(r.get("networkBlockAll")),
            "networkAllowList": r.get("networkAllowList"),
            "kvm": False,
            "target": r.get("target") or "us",
            "cpu": int(r.get("cpu") or 1),
            "gpu": int(r.get("gpu") or 0),
            "memory": int(r.get("memory") or 1),
            "disk": int(r.get("disk") or 3),
            "state": self.state,
            "desiredState": "destroyed" if self.state.startswith("destroy") else "started",
            "autoStopInterval": r.get("autoStopInterval", 15),
            "autoArchiveInterval": r.get("autoArchiveInterval", 10080),
            "autoDeleteInterval": r.get("autoDeleteInterval", -1),
            "buildInfo": (
                {
                    "dockerfileContent": build.get("dockerfileContent", ""),
                    "contextHashes": build.get("contextHashes") or [],
                    "createdAt": self.created_at,
                    "updatedAt": self.created_at,
                    "snapshotRef": f"standin-{self.id}",
                }
                if build
                else None
            ),
            "createdAt": self.created_at,
            "updatedAt": _now(),
            "toolboxProxyUrl": toolbox_url,
        }


def _throttleable(request: web.Request) -> bool:
    """What the shaping may throttle: sandbox create and delete, uploads, session create and
    command start (not log streams, polls or stdin writes)."""
    method, path = request.method, request.path
    if method == "POST":
        return path == "/api/sandbox" or path.endswith(
            ("/files/bulk-upload", "/process/session", "/exec")
        )
    return method == "DELETE" and path.startswith("/api/sandbox/")


class DaytonaStandIn(AiohttpStandIn):
    """The Daytona API, event socket and toolbox on loopback, backed by local processes.

    Use as a context manager; ``api_url`` goes into ``DAYTONA_API_URL`` (or the adapter's
    ``api_url``) and ``api_key`` into ``DAYTONA_API_KEY``. ``step_delay`` is how long each
    provisioning state lasts; ``kill_grace`` how long a session may take to exit after SIGTERM.
    ``drop_log_stream_after``: the first following log stream that has sent that many bytes is
    closed (code 1000, as a proxy or the daemon restarting would) while its command runs.
    """

    #: the request in :attr:`calls` that creates a sandbox
    create_call = "POST /api/sandbox"

    def reach(self, home: str) -> tuple[Hermetic, dict[str, Any]]:
        """The environment the provider's SDK must see to reach this stand-in (``home``: an
        empty directory for SDKs that keep settings there), and the adapter's kwargs."""
        return Hermetic("DAYTONA_"), {"api_url": self.api_url, "api_key": self.api_key}

    def __init__(
        self,
        *,
        api_key: str | None = None,
        step_delay: float = 0.05,
        kill_grace: float = 2.0,
        drop_log_stream_after: int | None = None,
        shaping: Shaping | None = None,
    ) -> None:
        super().__init__(shaping)
        self.api_key = api_key or f"dtn_standin_{secrets.token_hex(12)}"
        self.organization_id = f"org-{secrets.token_hex(4)}"
        self.step_delay = step_delay
        self.kill_grace = kill_grace
        self.sandboxes: dict[str, Sandbox] = {}
        # self.calls: ``METHOD /path`` of every request (toolbox paths with the sandbox id)
        #: the ``auth`` payload of every event-socket connection that was accepted
        self.socket_connections: list[dict[str, Any]] = []
        #: bytes received through ``.../input`` (what the host wrote to commands' stdin)
        self.input_bytes = 0
        self.drop_log_stream_after = (
            drop_log_stream_after if drop_log_stream_after is not None else self.shaping.drop_after
        )
        #: log streams closed by ``drop_log_stream_after``
        self.dropped_streams = 0
        self._ids = itertools.count(1)
        self._sio: Any = None
        self._sockets: set[web.WebSocketResponse] = set()
        self.base_url = ""

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def toolbox_url(self) -> str:
        return f"{self.base_url}/toolbox"

    # ---- lifecycle -------------------------------------------------------------------------

    thread_name = "daytona-standin"

    def _on_started(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"

    async def _serve(self) -> int:
        import socketio

        body = {"statusCode": 429, "message": "ThrottlerException: Too Many Requests"}
        shape = self._shaped(_throttleable, body)
        app = web.Application(client_max_size=1 << 40, middlewares=shape)
        sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
        sio.on("connect", self._socket_connect)
        sio.attach(app, socketio_path="api/socket.io")
        self._sio = sio
        api = "/api/sandbox"
        app.router.add_post(api, self._create)
        app.router.add_get(api + "/{id}", self._get)
        app.router.add_delete(api + "/{id}", self._delete)
        app.router.add_get(api + "/{id}/toolbox-proxy-url", self._proxy_url)
        box = "/toolbox/{id}"
        app.router.add_post(box + "/files/bulk-upload", self._upload)
        app.router.add_post(box + "/files/folder", self._folder)
        session = box + "/process/session"
        app.router.add_post(session, self._create_session)
        app.router.add_get(session + "/{sid}", self._get_session)
        app.router.add_delete(session + "/{sid}", self._delete_session)
        app.router.add_post(session + "/{sid}/exec", self._execute)
        command = session + "/{sid}/command/{cid}"
        app.router.add_get(command, self._get_command)
        app.router.add_get(command + "/logs", self._logs)
        app.router.add_post(command + "/input", self._input)
        (port,) = await self._listen(app, handler_cancellation=True)
        return port

    async def _shutdown(self) -> None:
        for sandbox in list(self.sandboxes.values()):
            await self._destroy(sandbox)
        for task in list(self._tasks):
            task.cancel()
        for ws in list(self._sockets):
            await ws.close()
        if self._sio is not None:
            with contextlib.suppress(Exception):
                await self._sio.shutdown()
        await self._stop_listening()

    # ---- what tests look at ----------------------------------------------------------------

    def live_sandboxes(self) -> list[str]:
        """Ids of sandboxes not yet destroyed."""
        return [s.id for s in list(self.sandboxes.values()) if s.state != "destroyed"]

    def end_sandboxes(self) -> None:
        """Ends every live sandbox from the provider's side, as its own timeout would (no
        client asked): what an adapter holding one, or a warm pool, must survive."""

        async def end() -> None:
            for sandbox in list(self.sandboxes.values()):
                if sandbox.state != "destroyed":
                    await self._destroy(sandbox)

        self._call(end())

    def live_pids(self) -> list[int]:
        """Every live process started in any sandbox: its session shells and their descendants
        (from ``/proc``)."""
        roots = [
            session.pid
            for sandbox in list(self.sandboxes.values())
            for session in list(sandbox.sessions.values())
        ]
        return with_descendants(roots)

    def runner_pids(self) -> list[int]:
        """The live processes whose command line runs a ``runner.pyz``."""
        found = []
        for pid in self.live_pids():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"runner.pyz" in handle.read():
                    found.append(pid)
        return found

    # ---- control API -----------------------------------------------------------------------

    def _check_key(self, request: web.Request) -> None:
        self.calls.append(f"{request.method} {request.path}")
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise _error(401, "Invalid credentials", request)

    def _sandbox(self, request: web.Request) -> Sandbox:
        sandbox = self.sandboxes.get(request.match_info["id"])
        if sandbox is None:
            by_name = [
                s
                for s in self.sandboxes.values()
                if s.request.get("name") == request.match_info["id"]
            ]
            if not by_name:
                raise _error(
                    404, f"Sandbox with ID or name {request.match_info['id']} not found", request
                )
            sandbox = by_name[0]
        return sandbox

    def _json(self, sandbox: Sandbox) -> web.Response:
        return web.json_response(sandbox.to_json(self.toolbox_url))

    async def _socket_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        token = auth.get("token") if isinstance(auth, dict) else None
        if token != self.api_key:
            return False
        self.socket_connections.append(dict(auth))
        return True

    async def _set_state(self, sandbox: Sandbox, state: str) -> None:
        old, sandbox.state = sandbox.state, state
        if self._sio is not None and old != state:
            payload = {
                "sandbox": sandbox.to_json(self.toolbox_url),
                "oldState": old,
                "newState": state,
            }
            with contextlib.suppress(Exception):
                await self._sio.emit("sandbox.state.updated", payload)

    async def _create(self, request: web.Request) -> web.Response:
        self._check_key(request)
        body = await request.json()
        sandbox_id = f"standin-{next(self._ids)}-{secrets.token_hex(4)}"
        home = tempfile.mkdtemp(prefix=f"daytona-{sandbox_id}-")
        build = body.get("buildInfo")
        sandbox = Sandbox(sandbox_id, body, home, self.organization_id)
        sandbox.state = "pending_build" if build else "creating"
        self.sandboxes[sandbox_id] = sandbox
        steps = ["building_snapshot", "starting", "started"] if build else ["starting", "started"]
        self._background(self._provision(sandbox, steps))
        return self._json(sandbox)

    async def _provision(self, sandbox: Sandbox, steps: list[str]) -> None:
        for state in steps:
            await asyncio.sleep(self.step_delay)
            if sandbox.state.startswith("destroy"):
                return
            await self._set_state(sandbox, state)

    async def _get(self, request: web.Request) -> web.Response:
        self._check_key(request)
        return self._json(self._sandbox(request))

    async def _proxy_url(self, request: web.Request) -> web.Response:
        self._check_key(request)
        self._sandbox(request)
        return web.json_response({"url": self.toolbox_url})

    async def _delete(self, request: web.Request) -> web.Response:
        self._check_key(request)
        sandbox = self._sandbox(request)
        if sandbox.state != "destroyed":
            await self._set_state(sandbox, "destroying")
            response = sandbox.to_json(self.toolbox_url)
            await self._destroy(sandbox)
            return web.json_response(response)
        return self._json(sandbox)

    async def _destroy(self, sandbox: Sandbox) -> None:
        for session in list(sandbox.sessions.values()):
            await self._end_session(sandbox, session)
        for path in [*sandbox.upload_dirs, sandbox.home]:
            shutil.rmtree(path, ignore_errors=True)
        sandbox.upload_dirs.clear()
        await self._set_state(sandbox, "destroyed")

    # ---- toolbox: files --------------------------------------------------------------------

    def _started(self, request: web.Request) -> Sandbox:
        self._check_key(request)
        sandbox = self._sandbox(request)
        if sandbox.state != "started":
            raise _error(502, f"sandbox {sandbox.id} is {sandbox.state}, not started", request)
        return sandbox

    def _absolute(self, sandbox: Sandbox, path: str) -> str:
        return path if path.startswith("/") else os.path.join(sandbox.home, path)

    def _make_dirs(self, sandbox: Sandbox, directory: str, mode: int = 0o755) -> None:
        created = first_missing(directory)
        os.makedirs(directory, mode=mode, exist_ok=True)
        if created is not None and not created.startswith(sandbox.home + "/"):
            sandbox.upload_dirs.add(created)

    async def _folder(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        path = request.query.get("path", "")
        if not path:
            raise _error(400, "path is required", request)
        mode = int(request.query.get("mode") or "755", 8)
        self._make_dirs(sandbox, self._absolute(sandbox, path), mode)
        return web.Response(status=201)

    async def _upload(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        reader = await request.multipart()
        destinations: dict[str, str] = {}
        written = []
        while (part := await reader.next()) is not None:
            name = part.name or ""  # type: ignore[union-attr]
            index = name.removeprefix("files[").split("]", 1)[0]
            if name.endswith(".path"):
                destinations[index] = (await part.text()).strip()  # type: ignore[union-attr]
                continue
            if not name.endswith(".file") or index not in destinations:
                raise _error(400, f"{name}: missing .path metadata", request)
            dest = self._absolute(sandbox, destinations[index])
            self._make_dirs(sandbox, os.path.dirname(dest))
            size = 0
            with open(dest, "wb") as handle:
                while chunk := await part.read_chunk(READ_CHUNK):  # type: ignore[union-attr]
                    handle.write(chunk)
                    size += len(chunk)
            written.append({"path": destinations[index], "bytes": size})
        return web.json_response({"files": written})

    # ---- toolbox: sessions -----------------------------------------------------------------

    def _session(self, request: web.Request, sandbox: Sandbox) -> Session:
        session = sandbox.sessions.get(request.match_info["sid"])
        if session is None:
            raise _error(404, "session not found", request)
        return session

    def _command(self, request: web.Request, session: Session) -> Command:
        command = session.commands.get(request.match_info["cid"])
        if command is None:
            raise _error(404, "command not found", request)
        return command

    async def _create_session(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        session_id = (await request.json()).get("sessionId") or ""
        if not session_id:
            raise _error(400, "sessionId is required", request)
        if session_id in sandbox.sessions:
            raise _error(409, "session already exists", request)
        directory = tempfile.mkdtemp(prefix="session-", dir=sandbox.home)
        shell = await asyncio.create_subprocess_exec(
            shutil.which("bash") or "/bin/sh",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=sandbox.home,
            env=sandbox.environment(),
            start_new_session=True,  # its own process group, signalled as one on delete
        )
        sandbox.sessions[session_id] = Session(session_id, shell, directory)
        return web.Response(status=201)

    async def _get_session(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        session = self._session(request, sandbox)
        commands = [c.to_json() for c in session.commands.values()]
        return web.json_response({"sessionId": session.id, "commands": commands})

    async def _delete_session(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        await self._end_session(sandbox, self._session(request, sandbox))
        return web.Response(status=204)

    async def _end_session(self, sandbox: Sandbox, session: Session) -> None:
        """SIGTERM to the session's process group, SIGKILL after the grace period; then every
        command's log stream ends."""
        sandbox.sessions.pop(session.id, None)
        session.ended = True
        tree = with_descendants([session.pid])
        _signal_tree(session.pid, tree, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        tree += [pid for pid in with_descendants([session.pid]) if pid not in tree]
        _signal_tree(session.pid, tree, signal.SIGKILL)
        await session.shell.wait()
        while any(alive(pid) for pid in tree):  # orphans are reaped by init, not by us
            await asyncio.sleep(0.01)
        for command in session.commands.values():
            self._close_command(command)
            if command.exit_code is None:
                command.exit_code = -signal.SIGKILL
            command.notify()
        shutil.rmtree(session.directory, ignore_errors=True)

    async def _execute(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        session = self._session(request, sandbox)
        body = await request.json()
        text = (body.get("command") or "").strip()
        if not text:
            raise _error(400, "command is required", request)
        command = Command(
            str(uuid.uuid4()),
            text,
            os.path.join(session.directory, "cmd-" + secrets.token_hex(6)),
            bool(body.get("suppressInputEcho")),
        )
        os.makedirs(command.directory)
        self._open_fifos(command)
        session.commands[command.id] = command
        q = {name: shlex.quote(os.path.join(command.directory, name)) for name in _FILES}
        open(os.path.join(command.directory, "output.log"), "wb").close()
        wrapped = _daemon_wrapper(text, q)
        assert session.shell.stdin is not None
        try:
            session.shell.stdin.write(wrapped.encode())
            await session.shell.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as error:
            self._close_command(command)
            raise _error(410, "session process has exited", request) from error
        self._background(self._tail(command))
        if body.get("runAsync") or body.get("async"):
            return web.json_response({"cmdId": command.id}, status=202)
        while command.exit_code is None:
            await command.updated.wait()
        stdout, stderr = _demux(bytes(command.log))
        output = bytes(command.log).replace(STDOUT_PREFIX, b"").replace(STDERR_PREFIX, b"")
        return web.json_response(
            {
                "cmdId": command.id,
                "exitCode": command.exit_code,
                "output": output.decode("utf-8", "replace"),
                "stdout": stdout.decode("utf-8", "replace"),
                "stderr": stderr.decode("utf-8", "replace"),
            }
        )

    def _open_fifos(self, command: Command) -> None:
        """The command's stdin FIFO, held open read-write by the stand-in (so the shell's open
        never blocks); its stdout and stderr FIFOs belong to the wrapper's labellers."""
        path = os.path.join(command.directory, "stdin")
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
        command.fds["stdin"] = fd

    def _close_command(self, command: Command) -> None:
        for fd in command.fds.values():
            os.close(fd)
        command.fds.clear()

    async def _tail(self, command: Command) -> None:
        """Polls the command's log file as the daemon does (every 20 ms), appending what the
        labellers wrote; after the exit-status file appears, reads the rest and ends the log."""
        log_path = os.path.join(command.directory, "output.log")
        exit_path = os.path.join(command.directory, "exit")
        offset = 0

        def read_new() -> bytes:
            with open(log_path, "rb") as handle:
                handle.seek(offset)
                return handle.read()

        while command.fds:
            code: int | None = None
            with contextlib.suppress(FileNotFoundError, ValueError), open(exit_path) as handle:
                code = int(handle.read().strip() or "-1")
            try:
                data = read_new()
            except FileNotFoundError:  # the session was deleted
                return
            if data:
                offset += len(data)
                command.append(data)
            if code is not None:
                self._close_command(command)
                command.exit_code = code
                command.notify()
                return
            await asyncio.sleep(LOG_POLL_SECONDS)

    async def _get_command(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        command = self._command(request, self._session(request, sandbox))
        return web.json_response(command.to_json())

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._started(request)
        command = self._command(request, self._session(request, sandbox))
        if request.headers.get("Upgrade", "").lower() != "websocket":
            stdout, stderr = _demux(bytes(command.log))
            output = bytes(command.log).replace(STDOUT_PREFIX, b"").replace(STDERR_PREFIX, b"")
            return web.json_response(
                {
                    "output": output.decode("utf-8", "replace"),
                    "stdout": stdout.decode("utf-8", "replace"),
                    "stderr": stderr.decode("utf-8", "replace"),
                }
            )
        follow = request.query.get("follow", "false").lower() == "true"
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        reader = asyncio.ensure_future(ws.receive())  # notices the client going away
        try:
            sent = 0
            while not ws.closed:
                updated = command.updated
                if sent < len(command.log):
                    chunk = bytes(command.log[sent : sent + WS_MESSAGE_BYTES])
                    sent += len(chunk)
                    await self.shaping.carry(len(chunk))
                    await ws.send_bytes(chunk)
                    drop = self.drop_log_stream_after
                    if follow and drop is not None and sent >= drop:
                        # A WebSocket close ends the SDK's stream as if the command had ended.
                        self.drop_log_stream_after = None
                        self.dropped_streams += 1
                        break
                    continue
                if command.exit_code is not None or not follow:
                    break
                waiter = asyncio.ensure_future(updated.wait())
                try:
                    done, _ = await asyncio.wait(
                        [reader, waiter], return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    waiter.cancel()
                if reader in done and reader.result().type in (
                    WSMsgType.CLOSE,
                    WSMsgType.CLOSED,
                    WSMsgType.CLOSING,
                    WSMsgType.ERROR,
                ):
                    break
                if reader in done:
                    reader = asyncio.ensure_future(ws.receive())
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            reader.cancel()
            self._sockets.discard(ws)
            with contextlib.suppress(Exception):
                await ws.close(code=1000)
        return ws

    async def _input(self, request: web.Request) -> web.Response:
        sandbox = self._started(request)
        session = self._session(request, sandbox)
        command = self._command(request, session)
        if session.ended or session.shell.returncode is not None:
            raise _error(410, "session process has exited", request)
        if command.exit_code is not None:
            raise _error(
                410, f"command has already completed with exit code {command.exit_code}", request
            )
        data = ((await request.json()).get("data") or "").encode("utf-8")
        self.input_bytes += len(data)
        if not data.endswith(b"\n"):
            data += b"\n"  # the daemon completes the line, for commands like `read`
        async with command.input_lock:
            await self._write_stdin(command, data, request)
        if not command.suppress_echo:
            command.append(STDOUT_PREFIX + data)
        return web.Response(status=204)

    async def _write_stdin(self, command: Command, data: bytes, request: web.Request) -> None:
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            fd = command.fds.get("stdin")
            if fd is None:
                raise _error(410, "command has already completed", request)
            try:
                view = view[os.write(fd, view) :]
                continue
            except BlockingIOError:
                pass
            ready = loop.create_future()

            def writable(future: asyncio.Future[None] = ready) -> None:
                if not future.done():
                    future.set_result(None)

            loop.add_writer(fd, writable)
            ended = asyncio.ensure_future(command.updated.wait())
            try:
                await asyncio.wait([ready, ended], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ended.cancel()
                if command.fds.get("stdin") == fd:
                    loop.remove_writer(fd)


_FILES = ("stdin", "stdout", "stderr", "output.log", "exit", "exit.tmp")


def _daemon_wrapper(text: str, q: dict[str, str]) -> str:
    """The command as the daemon runs it (session/execute.go, v0.190): one labeller per stream,
    both appending to the shared log file; the exit status published after both are done."""

    def labeller(pipe: str, marker: str) -> str:
        return (
            f'(while IFS= read -r line || [[ -n "$line" ]]; do printf \'{marker}%s\\n\' "$line"; '
            f"done < {pipe}) >> {q['output.log']} &"
        )

    stdout_labeller = labeller(q["stdout"], r"\x01\x01\x01")
    stderr_labeller = labeller(q["stderr"], r"\x02\x02\x02")
    return (
        "{\n"
        f"mkfifo {q['stdout']} {q['stderr']}\n"
        f"{stdout_labeller}\n"
        "rlm_out=$!\n"
        f"{stderr_labeller}\n"
        "rlm_err=$!\n"
        f"{{\n{text}\n}} < {q['stdin']} > {q['stdout']} 2> {q['stderr']}\n"
        "rlm_rc=$?\n"
        "wait $rlm_out $rlm_err\n"
        f"echo $rlm_rc > {q['exit.tmp']} && mv {q['exit.tmp']} {q['exit']}\n"
        "}\n"
    )


def _demux(log: bytes) -> tuple[bytes, bytes]:
    """Splits a marked log into stdout and stderr."""
    out, err = bytearray(), bytearray()
    target = out
    i = 0
    while i < len(log):
        if log.startswith(STDOUT_PREFIX, i):
            target, i = out, i + 3
        elif log.startswith(STDERR_PREFIX, i):
            target, i = err, i + 3
        else:
            j = min(
                (k for k in (log.find(STDOUT_PREFIX, i), log.find(STDERR_PREFIX, i)) if k != -1),
                default=len(log),
            )
            target += log[i:j]
            i = j
    return bytes(out), bytes(err)


# ---- processes and files -------------------------------------------------------------------


def _signal_tree(group: int, pids: list[int], sig: int) -> None:
    """Signals a session's process group and every process of its tree (one may have left the
    group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


__all__ = ["STDERR_PREFIX", "STDOUT_PREFIX", "DaytonaStandIn"]


#: the stand-in :func:`rlm_standins.launch.launch` starts for this provider
STANDIN = DaytonaStandIn
