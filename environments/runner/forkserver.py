"""A fork server: one process that has paid the runner's start-up (interpreter, grpc, protos)
once and forks a fresh runner from that state on request, in a few milliseconds.

Started by the local environment as ``python -I -u runner.pyz --fork-server HOST_PID`` with a
unix socket on its stdin. Protocol:

- host -> server, on the socket: one byte ``F`` carrying two file descriptors (``SCM_RIGHTS``):
  the new runner's stdin (where its bootstrap line arrives) and its stderr.
- server -> host, on stdout, one line each: ``P <pid>`` answers each ``F`` in order;
  ``X <pid> <code>`` reports a runner's exit (the server is its parent and reaps it).

Each forked runner starts its own session (the host kills its process tree), dies with the
server (``PR_SET_PDEATHSIG``), and keeps no descriptor of the server's. The server gets SIGTERM
when the host dies (``PR_SET_PDEATHSIG`` too) and then, as when the host closes the socket, kills
everything below it. It is a child subreaper (Linux): what a dead runner leaves behind is
re-parented to it, and killed. It never starts a thread, so forking it is safe. ``RLM_RUNNER_PRELOAD=ipython`` in its environment makes
it import IPython first, for runners that will use the ipython shell.

Inside a sandbox shared by a whole RLM tree (docker's default), the same server is the sandbox's
main process and speaks a line protocol over its stdin/stdout instead: see :func:`serve_stdio`.

This module also holds the process-tree helpers the host uses (:func:`kill_tree`): stdlib only.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterable

from rlm.environments.runner import runner as runner_module
from rlm.environments.runner.bootstrap import Bootstrap

MAX_FD = 65536
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
#: The fork server's process name (``/proc/<pid>/comm``); its runners rename themselves.
SERVER_NAME = b"rlm-forkserver"
RUNNER_NAME = b"rlm-runner"
PROXY_NAME = b"rlm-proxy"
#: How long :func:`kill_tree` waits for the processes it stopped to be seen stopped.
STOP_SETTLE_SECONDS = 1.0
#: Rounds of stopping newly found descendants before the tree is killed as it stands.
MAX_FREEZE_ROUNDS = 100


# ---- process trees (Linux /proc) -----------------------------------------------------------


def _stat(pid: int | str) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process from /proc, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_state(pid: int) -> str | None:
    """The state letter of a process (``R``, ``S``, ``T`` stopped, ``t`` traced, ``Z`` zombie...),
    or None when it is gone or there is no /proc."""
    stat = _stat(pid)
    return None if stat is None else stat[0]


#: States of a process that has ended (zombie, dead) or cannot run on its own (stopped, traced).
HELD_STATES = frozenset("TtZXx")


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process in /proc, by pid: (state, parent pid, start time)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None:
                table[int(entry)] = stat
    return table


def process_tree(roots: Iterable[int]) -> dict[int, int]:
    """The processes among ``roots`` and all their descendants, each with its start time (to
    tell it from a later process given the same pid).

    Processes that read as ended (zombies) are in it too: a multithreaded process whose main
    thread has ended reads as a zombie while its other threads still run (and may fork), and
    until the last of them ends its children still name it as their parent. Skipping it would
    lose them: they would be re-parented, to init, after the tree was killed. Signalling a
    zombie that really has ended does nothing."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (_state, parent, _started) in table.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, int] = {}
    pending = [pid for pid in roots if pid in table]
    while pending:
        pid = pending.pop()
        if pid not in found:
            found[pid] = table[pid][2]
            pending.extend(children.get(pid, ()))
    return found


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def _wait_stopped(pids: Iterable[int], deadline: float) -> None:
    """Until each of ``pids`` is stopped, dead or gone (or the deadline passes): a process that
    was sent SIGSTOP may still be running, and forking, for a moment."""
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        waiting = {pid for pid in waiting if (process_state(pid) or "X") not in HELD_STATES}
        if waiting:
            time.sleep(0.001)


