"""Slow links with a long backlog: the relay's resend logic must not pile replays onto the
backlog, and the runner's gRPC channel must outlive the wait (its keepalive tuned for the
relay, :data:`rlm.environments.runner.runner.RELAYED_KEEPALIVE_MS`)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from conftest import RecordingHandler, start_environment, usable_cloud_fixture
from rlm_standins._shaping import Shaping

from rlm.broker.loop import run_sync
from rlm.environments.runner import relay as sandbox_relay
from rlm.environments.runner.relay import RESEND_MAX_SECONDS, Sequencer, encode_frame
from rlm.environments.runner.runner import DIRECT_KEEPALIVE_MS, RELAYED_KEEPALIVE_MS
from rlm.protos import rlm_sandbox_pb2 as pb


def line(seq: int, ack: int, conn: int, kind: bytes, data: bytes = b"") -> bytes:
    return encode_frame(seq, ack, conn, kind, data).rstrip(b"\n")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(sandbox_relay.time, "monotonic", clock)
    return clock


def test_resend_requests_back_off_while_nothing_arrives_in_order(clock):
    receiver = Sequencer()
    asked = []
    for _ in range(600):  # a minute of gap frames, every 0.1 s
        clock.now += 0.1
        if receiver.resend_request() is not None:
            asked.append(clock.now - 1000.0)
    # 0.5 s, then 1, 2, 4... apart, capped: a handful of requests, not one every 0.5 s.
    assert len(asked) <= 9, asked
    gaps = [b - a for a, b in itertools.pairwise(asked)]
    assert gaps == sorted(gaps) and max(gaps) <= RESEND_MAX_SECONDS + 0.2
    # Once a frame arrives in order the next gap is asked about at once.
    receiver.receive(line(1, 0, 1, b"D", b"x"))
    assert receiver.resend_request() is not None


def test_an_overdue_resend_waits_for_a_quiet_link(clock):
    receiver = Sequencer()
    assert receiver.resend_request() is not None
    for _ in range(30):  # duplicates keep arriving (a provider replaying its log)
        clock.now += 0.1
        receiver.receive(line(0, 0, 0, b"K"))
        assert receiver.overdue_resend() is None
    clock.now += 1.0  # then silence: the request or its answer was lost
    assert receiver.overdue_resend() is not None


def test_a_resend_asked_again_before_the_replay_could_arrive_is_not_replayed(clock):
    sender = Sequencer()
    for _ in range(10):
        sender.stamp(1, b"D", b"x" * 100)
    clock.now += 8.0  # a slow link: the first frames take 8 s to be acknowledged
    sender.receive(line(0, 3, 0, b"K"))
    assert sender.link_delay == pytest.approx(8.0)
    assert len(sender.replay_from(4)) == 7
    clock.now += 2.0
    assert sender.replay_from(4) == [], "the first replay is still on its way"
    assert sender.replay_from(6) == []
    clock.now += 7.0
    assert len(sender.replay_from(4)) == 7, "after the link's delay it was lost: replay again"
    assert sender.replays == 2


def test_a_relayed_runner_tolerates_minutes_of_backlog_before_its_keepalive_fails():
    every, timeout = RELAYED_KEEPALIVE_MS
    # The relay holds up to 32 MiB unacknowledged; at 256 KiB/s that is 128 s of backlog.
    assert timeout / 1000 > (sandbox_relay.REPLAY_LIMIT / (256 * 1024))
    assert every >= DIRECT_KEEPALIVE_MS[0]


class _Short(RecordingHandler):
    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        self.calls.append(("complete", f"{len(request.prompt)}"))
        return pb.CompleteReply(text=f"{len(request.prompt)}", input_tokens=1, output_tokens=1)


def test_a_slow_link_with_a_dropped_stream_and_a_long_backlog(broker):
    """Daytona at 500 KB/s: 6 MB from the runner (8 MB of frames), the log stream dropped near
    the end, so the daemon's whole log is read again (seconds of duplicates) while the runner's
    channel waits. The channel survives, and the relay does not answer the backlog with a
    replay every half second."""
    module = usable_cloud_fixture("daytona")
    size = 6_000_000
    shaping = Shaping(rtt=0.08, bandwidth=500_000, drop_after=6_000_000)
    handler = _Short()
    with module.running_standin(shaping=shaping) as (server, kwargs):
        # A sandbox of its own: the runner's own relay stream is under test.
        env: Any = start_environment("daytona", broker, handler, child_sandbox="own", **kwargs)
        try:
            started = time.monotonic()
            result = run_sync(env.execute(f'print(llm_query("y" * {size}))', timeout=600))
            took = time.monotonic() - started
            assert result.stdout == f"{size}\n", result
            assert not result.restarted, "the runner's channel died"
            relay = env._relay
            assert relay.reattachments == 1 and server.dropped_streams == 1
            requests = relay._state.resend_requests
            assert requests <= 8, f"{requests} resend requests in {took:.0f} s: {relay.problems}"
            assert run_sync(env.execute("print('still here')")).stdout == "still here\n"
        finally:
            run_sync(env.aclose())
