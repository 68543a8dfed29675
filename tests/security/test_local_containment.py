"""Hostile cells in the local environment: nothing a session starts outlives it, one session can
neither stall nor read another, and the session token stays out of reach (the runner's environ,
command line and attributes; a closed session's token is refused)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments import forkserver as forkserver_module
from rlm.environments.base import CellResult, SandboxEnvironment
from rlm.environments.forkserver import ForkServer
from rlm.environments.local import LocalEnvironment
from rlm.environments.runner.forkserver import process_state
from rlm.environments.runner.runner import SHARED_HOST_ENV
from rlm.errors import SandboxStartError
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.protos import rlm_sandbox_pb2_grpc as pb_grpc
from rlm.testing.leaks import alive

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the containment relies on Linux (/proc, prctl)"
)

MODES = [pytest.param(True, id="fork-server"), pytest.param(False, id="no-fork-server")]
CAP_SYS_PTRACE = 19

#: Cell code: every kind of detached process, each running ``sleep 300``; prints their pids.
DETACH = textwrap.dedent(
    """
    import json, os, subprocess, sys, textwrap, time

    def wait_for(path):
        deadline = time.monotonic() + 10
        while not (os.path.exists(path) and open(path).read().strip()):
            assert time.monotonic() < deadline, f"{path} never written"
            time.sleep(0.01)
        return int(open(path).read())

    here, pids = os.getcwd(), {}
    # 1. double fork + setsid
    ready_r, ready_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(ready_w, b"%d\\n" % os.getpid())
            os.execvp("sleep", ["sleep", "300"])
        os._exit(0)
    os.waitpid(middle, 0)
    pids["double_fork_setsid"] = int(os.read(ready_r, 64))
    os.close(ready_r)
    os.close(ready_w)
    # 2. nohup, backgrounded by a shell that exits
    subprocess.run(
        f"nohup sh -c 'sleep 300 & echo $! > {here}/nohup.pid' >/dev/null 2>&1", shell=True
    )
    pids["nohup_background"] = wait_for(f"{here}/nohup.pid")
    # 3. a process group of its own
    pids["new_process_group"] = subprocess.Popen(["sleep", "300"], process_group=0).pid
    # 4. a daemonised Python (double fork, setsid, chdir /, stdio on /dev/null)
    daemon = '''
    import os, sys, time
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    with open(sys.argv[1], "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(300)
    '''
    subprocess.run(
        [sys.executable, "-c", textwrap.dedent(daemon), f"{here}/daemon.pid"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    pids["daemonised_python"] = wait_for(f"{here}/daemon.pid")
    print(json.dumps(pids))
    """
)

#: Cell code: finds this runner's fork server (the topmost ancestor running ``--fork-server``).
FIND_SERVER = textwrap.dedent(
    """
    import os

    def _parent(pid):
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])

    def _cmdline(pid):
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()

    server, pid = None, os.getpid()
    while pid > 1:
        pid = _parent(pid)
        if b"--fork-server" in _cmdline(pid):
            server = pid
    """
)

#: Cell code, formatted with ``pid``: tries that process's memory (at the address of its stack)
#: and environment; prints a dict: "PermissionError", or what was read.
READ_OTHER = textwrap.dedent(
    """
    outcome = {{}}
    try:
        with open("/proc/{pid}/maps") as maps:
            stack = next(int(l.split("-")[0], 16) for l in maps if l.rstrip().endswith("[stack]"))
    except PermissionError:
        stack = 0
    for name in ("mem", "environ"):
        try:
            with open("/proc/{pid}/" + name, "rb") as handle:
                handle.seek(stack if name == "mem" else 0)
                outcome[name] = handle.read(4096).decode("latin-1")
        except PermissionError:
            outcome[name] = "PermissionError"
    print(repr(outcome))
    """
)


class EchoHandler:
    """Answers a session's call-backs: enough to show that its token works."""

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        return pb.CompleteReply(text=f"echo:{request.prompt}", input_tokens=1, output_tokens=1)

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        return pb.CompleteReply(text=f"child:{request.prompt}")

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        return pb.ToolReply(result_json=b"null")