def kill_tree(roots: Iterable[int], *, spare: Iterable[int] = ()) -> list[int]:
    """SIGKILLs ``roots`` and every process below them, wherever they moved (new sessions and
    process groups are still children), except ``spare``; returns the pids killed.

    The tree is frozen first: every member is sent SIGSTOP, the tree is read again until no new
    member appears (a stopped process cannot fork), and only then is each member killed, so a
    process forking as fast as it can does not slip out between two reads. A process is killed
    only if it is still the one that was stopped (same start time). Without /proc (not Linux)
    only the roots and their process groups are killed.
    """
    roots, spared = list(roots), set(spare)
    if not os.path.isdir("/proc/self"):
        for pid in roots:
            if pid not in spared:
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(OSError):
                        kill(pid, signal.SIGKILL)
        return [pid for pid in roots if pid not in spared]
    frozen: dict[int, int] = {}
    deadline = time.monotonic() + STOP_SETTLE_SECONDS
    for _ in range(MAX_FREEZE_ROUNDS):
        tree = process_tree(roots)
        fresh = [pid for pid in tree if pid not in frozen and pid not in spared]
        if not fresh:
            break
        for pid in fresh:
            _signal(pid, signal.SIGSTOP)
            frozen[pid] = tree[pid]
        _wait_stopped(fresh, deadline)
    killed = []
    for pid, started in frozen.items():
        stat = _stat(pid)
        if stat is not None and stat[2] == started:
            _signal(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


# ---- the server ----------------------------------------------------------------------------


def _set_name(name: bytes) -> None:
    """Names this process in ``/proc/<pid>/comm`` (and ``ps``), where the platform allows."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _report(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _sealed_bundle_fd() -> int | None:
    """The descriptor of the sealed zipapp this process runs from (``/proc/self/fd/N`` as its
    script: see ``bundle.runner_executable``), or None when it runs from a file."""
    prefix = "/proc/self/fd/"
    script = sys.argv[0] if sys.argv else ""
    return int(script[len(prefix) :]) if script.startswith(prefix) else None


def _become_runner(stdin_fd: int, stderr_fd: int) -> None:
    """In the forked child: detach from the server's descriptors and serve one session."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _set_name(RUNNER_NAME)
        os.setsid()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(stdin_fd, 0)
        os.dup2(devnull, 1)
        os.dup2(stderr_fd, 2)
        bundle = _sealed_bundle_fd()  # lazy imports read the zipapp from it: keep it open
        os.closerange(3, bundle if bundle is not None else MAX_FD)
        if bundle is not None:
            os.closerange(bundle + 1, MAX_FD)
        runner_module.watch_parent(os.getppid())
        code = runner_module.main(forked=True)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def _reap(children: set[int]) -> list[str]:
    """Reaps every ended child; returns the runners' exit reports (the other children were
    adopted: see _sweep)."""
    exits = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        _session_proxy.reaped(pid)
        if pid in children:
            children.discard(pid)
            exits.append(f"X {pid} {os.waitstatus_to_exitcode(status)}")
    return exits


def _own_children() -> list[int]:
    """This (single-threaded) process's children: read from its ``children`` file where the
    kernel has one (one small read), else found by a scan of every process in /proc."""
    me = os.getpid()
    try:
        with open(f"/proc/{me}/task/{me}/children", "rb") as handle:
            return [int(pid) for pid in handle.read().split()]
    except FileNotFoundError:
        return [pid for pid, (_s, parent, _t) in _processes().items() if parent == me]


def _sweep(children: set[int]) -> None:
    """Kills what was re-parented to this server (a subreaper): processes that a runner's cells
    started and whose runner has ended. Runners are this server's only own children. Runs
    before a runner's exit is reported, so that the host, once told, knows they were killed."""
    strangers = [
        pid for pid in _own_children() if pid not in children and pid != _session_proxy.pid
    ]
    if strangers:
        kill_tree(strangers)


def _freeze_for_forks() -> None:
    """Moves every object this server has made so far out of the collector's reach: a forked
    runner's collections then never walk (and so copy, page by page) the server's heap."""
    import gc

    gc.freeze()  # no collection first: it would cost the first fork more than it saves


class _SessionProxyProcess:
    """The session proxy (``sessionproxy.py``) this server forks after its first runner:
    runners it forks beside others speak to the broker through it (``runner.SESSION_PROXY``
    holds its socket, see :meth:`before_fork`). Killed with everything else below the server.

    A cell runs as the same user as the proxy, so it can stop or kill it, as it can a sibling
    runner: the runners on it then lose their broker (and are restarted by the host). Before
    each fork the server checks it (one ``/proc`` read) and replaces one that is gone or
    stopped, up to :data:`PROXY_STARTS` times; after that its runners dial the broker
    themselves."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.directory: str | None = None
        self.path: str | None = None
        self.starts = 0

    def start(self) -> None:
        if os.environ.get(SESSION_PROXY_ENV, "1") == "0" or self.starts >= PROXY_STARTS:
            return
        self.starts += 1
        import tempfile

        # Imported here, once: a module a forked runner imports is compiled anew in each one
        # (the zipapp holds no bytecode).
        from rlm.environments.runner import sessionproxy  # noqa: F401
        from rlm.environments.runner.relay import LISTEN_BACKLOG

        try:
            self.directory = tempfile.mkdtemp(prefix="rlm-proxy-", dir=_short_temp_dir())
            path = os.path.join(self.directory, "proxy.sock")
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(path)
            listener.listen(LISTEN_BACKLOG)
        except OSError as error:
            print(f"rlm-forkserver: no session proxy ({error})", file=sys.stderr, flush=True)
            self.stop()
            return
        _set_name(PROXY_NAME)  # so that the proxy has its name from its first moment
        self.pid = os.fork()
        if self.pid == 0:
            _become_session_proxy(listener)
        _set_name(SERVER_NAME)
        listener.close()
        self.path = path

    def before_fork(self, live_runners: int) -> None:
        """Says to the runner about to be forked whether it uses the proxy: one forked while
        others live does (it saves starting gRPC, ~10 ms of CPU); one forked alone (the root of
        a tree, a sequential session) dials the broker itself, paying that once and then
        sparing each of its calls the proxy's extra hop."""
        self.ensure()
        runner_module.SESSION_PROXY = self.path if live_runners else None

    def after_fork(self) -> None:
        """Starts the proxy after the server's first fork: that runner, alone, does not use it,
        and starts up beside it rather than after it."""
        if not self.starts:
            self.start()
            _freeze_for_forks()  # what the proxy's start imported, too

    def ensure(self) -> None:
        """Replaces a proxy that is gone or stopped (before a runner is forked to use it)."""
        if self.pid is not None and _HAS_PROC and process_state(self.pid) in _NOT_SERVING:
            _signal(self.pid, signal.SIGKILL)  # reaped (and swept) as a stranger
            self.pid = None
            self.stop()
        if self.pid is None and self.starts:
            self.start()

    def reaped(self, pid: int) -> None:
        if pid == self.pid:
            self.pid = None
            self.stop()

    def stop(self) -> None:
        self.path = None
        if self.directory:
            import shutil

            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


_session_proxy = _SessionProxyProcess()
#: ``0`` in a fork server's environment: its runners dial the broker themselves (no proxy).
SESSION_PROXY_ENV = "RLM_SESSION_PROXY"
_HAS_PROC = os.path.isdir("/proc/self")
#: Process states of a proxy that serves no one: gone, stopped (also by a tracer), dead.
_NOT_SERVING = (None, "T", "t", "Z", "X")
#: How many session proxies one fork server starts at most (the first and its replacements).
PROXY_STARTS = 4


def _short_temp_dir() -> str | None:
    """/tmp where it exists (a unix socket's path must stay under 108 bytes), else the default."""
    return "/tmp" if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK) else None


