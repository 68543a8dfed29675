"""The fork server of a shared sandbox (``runner.pyz --fork-server-stdio``), driven over its
stdin/stdout as the docker environment drives it, here as a plain process on this host: the line
protocol, per-session work directories and clean-up do not need a container."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from rlm.environments.runner.bundle import runner_bundle_path


@pytest.fixture
def server() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-I", "-u", str(runner_bundle_path()), "--fork-server-stdio"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"R %d\n" % process.pid
    yield process
    if process.poll() is None:
        process.kill()
    process.wait(10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def send(server: subprocess.Popen[bytes], line: str) -> None:
    assert server.stdin is not None
    server.stdin.write(line.encode() + b"\n")
    server.stdin.flush()


def read_until_exit(server: subprocess.Popen[bytes], pid: int) -> tuple[int, bytes]:
    """Reads the server's lines until runner ``pid`` exits: (its exit code, its stderr)."""
    assert server.stdout is not None
    stderr = b""
    while line := server.stdout.readline():
        kind, *fields = line.split()
        if kind == b"E" and int(fields[0]) == pid:
            stderr += base64.b64decode(fields[1])
        if kind == b"X" and int(fields[0]) == pid:
            return int(fields[1]), stderr
    raise AssertionError("the server's stdout ended before the runner's exit was reported")


def test_a_runner_is_forked_reported_and_its_work_directory_removed(server):
    assert server.stdout is not None
    workdir = f"/tmp/rlm-stream-{uuid.uuid4().hex}"
    bootstrap = {
        "address": "unix:/nonexistent/broker.sock",
        "token": "t",
        "workdir": workdir,
        "make_workdir": True,
        "shell": "no-such-shell",  # the runner stops before dialling, saying why on stderr
    }
    send(server, f"S 7 {json.dumps(bootstrap)}")
    kind, seq, pid = server.stdout.readline().split()
    assert (kind, seq) == (b"P", b"7") and int(pid) > 0
    code, stderr = read_until_exit(server, int(pid))
    assert code == 2 and b"no-such-shell" in stderr
    assert not os.path.exists(workdir), "the session's work directory outlived its runner"


def test_a_malformed_request_is_refused_and_the_server_goes_on(server):
    assert server.stdout is not None
    send(server, "S x {}")
    assert server.stdout.readline() == b"P 0 -1\n"
    send(server, "K 1")  # not one of its runners: ignored
    send(server, "S 3 ")
    assert server.stdout.readline() == b"P 3 -1\n"


def test_the_end_of_stdin_ends_the_server(server):
    assert server.stdin is not None
    server.stdin.close()
    assert server.wait(10) == 0


def test_a_runner_that_fails_at_once_keeps_its_stderr_and_exit_code():
    """The host's side of the stream: a runner that writes its error and exits before its start
    resumes (its pid, stderr and exit arrive in one read) still reports both; before, its
    stderr was dropped as a stranger's and the error said only "exited with code 2"."""
    import asyncio

    from rlm.broker.loop import run_sync
    from rlm.environments.forkserver import StreamForkServer, StreamRunnerProcess

    async def scenario() -> tuple[int | None, str]:
        sent: list[bytes] = []
        server: StreamForkServer

        async def write(data: bytes) -> None:
            sent.append(data)
            seq = data.split(b" ")[1].decode()
            error = base64.b64encode(b"the sandbox image has no ipython").decode()
            # The fork server's answer, its runner's stderr and its exit, read at once.
            asyncio.get_running_loop().call_soon(
                server.feed, f"P {seq} 4242\nE 4242 {error}\nX 4242 2\n".encode()
            )

        server = StreamForkServer(write, max_runners=4, what="test")
        server.feed(b"R\n")
        runner = StreamRunnerProcess(server, start_timeout=5)
        await runner.send_bootstrap(b'{"token": "t"}\n')
        await runner.wait_exit(1)
        return runner.exit_code(), runner.diagnostics()

    code, stderr = run_sync(scenario())
    assert code == 2
    assert "no ipython" in stderr