class Sessions:
    """Local environments on one broker of their own, all closed at the end of the test."""

    def __init__(self) -> None:
        self.broker = BrokerServer()
        run_sync(self.broker.start())
        self.made: list[LocalEnvironment] = []

    def start(self, **kwargs: Any) -> LocalEnvironment:
        env = LocalEnvironment(broker=self.broker, handler=EchoHandler(), **kwargs)
        self.made.append(env)
        run_sync(env.start())
        return env

    def close(self) -> None:
        for env in self.made:
            run_sync(env.aclose())
        run_sync(self.broker.aclose())


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    made = Sessions()
    yield made
    made.close()


def run(env: SandboxEnvironment, code: str, timeout: float | None = None) -> CellResult:
    return run_sync(env.execute(code, timeout=timeout))


def ok(env: SandboxEnvironment, code: str) -> str:
    """Runs a cell that must succeed; returns its stdout."""
    result = run(env, code)
    assert result.ok, result.error
    return result.stdout


def runner_pid(env: LocalEnvironment) -> int:
    return int(ok(env, "import os\nprint(os.getpid())"))


def fork_server_of(env: LocalEnvironment) -> int:
    return int(ok(env, FIND_SERVER + "print(server)"))


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[1])


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def read_proc(pid: int, name: str) -> bytes | None:
    """``/proc/<pid>/<name>``, or None where this process may not read it (a non-dumpable
    process's environ, for a test run that is not root)."""
    try:
        with open(f"/proc/{pid}/{name}", "rb") as handle:
            return handle.read()
    except PermissionError:
        return None


@pytest.fixture
def reap_strays() -> Iterator[list[int]]:
    """Pids a test started through a cell: any still alive at the end are killed (the test has
    failed by then), so that a failure leaves nothing behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


# ---- 5. nothing a session starts outlives it ---------------------------------------------


@pytest.mark.parametrize("fork_server", MODES)
def test_detached_processes_do_not_outlive_the_session(sessions, reap_strays, fork_server):
    env = sessions.start(fork_server=fork_server)
    runner = runner_pid(env)
    detached = json.loads(ok(env, DETACH))
    reap_strays.extend(detached.values())
    assert set(detached) == {
        "double_fork_setsid",
        "nohup_background",
        "new_process_group",
        "daemonised_python",
    }
    assert all(alive(pid) for pid in detached.values()), "a detached process did not start"
    # The runner is a child subreaper: orphans are re-parented to it, not to init.
    escaped = {kind: parent_of(pid) for kind, pid in detached.items() if parent_of(pid) != runner}
    run_sync(env.aclose())
    assert wait_until(lambda: not any(alive(pid) for pid in [runner, *detached.values()])), {
        kind: pid for kind, pid in detached.items() if alive(pid)
    }
    assert not escaped, f"re-parented out of the runner's tree (kind: new parent): {escaped}"


def test_what_a_dead_runner_left_behind_is_killed_by_the_fork_server(sessions, reap_strays):
    """A cell that kills its own runner leaves its detached processes to the fork server (a
    subreaper too), which kills them."""
    env = sessions.start()
    detached = json.loads(ok(env, DETACH))
    reap_strays.extend(detached.values())
    result = run(env, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert result.restarted, result
    assert wait_until(lambda: not any(alive(pid) for pid in detached.values())), {
        kind: pid for kind, pid in detached.items() if alive(pid)
    }
    assert ok(env, "print('back')") == "back\n"


HOST = """
import json, sys
from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.local import LocalEnvironment
sys.path.insert(0, {here!r})
from test_local_containment import DETACH, EchoHandler