def _become_session_proxy(listener: socket.socket) -> None:
    """In the forked child: the session proxy, until the server ends (it kills the proxy)."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        _set_name(PROXY_NAME)
        runner_module.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        runner_module.prctl(runner_module.PR_SET_DUMPABLE, 0)  # it holds the sessions' tokens
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)  # never the server's report stream
        bundle = _sealed_bundle_fd()  # lazy imports read the zipapp from it: keep it open
        keep = sorted({2, listener.fileno(), *([bundle] if bundle is not None else [])})
        start = 3
        for fd in keep:
            if fd >= start:
                os.closerange(start, fd)
                start = fd + 1
        os.closerange(start, MAX_FD)
        from rlm.environments.runner import sessionproxy

        code = sessionproxy.serve(listener)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


_terminated = False


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: noted, and acted on by the serving loop (an exception raised here could cut the
    final clean-up short)."""
    global _terminated
    _terminated = True


def serve(host_pid: int) -> int:
    """Serves fork requests until the host closes the socket or dies; then kills everything
    below this process (SIGTERM, the signal it gets when the host dies, does the same)."""
    signal.signal(signal.SIGTERM, _terminate)
    runner_module.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != host_pid:
        return 3  # the host is already gone
    _set_name(SERVER_NAME)
    subreaper = runner_module.prctl(runner_module.PR_SET_CHILD_SUBREAPER, 1)
    # What the runners will import anyway (IPython for the ipython shell), imported once here.
    runner_module.preload(os.environ.get(runner_module.PRELOAD_ENV, ""))
    _freeze_for_forks()
    control = socket.socket(fileno=0)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the host decides when this ends
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children: set[int] = set()
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is not control:
                    os.read(wake_read, 4096)
                    if _terminated:
                        return 0  # the host died (or asked): finally kills what is left
                    exits = _reap(children)
                    if subreaper:
                        _sweep(children)
                    for report in exits:
                        _report(report)
                    continue
                message, fds, _flags, _address = socket.recv_fds(control, 1, 2)
                if not message:
                    return 0  # the host closed the socket: finally kills what is left
                if len(fds) != 2:
                    for fd in fds:
                        os.close(fd)
                    _report("P -1")
                    continue
                _session_proxy.before_fork(len(children))
                pid = os.fork()
                if pid == 0:
                    _become_runner(*fds)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                _report(f"P {pid}")
                _session_proxy.after_fork()
    finally:
        # Everything below this server: runners, what their cells started, what was adopted.
        if os.path.isdir("/proc/self"):
            kill_tree([os.getpid()], spare=[os.getpid()])
        else:
            kill_tree(children)
        _session_proxy.stop()


