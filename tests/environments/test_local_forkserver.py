"""The local environment's fork server: forked runners are as isolated as freshly started ones,
one server serves the whole process, and it never outlives the host."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import platform
import signal
import subprocess
import sys
import time

import pytest
from conftest import RecordingHandler

from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.local import LocalEnvironment
from rlm.environments.runner.forkserver import kill_tree, process_state, process_tree
from rlm.testing.leaks import alive, fork_server_pids, runner_pids

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork server needs os.fork")

PROBE = (
    "import os, resource\n"
    "print((os.getpid(), os.getsid(0), os.getppid(), os.getcwd(),"
    " resource.getrlimit(resource.RLIMIT_AS)[0]))"
)


@pytest.fixture
def tree():
    """A broker of its own and a way to start local environments on it; everything is closed
    after the test (the process's fork server stays, as it does for users)."""
    broker = BrokerServer()
    run_sync(broker.start())
    made: list[LocalEnvironment] = []

    def start(**kwargs) -> LocalEnvironment:
        env = LocalEnvironment(broker=broker, handler=RecordingHandler(), **kwargs)
        run_sync(env.start())
        made.append(env)
        return env

    yield broker, start
    for env in made:
        run_sync(env.aclose())
    run_sync(broker.aclose())


def probe(env: LocalEnvironment) -> tuple[int, int, int, str, int]:
    result = run_sync(env.execute(PROBE))
    assert result.ok, result.error
    return ast.literal_eval(result.stdout)


def wait_until(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_forked_runners_are_separate_sessions_with_their_own_limits_and_state(tree):
    _broker, start = tree
    first, second = start(memory_mb=512), start(memory_mb=768)
    pid1, sid1, parent1, cwd1, mem1 = probe(first)
    pid2, sid2, parent2, cwd2, mem2 = probe(second)
    assert pid1 != pid2 and parent1 == parent2
    assert parent1 in fork_server_pids(os.getpid()), "forked by this process's fork server"
    assert (sid1, sid2) == (pid1, pid2), "each runner leads a session of its own"
    assert cwd1 == first.workdir and cwd2 == second.workdir and cwd1 != cwd2
    assert (mem1, mem2) == (512 * 2**20, 768 * 2**20)
    run_sync(first.execute("secret = 42"))
    assert run_sync(second.execute("print('secret' in globals())")).stdout == "False\n"


def test_one_fork_server_serves_every_tree_of_the_process(tree):
    _broker, start = tree
    first = start()
    server = probe(first)[2]
    other = BrokerServer()
    run_sync(other.start())
    try:
        env = LocalEnvironment(broker=other, handler=RecordingHandler())
        run_sync(env.start())
        try:
            assert probe(env)[2] == server
        finally:
            run_sync(env.aclose())
    finally:
        run_sync(other.aclose())
    assert alive(server), "closing a tree leaves the process's server running"
    runner = probe(first)[0]
    run_sync(first.aclose())
    assert wait_until(lambda: not alive(runner))


def test_a_killed_fork_server_takes_its_runners_and_is_replaced(tree):
    _broker, start = tree
    env = start()
    run_sync(env.execute("kept = 1"))
    runner, _sid, server, _cwd, _mem = probe(env)
    os.kill(server, signal.SIGKILL)
    assert wait_until(lambda: not alive(runner)), "the runner must die with its server"
    result = run_sync(env.execute("print('kept' in globals())"))
    assert result.restarted, result
    assert run_sync(env.execute("print('back')")).stdout == "back\n"
    new_server = probe(env)[2]
    assert new_server != server and new_server in fork_server_pids(os.getpid())
    assert probe(start())[2] == new_server


def test_fork_server_off_starts_each_runner_from_scratch(tree):
    _broker, start = tree
    env = start(fork_server=False)
    assert probe(env)[2] == os.getpid()


HOST = """
import os, sys, time
sys.path.insert(0, {here!r})
from conftest import RecordingHandler
from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.local import LocalEnvironment

broker = BrokerServer()
run_sync(broker.start())
env = LocalEnvironment(broker=broker, handler=RecordingHandler())
run_sync(env.start())
print("ready", flush=True)
sys.stdin.readline()  # the test says how this host ends
"""


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_the_fork_server_and_its_runners_end_with_the_host(ending):
    """At a normal exit the host closes what nobody closed; a SIGKILLed host runs no code at all,
    and the kernel (PDEATHSIG) takes the server, then the server's runners."""
    host = subprocess.Popen(
        [sys.executable, "-c", HOST.format(here=os.path.dirname(__file__))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert host.stdout is not None and host.stdout.readline() == "ready\n"
        servers, runners = fork_server_pids(host.pid), runner_pids(host.pid)
        assert len(servers) == 1 and len(runners) == 1
        if ending == "sigkill":
            host.kill()
        else:
            host.communicate("\n", timeout=30)
        host.wait(timeout=30)
        assert wait_until(lambda: not any(alive(pid) for pid in servers + runners))
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()


def test_a_stopped_fork_server_does_not_hold_up_closing_its_sessions(tree):
    """The server reports its runners' exits; a stopped one cannot, and closing does not wait
    for it: /proc shows the runner dead."""
    _broker, start = tree
    env = start()
    runner, _sid, server, _cwd, _mem = probe(env)
    os.kill(server, signal.SIGSTOP)
    try:
        started = time.monotonic()
        run_sync(env.aclose())
        assert time.monotonic() - started < 3
        assert wait_until(lambda: not alive(runner))
    finally:
        os.kill(server, signal.SIGCONT)


def test_a_copy_a_cell_forked_from_its_runner_is_no_fork_server(tree):
    """A forked copy of a runner keeps the server's command line; it is still a runner (its
    name says so), and it goes with its session."""
    _broker, start = tree
    env = start()
    server = probe(env)[2]
    copy = int(
        run_sync(
            env.execute(
                "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(300)\n"
                "    os._exit(0)\nprint(pid)"
            )
        ).stdout
    )
    try:
        servers = fork_server_pids(os.getpid())
        assert server in servers and copy not in servers
        assert copy in runner_pids(os.getpid())
        run_sync(env.aclose())
        assert wait_until(lambda: not alive(copy))
    finally:
        if alive(copy):
            os.kill(copy, signal.SIGKILL)


FORKING_TREE = """
import os, sys, time
marker = sys.argv[1]
for _ in range(3):  # three generations of 6 children each (258 processes at most)
    for _ in range(6):
        time.sleep(0.005)
        if os.fork() == 0:
            break
    else:
        break
time.sleep(300)
"""


def test_kill_tree_takes_a_tree_that_is_still_forking():
    """The tree is stopped before it is killed: no child forked while it is being read gets
    away (each generation re-parented to init the moment its parent died would)."""
    marker = f"rlm-forking-tree-{os.getpid()}-{time.monotonic_ns()}"
    root = subprocess.Popen([sys.executable, "-c", FORKING_TREE, marker], start_new_session=True)

    def members() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if marker.encode() in handle.read() and alive(int(entry)):
                        found.append(int(entry))
            except (OSError, ValueError):
                continue
        return found

    try:
        assert wait_until(lambda: len(members()) >= 4, 10), "the tree did not start growing"
        killed = kill_tree([root.pid])  # mid-growth: it takes 100 ms or so to reach 258
        assert root.pid in killed and len(killed) >= 4
        root.wait(timeout=10)
        assert wait_until(lambda: not members()), members()
    finally:
        for _ in range(50):  # whatever is left, stopped then killed, until none is
            left = members()
            if not left:
                break
            for signum in (signal.SIGSTOP, signal.SIGKILL):
                for pid in left:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signum)
            time.sleep(0.1)


#: A process that looks ended while it still runs: its main thread exits (the exit syscall
#: ends one thread) while a second thread sleeps, as a multithreaded runner does for a moment
#: while it dies. Its child still names it as its parent until the last thread has ended.
EXITING_PARENT = """
import ctypes, os, platform, sys, threading, time
child = os.fork()
if child == 0:
    os.execvp("sleep", ["sleep", "300"])
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print(child, flush=True)
SYS_EXIT = {"x86_64": 60, "aarch64": 93}[platform.machine()]
ctypes.CDLL(None).syscall(SYS_EXIT, 0)  # the main thread only
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64"), reason="exit syscall number")
def test_kill_tree_takes_the_children_of_a_process_that_is_exiting():
    """Its main thread gone, a process reads as a zombie in /proc while its other threads run,
    and its children are not yet re-parented: the process and its children are still in the
    tree and are killed (they used to be skipped, and the children re-parented to init once the
    process had ended: a runner dying as its host died left what its cells had detached)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", EXITING_PARENT], stdout=subprocess.PIPE, start_new_session=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        assert wait_until(lambda: process_state(parent.pid) == "Z", 10), process_state(parent.pid)
        with open(f"/proc/{child}/stat", "rb") as handle:
            assert int(handle.read().rsplit(b")", 1)[1].split()[1]) == parent.pid
        assert child in process_tree([parent.pid])
        killed = kill_tree([parent.pid])
        assert child in killed and parent.pid in killed  # its running thread could still fork
        parent.wait(timeout=10)
        assert wait_until(lambda: not alive(child))
    finally:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.killpg(parent.pid, signal.SIGKILL)


THREADS = "import threading; print(sorted(t.name for t in threading.enumerate()))"


def test_forked_runners_reach_the_broker_through_the_servers_session_proxy(tree):
    """A runner forked while others live shares the fork server's gRPC connections (its
    ``rlm-proxy`` child); one forked alone dials the broker itself (it then spares each of its
    calls the proxy's hop); with ``RLM_SESSION_PROXY=0`` in the server's environment every
    runner dials the broker itself. (Each case gets a fork server of its own: environments
    whose runner environment differs do not share one.)"""
    _broker, start = tree

    def uses_proxy(env: LocalEnvironment) -> bool:
        result = run_sync(env.execute(THREADS))
        assert result.ok, result.error
        return "rlm-proxy-reader" in ast.literal_eval(result.stdout)

    alone = start(env={"RLM_TEST_SERVER": "proxy"})
    beside = start(env={"RLM_TEST_SERVER": "proxy"})
    assert not uses_proxy(alone) and uses_proxy(beside)
    server = probe(beside)[2]
    assert probe(alone)[2] == server
    assert "rlm-proxy" in [_comm(pid) for pid in process_tree([server]) if pid != server]
    assert run_sync(beside.execute("print(llm_query('hi'))")).ok
    off = [start(env={"RLM_SESSION_PROXY": "0"}) for _ in range(2)]
    assert not any(uses_proxy(env) for env in off)
    assert probe(off[1])[2] != server
    assert run_sync(off[1].execute("print(llm_query('hi'))")).ok


TASKS_DURING_A_BATCH = """
import os, threading
def tasks():
    return len(os.listdir('/proc/self/task'))
before = tasks()
peak = []
stop = threading.Event()
def sample():
    while not stop.wait(0.01):
        peak.append(tasks())
sampler = threading.Thread(target=sample)
sampler.start()
llm_query_batched(['a', 'b'])
stop.set()
sampler.join()
print((before, max(peak), tasks()))
"""


class _SlowHandler(RecordingHandler):
    async def complete(self, request):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.3)
        return await super().complete(request)


def test_a_runner_beside_others_holds_three_threads(tree):
    """docker's default cap on a tree's live sessions (``TASKS_PER_RUNNER``) counts on this: a
    runner on the session proxy holds its interpreter, the proxy reader and the fd-capture pump
    (no thread per stream or per captured fd, no watcher); a batch call adds at most its
    request writer while it sends, and what is left of ``TASKS_PER_RUNNER`` is for threads a
    cell starts."""
    from rlm.environments.docker import TASKS_PER_RUNNER

    broker, start = tree
    start(env={"RLM_TEST_SERVER": "threads"})  # alive: the next runner is forked beside it
    beside = LocalEnvironment(
        broker=broker, handler=_SlowHandler(), env={"RLM_TEST_SERVER": "threads"}
    )
    run_sync(beside.start())
    try:
        result = run_sync(beside.execute(TASKS_DURING_A_BATCH))
    finally:
        run_sync(beside.aclose())
    assert result.ok, result.error
    before, during, after = ast.literal_eval(result.stdout)
    assert before == 3 and after == 3
    assert before + 1 <= during <= before + 2  # the cell's sampler, and the batch's writer
    assert before + 1 < TASKS_PER_RUNNER


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/comm") as handle:
        return handle.read().strip()
    return ""


def test_a_stopped_session_proxy_is_replaced_before_the_next_fork(tree):
    """A cell can stop the proxy its siblings share (same user; here the test does it, so that
    the stopping session does not wait out its own cell timeout): the next fork replaces it, so
    later sessions do not hang on it."""
    _broker, start = tree
    env = start()
    server = probe(env)[2]
    (proxy,) = [pid for pid in process_tree([server]) if _comm(pid) == "rlm-proxy"]
    os.kill(proxy, signal.SIGSTOP)
    later = start()
    result = run_sync(later.execute("print(llm_query('still there?'))"))
    assert result.ok and result.stdout.strip(), result
    assert wait_until(lambda: not alive(proxy)), "the stopped proxy is killed"
    (replacement,) = [pid for pid in process_tree([server]) if _comm(pid) == "rlm-proxy"]
    assert replacement != proxy
