"""The session proxy (``runner/sessionproxy.py``): runners of one fork server share its gRPC
connections to the broker, each call still made with its own session's token.

The proxy runs as a process of its own here, exactly as a fork server starts it; the broker is
the real one, in-process, with scripted session handlers; the runner side is the real
``Runner`` (or the proxy's own client, where a test needs to hold streams open).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator

import grpc
import pytest

from rlm.broker.loop import run_sync
from rlm.environments.runner import sessionproxy
from rlm.environments.runner.runner import BrokerUnavailableError, BudgetExhausted, Runner
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.testing.contract.cloud import wait_until
from tests.test_batch_rpc import Broker, ScriptedHandler

PROXY = """
import socket, sys
from rlm.environments.runner import sessionproxy
sessionproxy.serve(socket.socket(fileno=int(sys.argv[1])))
"""


class Proxy:
    """A session proxy process serving a unix socket in a private directory."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rlm-proxy-test-", dir="/tmp")
        self.path = os.path.join(self.directory, "proxy.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(128)
        self.process = subprocess.Popen(
            [sys.executable, "-c", PROXY, str(listener.fileno())], pass_fds=(listener.fileno(),)
        )
        listener.close()

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        for name in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, name))
        os.rmdir(self.directory)


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    made = Proxy()
    yield made
    made.close()


@pytest.fixture
def broker() -> Iterator[Broker]:
    made = Broker()
    yield made
    made.close()


def proxied_runner(broker: Broker, proxy: Proxy, token: str | None = None) -> Runner:
    return Runner(broker.server.address, token or broker.token, proxy=proxy.path)


def test_calls_through_the_proxy_answer_as_direct_ones(broker, proxy):
    runner = proxied_runner(broker, proxy)
    assert isinstance(runner._stub, sessionproxy.ProxyConnection)
    assert runner.llm_query("hello") == "re:hello"
    assert runner.rlm_query("kid") == "re:child:kid"
    assert runner.llm_query_batched(["a", "fail:b", "c"]) == [
        "re:a",
        "Error: LMError: provider said no to fail:b",
        "re:c",
    ]
    assert runner.rlm_query_batched([f"q{i}" for i in range(30)]) == [
        f"re:child:q{i}" for i in range(30)
    ]
    # a prompt too big for one message travels in parts, through the proxy too
    big = "x" * (3 * 1024 * 1024)
    assert runner.llm_query(big) == "re:" + big[:20]
    assert broker.handler.calls == 36


def test_a_spent_budget_and_a_wrong_token_mean_what_they_mean_directly(broker, proxy):
    with pytest.raises(BudgetExhausted, match=r"max_budget of \$0.05 reached"):
        proxied_runner(broker, proxy).llm_query("budget:x")
    stranger = proxied_runner(broker, proxy, token="not-the-token")
    assert stranger.llm_query("a") == "Error: missing, unknown or expired session token"
    assert (
        stranger.llm_query_batched(["a", "b"])
        == ["Error: missing, unknown or expired session token"] * 2
    )
    assert broker.handler.calls == 1  # only the budget call reached a handler


def test_each_runner_calls_with_its_own_sessions_token(broker, proxy):
    """Two sessions' runners on one proxy connection: each call reaches its own session."""
    other = ScriptedHandler()
    other_token = run_sync(_open(broker, other))
    first, second = proxied_runner(broker, proxy), proxied_runner(broker, proxy, other_token)
    assert first.llm_query("one") == "re:one" and second.llm_query("two") == "re:two"
    assert broker.handler.started == ["one"] and other.started == ["two"]


async def _open(broker: Broker, handler: ScriptedHandler) -> str:
    return broker.server.open_session(handler, "other").token