# ---- the fork server of a shared sandbox (a tree's container) -------------------------------

#: Longest control line the in-sandbox server accepts (a bootstrap is well under 1 KiB).
MAX_CONTROL_LINE = 1 << 20
#: Bytes of a runner's stderr forwarded per ``E`` line.
STDERR_CHUNK = 4096


class _StdioRunner:
    """A runner forked by :func:`serve_stdio`: its stderr pipe and the work directory to remove."""

    def __init__(self, pid: int, stderr_fd: int, workdir: str | None) -> None:
        self.pid = pid
        self.stderr_fd = stderr_fd
        self.workdir = workdir


#: Where the sessions' own work directories may be (directly below one of these, or below the
#: work root a cloud tree's server is started with).
WORK_ROOTS = ("/work", "/tmp")


def _owned_workdir(bootstrap: bytes, roots: tuple[str, ...] = WORK_ROOTS) -> str | None:
    """The session's own work directory, when the bootstrap asks the runner to make it (it is
    removed when the runner ends); only directories directly below one of ``roots``."""
    try:
        boot = Bootstrap.from_line(bootstrap)
    except ValueError:
        return None
    workdir = boot.workdir
    if not boot.make_workdir or workdir is None:
        return None
    parent, name = os.path.split(os.path.normpath(workdir))
    return workdir if parent in roots and name not in ("", ".", "..") else None


def _fork_stdio_runner(bootstrap: bytes, roots: tuple[str, ...]) -> _StdioRunner:
    """Forks a runner whose stdin holds ``bootstrap`` (one line) and whose stderr is a pipe
    back to this server."""
    stdin_read, stdin_write = os.pipe()
    stderr_read, stderr_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        _become_runner(stdin_read, stderr_write)
    os.close(stdin_read)
    os.close(stderr_write)
    try:
        view = memoryview(bootstrap.rstrip(b"\n") + b"\n")
        while view:  # one short line: the pipe's buffer takes it whole
            view = view[os.write(stdin_write, view) :]
    except OSError:
        pass  # the runner died at once: its exit is reported
    finally:
        os.close(stdin_write)
    os.set_blocking(stderr_read, False)
    return _StdioRunner(pid, stderr_read, _owned_workdir(bootstrap, roots))


def _forward_stderr(runner: _StdioRunner) -> bool:
    """Sends what ``runner`` wrote to its stderr as ``E`` lines; False at the pipe's end."""
    import base64

    try:
        data = os.read(runner.stderr_fd, STDERR_CHUNK)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    if data:
        _report(f"E {runner.pid} {base64.b64encode(data).decode()}")
    return bool(data)


def _close_stderr(runner: _StdioRunner, selector: selectors.BaseSelector) -> None:
    """Forwards what is left in ``runner``'s stderr pipe, then stops watching and closes it."""
    if runner.stderr_fd < 0:
        return
    for _ in range(64):  # bounded: what a runner's cells left behind may still be writing
        if not _forward_stderr(runner):
            break
    with contextlib.suppress(KeyError, ValueError):
        selector.unregister(runner.stderr_fd)
    os.close(runner.stderr_fd)
    runner.stderr_fd = -1


def _reap_stdio(runners: dict[int, _StdioRunner], selector: selectors.BaseSelector) -> list[str]:
    """Reaps every ended child, removes the runners' work directories and returns their exit
    reports (other children were adopted: see _sweep)."""
    import shutil

    exits = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        _session_proxy.reaped(pid)
        runner = runners.pop(pid, None)
        if runner is not None:
            _close_stderr(runner, selector)
            if runner.workdir:
                shutil.rmtree(runner.workdir, ignore_errors=True)
            exits.append(f"X {pid} {os.waitstatus_to_exitcode(status)}")
    return exits


