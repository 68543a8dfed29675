"""A fork server: one process that has paid the runner's start-up (interpreter, grpc, protos)
once and forks a fresh runner from that state on request, in a few milliseconds.

Started by the local environment as ``python -I -u runner.pyz --fork-server HOST_PID`` with a
unix socket on its stdin. Protocol:

- host -> server, on the socket: one byte ``F`` carrying two file descriptors (``SCM_RIGHTS``):
  the new runner's stdin (where its bootstrap line arrives) and its stderr.
- server -> host, on stdout, one line each: ``P <pid>`` answers each ``F`` in order;
  ``X <pid> <code>`` reports a runner's exit (the server is its parent and reaps it).

Each forked runner starts its own session (the host kills its process group), dies with the
server (``PR_SET_PDEATHSIG``), and keeps no descriptor of the server's. The server dies with the
host the same way, and kills its runners when the host closes the socket. It never starts a
thread, so forking it is safe. ``RLM_RUNNER_PRELOAD=ipython`` in its environment makes it import
IPython first, for runners that will use the ipython shell.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys

from rlm.environments.runner import runner as runner_module

MAX_FD = 65536


def _report(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def _become_runner(stdin_fd: int, stderr_fd: int) -> None:
    """In the forked child: detach from the server's descriptors and serve one session."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(stdin_fd, 0)
        os.dup2(devnull, 1)
        os.dup2(stderr_fd, 2)
        os.closerange(3, MAX_FD)
        runner_module.watch_parent(os.getppid())
        code = runner_module.main()
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code if isinstance(code, int) else 1)


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _report(f"X {pid} {os.waitstatus_to_exitcode(status)}")


def serve(host_pid: int) -> int:
    runner_module.watch_parent(host_pid)
    # What the runners will import anyway (IPython for the ipython shell), imported once here.
    runner_module.preload(os.environ.get(runner_module.PRELOAD_ENV, ""))
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
                    _reap(children)
                    continue
                message, fds, _flags, _address = socket.recv_fds(control, 1, 2)
                if not message:
                    return 0  # the host closed the socket: finally kills what is left
                if len(fds) != 2:
                    for fd in fds:
                        os.close(fd)
                    _report("P -1")
                    continue
                pid = os.fork()
                if pid == 0:
                    _become_runner(*fds)
                for fd in fds:
                    os.close(fd)
                children.add(pid)
                _report(f"P {pid}")
    finally:
        for pid in children:
            for kill in (os.killpg, os.kill):  # os.kill: a child that has no session of its own yet
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