broker = BrokerServer()
run_sync(broker.start())
env = LocalEnvironment(broker=broker, handler=EchoHandler(), fork_server={fork_server!r})
run_sync(env.start())
result = run_sync(env.execute(DETACH))
print(result.stdout.strip() or result.error.replace(chr(10), " "), flush=True)
sys.stdin.readline()  # then exits without closing anything: the exit hook must
"""


@pytest.mark.parametrize(
    ("ending", "fork_server"),
    [("exit", True), ("exit", False), ("sigkill", True)],
    ids=["exit-fork-server", "exit-no-fork-server", "sigkill-fork-server"],
)
def test_detached_processes_do_not_outlive_the_host(reap_strays, ending, fork_server):
    """A host that exits without closing its sessions closes them at exit. SIGKILL gives the
    host no chance to: the fork server gets SIGTERM when its host dies (PR_SET_PDEATHSIG) and
    kills everything below it. (A runner started without the fork server dies with a killed
    host, but what it detached survives: see docs/security.md.)"""
    here = os.path.dirname(__file__)
    host = subprocess.Popen(
        [sys.executable, "-c", HOST.format(here=here, fork_server=fork_server)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None and host.stdin is not None
        line = host.stdout.readline()
        detached = json.loads(line)
        reap_strays.extend(detached.values())
        assert all(alive(pid) for pid in detached.values())
        if ending == "sigkill":
            host.kill()
        else:
            host.communicate("\n", timeout=60)
        host.wait(timeout=30)
        # The fork server learns of its host's death by a signal and then kills its tree: under a
        # loaded CI machine that took more than 5 s once, so this waits longer.
        gone = wait_until(lambda: not any(alive(pid) for pid in detached.values()), seconds=30)
        assert gone, {kind: pid for kind, pid in detached.items() if alive(pid)}
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


# ---- 6. one session cannot stall the others ------------------------------------------------


def test_a_fork_server_stopped_by_a_cell_is_replaced_for_the_next_session(sessions):
    attacker = sessions.start()
    server = int(
        ok(attacker, FIND_SERVER + "import signal\nos.kill(server, signal.SIGSTOP)\nprint(server)")
    )
    assert wait_until(lambda: process_state(server) == "T"), "the cell could not stop the server"
    started = time.monotonic()
    other = sessions.start()
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"a new session took {elapsed:.1f}s behind a stopped fork server"
    assert ok(other, "print('fine')") == "fine\n"
    new_server = fork_server_of(other)
    assert new_server != server
    assert wait_until(lambda: not alive(server)), "the stopped server must be killed"
    # The attacker's runner went with its server: its session restarts on the new one.
    result = run(attacker, "print('after')")
    assert result.ok or result.restarted, result
    assert ok(attacker, "print('again')") == "again\n"
    assert fork_server_of(attacker) == new_server


def test_a_silent_fork_server_is_replaced_after_a_bounded_wait(sessions, monkeypatch):
    """A server that stops answering without looking stopped is given FORK_REPLY_TIMEOUT."""
    monkeypatch.setattr(forkserver_module, "FORK_REPLY_TIMEOUT", 1.0)
    monkeypatch.setattr(forkserver_module._Server, "stalled", lambda self: None)
    first = sessions.start()
    server = fork_server_of(first)
    os.kill(server, signal.SIGSTOP)
    try:
        started = time.monotonic()
        second = sessions.start()
        elapsed = time.monotonic() - started
    finally:
        if alive(server):
            os.kill(server, signal.SIGCONT)
    assert 1.0 <= elapsed < 6, f"the start took {elapsed:.1f}s"
    assert ok(second, "print('fine')") == "fine\n"
    assert fork_server_of(second) != server
    assert wait_until(lambda: not alive(server))


def test_a_start_with_no_working_fork_server_fails_with_a_clear_error(monkeypatch):
    start = ForkServer._start

    async def start_stopped(self: ForkServer) -> Any:
        server = await start(self)
        os.kill(server.pid, signal.SIGSTOP)
        return server

    monkeypatch.setattr(ForkServer, "_start", start_stopped)
    server = ForkServer(sys.executable, {"PATH": os.environ.get("PATH", ""), SHARED_HOST_ENV: "1"})
    started = time.monotonic()
    try:
        with pytest.raises(SandboxStartError) as caught:
            run_sync(server.spawn())
    finally:
        run_sync(server.aclose())
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "fork server" in message and "was stopped (SIGSTOP)" in message, message
    assert "it was replaced" in message, message


# ---- 7. one session cannot read another's token ------------------------------------------


def test_a_session_cannot_read_another_runners_memory_or_environ(sessions):
    """The runner is non-dumpable: its memory (where its token is) cannot be opened by another
    session's cell. Its environ, which holds no token (see below), is closed to other users'
    processes too; root's own READ-mode access to it is up to the kernel."""
    first, second = sessions.start(), sessions.start()
    assert first._session is not None
    victim = runner_pid(first)
    seen = ast.literal_eval(ok(second, READ_OTHER.format(pid=victim)))
    assert seen["mem"] == "PermissionError"
    if os.geteuid() != 0:
        assert seen["environ"] == "PermissionError"
    assert first._session.token not in repr(seen)
    # The runner's own cells still see themselves.
    own = ok(
        first,
        "import os, subprocess\n"
        "status = open('/proc/self/status').read()\n"
        "print('Name:' in status, len(os.listdir('/proc/self/fd')) > 2,"
        " subprocess.run(['true']).returncode)",
    )
    assert own == "True True 0\n"


