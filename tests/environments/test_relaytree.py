"""The pieces of a cloud tree's shared sandbox (``environments/relaytree.py``) on their own: the
tree's relay process, the fork server's work roots and the batched writes to a remote stdin.
Whole trees on every provider's stand-in are in test_cloud_contract.py."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from rlm.broker.loop import run_sync
from rlm.environments.base import WarmPool
from rlm.environments.relaytree import BatchedWriter
from rlm.environments.runner.bootstrap import Bootstrap
from rlm.environments.runner.bundle import runner_bundle_path
from rlm.environments.runner.forkserver import _owned_workdir
from rlm.environments.runner.relay import decode_frame


def test_batched_writer_joins_what_queued_while_a_write_was_in_flight():
    writes: list[bytes] = []

    async def write(data: bytes) -> None:
        writes.append(data)
        await asyncio.sleep(0.05)

    async def scenario() -> None:
        writer = BatchedWriter(write)
        first = asyncio.ensure_future(writer(b"0\n"))
        await asyncio.sleep(0.01)  # the first write is in flight
        await asyncio.gather(first, *(writer(b"%d\n" % i) for i in range(1, 5)))

    run_sync(scenario())
    assert writes[0] == b"0\n"
    assert b"".join(writes) == b"0\n1\n2\n3\n4\n"
    assert len(writes) == 2, "what queued during the first write went in one"


def test_batched_writer_fails_every_caller_of_a_failed_write():
    async def write(data: bytes) -> None:
        await asyncio.sleep(0.01)
        raise OSError("stdin closed")

    async def scenario() -> list[BaseException | None]:
        writer = BatchedWriter(write)
        return await asyncio.gather(writer(b"a\n"), writer(b"b\n"), return_exceptions=True)

    outcomes = run_sync(scenario())
    assert [type(outcome) for outcome in outcomes] == [OSError, OSError]


def _bootstrap(workdir: str) -> bytes:
    return Bootstrap(address="unix:/x", token="t", workdir=workdir, make_workdir=True).to_line()


def test_fork_server_removes_only_work_directories_directly_below_its_roots():
    roots = ("/work", "/tmp", "/data/rlm-abc")
    assert _owned_workdir(_bootstrap("/data/rlm-abc/s1"), roots) == "/data/rlm-abc/s1"
    assert _owned_workdir(_bootstrap("/tmp/s2"), roots) == "/tmp/s2"
    assert _owned_workdir(_bootstrap("/data/rlm-abc/../etc"), roots) is None
    assert _owned_workdir(_bootstrap("/data/s3"), roots) is None
    assert _owned_workdir(_bootstrap("/data/rlm-abc/s1"), ("/work", "/tmp")) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="unix sockets, Linux paths")
def test_the_tree_relay_announces_itself_and_carries_each_runners_connection():
    """``runner.pyz --relay-stdio SOCKET``: one frame once the socket listens, then an ``O``
    frame with a connection id of its own for every runner that dials it; it ends when its
    stdin closes."""
    with tempfile.TemporaryDirectory(prefix="rlm-relay-test-") as directory:
        path = os.path.join(directory, "relay.sock")
        process = subprocess.Popen(
            [sys.executable, "-I", "-u", str(runner_bundle_path()), "--relay-stdio", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None and process.stdin is not None
        try:
            hello = decode_frame(process.stdout.readline().rstrip(b"\n"))
            assert (hello.seq, hello.kind) == (0, b"K")
            clients = []
            for _ in range(2):
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(path)
                clients.append(client)
            opened = [decode_frame(process.stdout.readline().rstrip(b"\n")) for _ in clients]
            assert [frame.kind for frame in opened] == [b"O", b"O"]
            assert len({frame.conn for frame in opened}) == 2
            process.stdin.close()
            deadline = time.monotonic() + 10
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert process.returncode == 0
            for client in clients:
                assert client.recv(1) == b"", "the relay ends its connections when it ends"
                client.close()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(10)
            process.stdout.close()


def test_a_connection_found_broken_by_a_write_is_reported_closed_to_the_host():
    """A runner that died while the host was sending to it: the write fails before the relay's
    reader sees the end, and the host is still told (else its session would wait on a dead
    runner: with a sandbox shared by the tree, no process exit tells it)."""
    from rlm.environments.runner.relay import Frame, StdioRelay

    with tempfile.TemporaryDirectory(prefix="rlm-relay-test-") as directory:
        in_read, in_write = os.pipe()
        out_read, out_write = os.pipe()
        relay = StdioRelay(os.path.join(directory, "relay.sock"), in_read, out_write)
        ours, runner = socket.socketpair()
        runner.close()
        relay._connections[7] = ours
        try:
            relay._dispatch(Frame(1, 0, 7, b"D", b"for a dead runner"))
            readable, _, _ = select.select([out_read], [], [], 5)
            assert readable, "the relay wrote nothing to the host"
            closed = decode_frame(os.read(out_read, 65536).rstrip(b"\n"))
            assert (closed.conn, closed.kind) == (7, b"C")
            assert 7 not in relay._connections
        finally:
            relay.close()
            for fd in (in_read, in_write, out_read, out_write):
                os.close(fd)


def test_a_trees_pool_key_holds_its_sandbox_settings_but_no_session_label_or_secret():
    """Sessions of one tree share a key whatever their labels; trees whose sandboxes would be
    created differently (resources, account, interpreter, runner cap) never share a pooled
    sandbox; a credential is in the key only as a fingerprint."""
    from rlm.broker.server import BrokerServer
    from rlm.environments.daytona import DaytonaEnvironment
    from rlm.environments.modal import ModalEnvironment

    broker = BrokerServer()

    def key(cls: type, **kwargs: object) -> tuple:
        env = cls(broker=broker, handler=None, **kwargs)
        return env.tree_key()

    for cls in (DaytonaEnvironment, ModalEnvironment):
        base = key(cls, label="root", cpu=1)
        assert key(cls, label="child-3", cpu=1) == base
        assert key(cls, label="root", cpu=2) != base
        assert key(cls, label="root", cpu=1, python="/opt/py/bin/python3") != base
        assert key(cls, label="root", cpu=1, max_live_runners=4) != base
    daytona = key(DaytonaEnvironment, api_key="dtn-secret-value")
    assert daytona != key(DaytonaEnvironment, api_key="dtn-other-value")
    assert "dtn-secret-value" not in repr(daytona)
    modal = key(ModalEnvironment, token_id="ak-1", token_secret="as-secret-value")
    assert modal != key(ModalEnvironment, token_id="ak-1", token_secret="as-other-value")
    assert "as-secret-value" not in repr(modal)


def test_a_tree_sandbox_that_fails_to_start_is_destroyed_and_frees_its_pool_place():
    """The fork server cannot be started: the sandbox (and the relay already started in it) is
    destroyed, the pool's count of live sandboxes goes back, and the error reaches the session."""
    from stdio_adapter import StdioRelayEnvironment

    from rlm.broker.server import BrokerServer
    from rlm.environments.relay import RemoteProcess
    from rlm.errors import SandboxError
    from rlm.testing.contract import RecordingHandler

    destroyed: list[str] = []

    class NoForkServer(StdioRelayEnvironment):
        async def _exec(self, argv: list[str]) -> RemoteProcess:
            if "--fork-server-stdio" in argv:
                raise SandboxError("the provider refused the exec")
            return await super()._exec(argv)

        async def _destroy_sandbox(self) -> None:
            destroyed.append(self.sandbox_dir)
            await super()._destroy_sandbox()

    async def scenario() -> WarmPool:
        server = BrokerServer()
        await server.start()
        try:
            env = NoForkServer(
                broker=server.scope(), handler=RecordingHandler(), label="t", max_sandboxes=2
            )
            with pytest.raises(SandboxError, match="refused the exec"):
                await env.start()
            (pool,) = [r for r in server.shared_resources() if isinstance(r, WarmPool)]
            return pool
        finally:
            await server.aclose()

    pool = run_sync(scenario())
    assert len(destroyed) == 1 and not os.path.exists(destroyed[0])
    assert (pool.live, pool.started, pool.peak_live) == (0, 0, 1)