def test_an_interrupted_call_is_cancelled_at_the_broker(broker, proxy):
    """A cell interrupted while it waits for a call (the runner's SIGINT, here a SIGALRM that
    raises the same KeyboardInterrupt) stops waiting at once and cancels the call: the broker's
    handler sees the cancellation, as it does for a direct call."""
    runner = proxied_runner(broker, proxy)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    def interrupt_once_it_waits() -> None:
        wait_until(lambda: broker.handler.started == ["wait:long"], "the call", timeout=10)
        os.kill(os.getpid(), signal.SIGALRM)  # handled in the main thread, which waits

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        threading.Thread(target=interrupt_once_it_waits, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            runner.llm_query("wait:long")
    finally:
        signal.signal(signal.SIGALRM, previous)
    wait_until(lambda: broker.handler.cancelled == ["wait:long"], "its cancel", timeout=10)
    assert runner.llm_query("after") == "re:after"  # the connection goes on


def test_a_proxy_that_is_gone_fails_the_calls_as_a_broker_that_is_gone(broker, proxy):
    runner = proxied_runner(broker, proxy)
    assert runner.llm_query("before") == "re:before"
    proxy.process.send_signal(signal.SIGKILL)
    proxy.process.wait()
    with pytest.raises(BrokerUnavailableError, match="session proxy is gone"):
        runner.llm_query("after")


def test_runners_beyond_one_connections_stream_limit_still_get_through(broker, proxy):
    """Each runner keeps its Attach stream open; the broker allows 64 streams per connection,
    so 70 runners on a single connection would leave no stream for their calls. The proxy
    spreads them over connections of ``RUNNERS_PER_CHANNEL`` runners."""
    count = 70
    handlers = [ScriptedHandler() for _ in range(count)]
    tokens = [run_sync(_open(broker, handler)) for handler in handlers]
    connections = [
        sessionproxy.ProxyConnection(proxy.path, broker.server.address, token) for token in tokens
    ]
    hello = pb.RunnerMessage(hello=pb.Hello(runner_version="1", pid=1, python_version="3"))
    for connection in connections:  # each Attach stream stays open, as for a session's life
        connection.attach(lambda message: None, lambda error: None).put(hello)
    attached = _sessions(broker, tokens)
    wait_until(lambda: all(s._attached.done() for s in attached), "the attaches", timeout=10)
    replies = [
        c.Complete(pb.CompleteRequest(prompt=f"p{i}"), timeout=20)
        for i, c in enumerate(connections)
    ]
    assert [r.text for r in replies] == [f"re:p{i}" for i in range(count)]
    assert all(h.started == [f"p{i}"] for i, h in enumerate(handlers))


def _sessions(broker: Broker, tokens: list[str]) -> list:
    return [broker.server.sessions[token] for token in tokens]


def test_a_connection_that_does_not_speak_the_protocol_is_dropped_and_others_go_on(broker, proxy):
    """A cell can connect to the proxy itself: garbage, a hello that is not an object, a frame
    over the size limit, or an unknown method cost it its own connection, nothing more."""
    header = sessionproxy.HEADER
    attempts = [
        b"\x00" * 3,  # cut short
        sessionproxy.frame(0, b"H", b"[1, 2]"),  # a hello that is not an object
        header.pack(sessionproxy.MAX_REQUEST_FRAME_BYTES + 1, 0, ord("H")),  # too long
    ]
    for data in attempts:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(proxy.path)
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            assert sock.recv(1) == b"", "the proxy closes the connection"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(proxy.path)
        hello = json.dumps({"address": broker.server.address, "token": broker.token})
        sock.sendall(
            sessionproxy.frame(0, b"H", hello.encode())
            + sessionproxy.frame(1, b"O", b"Shutdown\n")
            + sessionproxy.frame(1, b"M", b"")
            + sessionproxy.frame(1, b"E")
        )
        sock.settimeout(10)
        reply = sock.makefile("rb")
        length, stream, kind = header.unpack(reply.read(header.size))
        status = reply.read(length)
    assert (stream, kind) == (1, ord("S"))
    assert status.startswith(b"%d " % grpc.StatusCode.UNIMPLEMENTED.value[0])
    assert proxied_runner(broker, proxy).llm_query("still") == "re:still"
    assert proxy.process.poll() is None