def test_a_session_cannot_read_the_memory_of_the_session_proxy(sessions):
    """The fork server's session proxy holds the token of every session it carries: it is
    non-dumpable, so no session's cell can open its memory."""
    env = sessions.start()
    server = fork_server_of(env)
    proxies = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and _comm(pid) == "rlm-proxy" and parent_of(int(pid)) == server
    ]
    assert len(proxies) == 1, "the fork server runs one session proxy"
    seen = ast.literal_eval(ok(env, READ_OTHER.format(pid=proxies[0])))
    assert seen["mem"] == "PermissionError"


def _comm(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@pytest.mark.skipif(os.geteuid() != 0, reason="what root's runner gives up: root only")
def test_a_root_runner_cannot_read_the_memory_of_the_host_or_the_fork_server(sessions):
    """Without CAP_SYS_PTRACE (dropped, from the bounding set too) a root runner may not open
    the memory of processes that hold more capabilities than it does: the host (with every
    session's token), the fork server."""
    env = sessions.start()
    server = fork_server_of(env)
    for pid in (os.getpid(), server):
        assert ast.literal_eval(ok(env, READ_OTHER.format(pid=pid)))["mem"] == "PermissionError"
    caps = ok(
        env,
        "caps = dict(l.split(':\\t') for l in open('/proc/self/status').read().splitlines()"
        " if l.startswith('Cap'))\nprint(int(caps['CapEff'], 16), int(caps['CapBnd'], 16))",
    )
    effective, bounding = map(int, caps.split())
    assert not effective & (1 << CAP_SYS_PTRACE) and not bounding & (1 << CAP_SYS_PTRACE)


@pytest.mark.parametrize("fork_server", MODES)
def test_the_runner_object_keeps_no_token(sessions, fork_server):
    env = sessions.start(fork_server=fork_server)
    assert env._session is not None
    token = env._session.token
    out = ok(
        env,
        "runner = llm_query.__self__\n"
        "print(repr(vars(runner)))\n"
        "print([v for v in vars(runner).values() if isinstance(v, (str, bytes, tuple))])\n"
        "print(repr(getattr(runner._stub, '__dict__', None)))\n"
        "print(llm_query('ping'))",
    )
    assert "_stub" in out, "the cell did not reach the runner object"
    assert token not in out and "Bearer" not in out
    assert out.endswith("echo:ping\n"), "the calls must still carry the token"


# ---- 10. guarantees: token and host variables out of the sandbox; caps -------------------


@pytest.mark.parametrize("fork_server", MODES)
def test_the_token_is_in_neither_environ_nor_cmdline_of_the_runner(sessions, fork_server):
    env = sessions.start(fork_server=fork_server)
    assert env._session is not None
    token = env._session.token.encode()
    runner = runner_pid(env)
    pids = [runner, fork_server_of(env)] if fork_server else [runner]
    for pid in pids:
        cmdline, environ = read_proc(pid, "cmdline"), read_proc(pid, "environ")
        assert cmdline and token not in cmdline
        if os.geteuid() == 0:
            assert environ, f"root reads every environ (pid {pid})"
        assert environ is None or token not in environ


HOST_SECRETS = {
    "MY_DB_PASSWORD": "db-pass-4711",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-4711",
    "OPENAI_API_KEY": "sk-openai-4711",
    "HOME_TOKEN": "home-token-4711",
    "PGPASSFILE": "/secret/pgpass-4711",
    "DATABASE_URL": "postgres://user:pw-4711@db/prod",
}


@pytest.mark.parametrize("fork_server", MODES)
def test_host_variables_outside_the_allow_list_stay_out(sessions, monkeypatch, fork_server):
    for name, value in HOST_SECRETS.items():
        monkeypatch.setenv(name, value)
    env = sessions.start(fork_server=fork_server)
    seen = json.loads(ok(env, "import json, os\nprint(json.dumps(dict(os.environ)))"))
    assert "PATH" in seen, "the allow-listed variables do arrive"
    assert not set(HOST_SECRETS) & set(seen)
    assert not [v for v in HOST_SECRETS.values() if v in json.dumps(seen)]
    environ = read_proc(runner_pid(env), "environ")
    assert environ is None or not [v for v in HOST_SECRETS.values() if v.encode() in environ]


def test_a_closed_sessions_token_is_refused(sessions):
    env = sessions.start()
    assert env._session is not None
    metadata = (("authorization", f"Bearer {env._session.token}"),)
    with grpc.insecure_channel(sessions.broker.address) as channel:
        stub = pb_grpc.BrokerStub(channel)
        reply = stub.Complete(pb.CompleteRequest(prompt="x"), metadata=metadata, timeout=10)
        assert reply.text == "echo:x"
        run_sync(env.aclose())
        with pytest.raises(grpc.RpcError) as caught:
            stub.Complete(pb.CompleteRequest(prompt="x"), metadata=metadata, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("fork_server", MODES)
def test_cell_stderr_is_capped_like_stdout(sessions, fork_server):
    env = sessions.start(fork_server=fork_server, max_output_chars=1000)
    for stream in ("stdout", "stderr"):
        result = run(env, f"import sys\n_ = sys.{stream}.write('x' * 10**6)")
        assert result.ok, result.error
        assert len(getattr(result, stream)) == 1000
        assert getattr(result, f"{stream}_dropped") == 10**6 - 1000
    # Past sys.stderr, straight to the process's stderr: megabytes in one line with no end
    # neither block the runner nor grow the host's copy (the last 40 lines of 2,000 chars).
    for _ in range(2):
        result = run(env, "import os\nfor _ in range(50): os.write(2, b'y' * 100_000)", timeout=30)
        assert result.ok, result.error
    assert env._process is not None
    assert len(env._process.diagnostics()) <= 40 * 2001


@pytest.mark.docker
def test_the_token_is_not_in_the_docker_runners_configuration():
    from docker_check import docker_available  # here: HOST imports this module alone

    reason = docker_available()
    if reason:
        if os.environ.get("RLM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"RLM_REQUIRE_DOCKER=1 but docker is unusable: {reason}", pytrace=False)
        pytest.skip(f"docker: {reason}")
    from rlm.environments.docker import DockerEnvironment

    broker = BrokerServer()
    run_sync(broker.start())
    env = DockerEnvironment(broker=broker, handler=EchoHandler())
    try:
        run_sync(env.start())
        assert env._session is not None and env._process is not None
        token = env._session.token
        container = env._process.container  # type: ignore[attr-defined]
        out = subprocess.run(
            ["docker", "inspect", container.id], capture_output=True, text=True, check=True
        )
        (info,) = json.loads(out.stdout)
        assert info["Config"]["Cmd"], "the runner's command is in the configuration"
        for field in (info["Config"]["Env"], info["Config"]["Cmd"], info["Args"], info["Path"]):
            assert token not in json.dumps(field)
        assert token not in out.stdout
        assert ok(env, "print(llm_query('q'))") == "echo:q\n"
    finally:
        run_sync(env.aclose())
        run_sync(broker.aclose())


# ---- the code every runner starts from cannot be changed by a cell -----------------------

TAMPER = textwrap.dedent(
    """
    import os, sys
    refused = []
    try:
        fd = os.open(sys.argv[0], os.O_RDWR)
        os.write(fd, b"import os; os._exit(9)\\n")
    except OSError as error:
        refused.append(error.errno)
    with open(COPY, "wb") as handle:  # the user's own file: this works
        handle.write(b"not a zipapp")
    print(sys.argv[0], refused)
    """
)


@pytest.mark.parametrize("fork_server", MODES)
def test_a_cell_cannot_change_the_code_later_runners_start_from(sessions, fork_server):
    """Local runners start from a sealed in-memory copy of the runner (a memfd, as
    /proc/self/fd/N): a cell can neither write it nor, by rewriting the copy in the temp
    directory (its user's own file), change what the next session or fork server runs."""
    from rlm.environments.runner.bundle import runner_bundle, runner_bundle_path

    attacker = sessions.start(fork_server=fork_server)
    copy = runner_bundle_path()  # this process's copy only: others' runs keep theirs
    script, refused = ok(attacker, f"COPY = {str(copy)!r}\n{TAMPER}").split(" ", 1)
    assert script.startswith("/proc/self/fd/") and refused.strip() == "[1]"  # EPERM: sealed
    for server in list(forkserver_module._servers.values()):
        run_sync(server.aclose())  # the next session starts a new fork server from the bundle
    victim = sessions.start(fork_server=fork_server)
    assert ok(victim, "print('still ours')") == "still ours\n"
    # Docker mounts the file copy: it is checked and rewritten before each use.
    assert runner_bundle_path().read_bytes() == runner_bundle()