def _control_line(
    line: bytes, runners: dict[int, _StdioRunner], roots: tuple[str, ...] = WORK_ROOTS
) -> _StdioRunner | None:
    """Acts on one host line: ``S <seq> <bootstrap>`` forks a runner (answered ``P <seq> <pid>``),
    ``K <pid>`` kills one of this server's runners and what its cells started."""
    kind, _, rest = line.partition(b" ")
    if kind == b"S":
        seq, _, bootstrap = rest.partition(b" ")
        if not seq.isdigit() or not bootstrap.strip():
            _report(f"P {int(seq) if seq.isdigit() else 0} -1")
            return None
        _session_proxy.before_fork(len(runners))
        runner = _fork_stdio_runner(bootstrap, roots)
        runners[runner.pid] = runner
        _report(f"P {int(seq)} {runner.pid}")
        _session_proxy.after_fork()
        return runner
    if kind == b"K" and rest.strip().isdigit() and int(rest) in runners:
        kill_tree([int(rest)])
    return None


def serve_stdio(work_root: str | None = None) -> int:
    """The main process of a sandbox shared by one RLM tree (``runner.pyz --fork-server-stdio
    [WORK_ROOT]``; in a cloud sandbox a process started through the provider's exec API, its
    sessions' work directories below ``WORK_ROOT``).

    The host talks to it over the sandbox's attached stdin/stdout (no descriptors cross the
    sandbox boundary), one line each:

    - host -> server: ``S <seq> <bootstrap JSON>`` forks a runner for that session (the line
      becomes the runner's stdin); ``K <pid>`` kills a runner and everything below it.
    - server -> host: ``R <pid>`` once, when ready; ``P <seq> <pid>`` answers each ``S`` (``-1``: no fork); ``X <pid> <code>``
      a runner's exit; ``E <pid> <base64>`` what a runner wrote to its stderr.

    Every runner is a new session with its own work directory (``make_workdir`` in its
    bootstrap: made by the runner, removed here when it ends), rlimits and broker session. When
    the host closes stdin (or dies: the attach stream ends), everything below this process is
    killed and it exits, and with it the sandbox.
    """
    signal.signal(signal.SIGTERM, _terminate)
    roots = (*WORK_ROOTS, os.path.normpath(work_root)) if work_root else WORK_ROOTS
    # Every runner it forks shares the sandbox's user with its siblings: see contain_process.
    os.environ[runner_module.SHARED_HOST_ENV] = "1"
    # Its stdout is the host's control stream: sessions run as the same user, so without this
    # a cell could open /proc/<this pid>/fd/1 and forge reports.
    runner_module.prctl(runner_module.PR_SET_DUMPABLE, 0)
    _set_name(SERVER_NAME)
    subreaper = runner_module.prctl(runner_module.PR_SET_CHILD_SUBREAPER, 1)
    runner_module.preload(os.environ.get(runner_module.PRELOAD_ENV, ""))
    _freeze_for_forks()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "control")
    selector.register(wake_read, selectors.EVENT_READ, "wake")
    runners: dict[int, _StdioRunner] = {}
    pending = b""
    # Ready: the host may send fork requests. Its pid makes the line long enough for Daytona's
    # log stream, which holds back the last two bytes of a chunk until more output comes.
    _report(f"R {os.getpid()}")
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "wake":
                    os.read(wake_read, 4096)
                    if _terminated:
                        return 0
                    exits = _reap_stdio(runners, selector)
                    if subreaper:
                        _sweep(set(runners))
                    for report in exits:
                        _report(report)
                    continue
                if isinstance(key.data, _StdioRunner):
                    if not _forward_stderr(key.data):
                        _close_stderr(key.data, selector)
                    continue
                data = os.read(0, 65536)
                if not data:
                    return 0  # the host is gone: finally kills what is left
                pending += data
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    runner = _control_line(line, runners, roots)
                    if runner is not None:
                        selector.register(runner.stderr_fd, selectors.EVENT_READ, runner)
                if len(pending) > MAX_CONTROL_LINE:
                    return 5  # not our host: a bootstrap is never this long
    finally:
        if os.path.isdir("/proc/self"):
            kill_tree([os.getpid()], spare=[os.getpid()])
        else:
            kill_tree(list(runners))
        _session_proxy.stop()