async def _one_pooled_session(code: str) -> tuple[str, WarmPool]:
    """Runs ``code`` in the one session of a tree of the stdio test adapter with a warm pool
    (``pool_size=1``), closes the session, the tree and the broker; the cell's stdout and the
    pool."""
    from stdio_adapter import StdioRelayEnvironment

    from rlm.broker.server import BrokerServer
    from rlm.testing.contract import RecordingHandler

    server = BrokerServer()
    await server.start()
    try:
        tree = server.scope()
        env = StdioRelayEnvironment(broker=tree, handler=RecordingHandler(), label="t", pool_size=1)
        try:
            await env.start()
            result = await env.execute(code)
        finally:
            await env.aclose()
            await tree.aclose()
        (pool,) = [r for r in server.shared_resources() if isinstance(r, WarmPool)]
        return result.stdout, pool
    finally:
        await server.aclose()


def test_a_tree_takes_another_pooled_sandbox_when_the_one_it_got_does_not_answer(monkeypatch):
    """The provider ended a waiting sandbox before the pool noticed (its own idle timeout ran
    out first): restarting its fork server fails, so the tree destroys it, gives its place
    back and takes another; the session never sees the dead one."""
    from rlm.environments.relaytree import TreeSandbox
    from rlm.errors import SandboxDiedError

    answered = TreeSandbox.fork_server
    ended: list[str] = []

    async def fork_server(self: TreeSandbox):  # type: ignore[no-untyped-def]
        if not ended:
            ended.append(self.sandbox_dir)
            raise SandboxDiedError("the provider ended this sandbox")
        return await answered(self)

    monkeypatch.setattr(TreeSandbox, "fork_server", fork_server)

    stdout, pool = run_sync(_one_pooled_session("print(6 * 7)"))
    assert stdout == "42\n"
    assert len(ended) == 1 and not os.path.exists(ended[0]), "the dead sandbox was not destroyed"
    assert pool.started >= 2 and pool.live == 0, (pool.started, pool.live)


def test_a_first_session_that_cannot_start_in_a_pooled_sandbox_starts_in_another(monkeypatch):
    """The pooled sandbox looked alive when handed out, but its fork server had ended (the
    provider ended it after the pool last looked): the tree's first session fails to fork
    there, so that sandbox, never used, is destroyed and the session starts in another."""
    from rlm.environments.forkserver import StreamForkServer
    from rlm.environments.relaytree import TreeSandbox
    from rlm.errors import SandboxStartError

    forks = StreamForkServer._start
    refused: list[str] = []
    dirs: list[str] = []
    started = TreeSandbox.start

    async def start(cls, owner, max_runners, startup_timeout):  # type: ignore[no-untyped-def]
        sandbox = await started(owner, max_runners, startup_timeout)
        dirs.append(sandbox.sandbox_dir)
        return sandbox

    async def fork(self, child, bootstrap, timeout):  # type: ignore[no-untyped-def]
        if not refused:
            refused.append("once")
            raise SandboxStartError("the fork server of the tree's sandbox ended")
        return await forks(self, child, bootstrap, timeout)

    monkeypatch.setattr(TreeSandbox, "start", classmethod(start))
    monkeypatch.setattr(StreamForkServer, "_start", fork)

    stdout, pool = run_sync(_one_pooled_session("import os\nprint(os.path.dirname(os.getcwd()))"))
    where = stdout.strip()
    assert refused == ["once"]
    assert where != dirs[0], "the session ran in the sandbox it could not start in"
    assert not os.path.exists(dirs[0]), "the unused sandbox was not destroyed"
    assert pool.live == 0
