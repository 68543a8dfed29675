"""What sandbox code can make the host hold is capped: call-back request bytes in flight (a
refused call comes back to the code as an "Error: ..." string, the run goes on), and what one
open call makes gRPC buffer before the broker sees it (one message of at most 2 MiB; bigger
requests travel in parts, admitted on their declared size before a part is read)."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator

import grpc
import pytest
from test_batch_rpc import MIB, Broker, ScriptedHandler, auth, stub_for

import rlm.broker.server as broker_server
import rlm.run as run_module
from rlm.broker.loop import run_sync
from rlm.environments.runner.runner import PART_BYTES, Runner
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.testing import RecordedRequest

MB = 1_000_000


def test_one_message_over_the_receive_cap_is_refused_before_any_handler_runs():
    """gRPC reads a unary request whole before the handler can refuse it: the broker's message
    cap is what bounds that, so a 3 MiB unary Complete never reaches the handler."""
    broker = Broker()
    try:
        channel, stub = stub_for(broker)
        with channel, pytest.raises(grpc.RpcError) as raised:
            stub.Complete(
                pb.CompleteRequest(prompt="x" * (3 * MIB)), metadata=auth(broker), timeout=30
            )
        assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert broker_server.MAX_RECEIVE_MESSAGE_BYTES <= 2 * MIB
        assert broker.handler.calls == 0
    finally:
        broker.close()


def test_a_big_item_is_refused_on_its_declared_size_before_a_part_is_sent():
    """The refusal of a 10 MiB item comes back while the runner has sent only its size: the
    broker did not wait for (or hold) a byte of the prompt to refuse it."""
    broker = Broker(max_bytes_in_flight=3 * MIB)
    try:
        channel, stub = stub_for(broker)
        outbox: queue.SimpleQueue[pb.BatchCall | None] = queue.SimpleQueue()
        outbox.put(pb.BatchCall(parts_total_bytes=10 * MIB))
        with channel:
            stream = stub.CompleteBatch(iter(outbox.get, None), metadata=auth(broker), timeout=30)
            first = next(stream)
            assert first.index == 0 and first.code == grpc.StatusCode.ABORTED.value[0]
            assert "limit 3 MiB" in first.details
            assert broker.server.bytes_in_flight == 0
            outbox.put(pb.BatchCall(complete=pb.CompleteRequest(prompt="after")))
            outbox.put(None)
            rest = list(stream)
        assert [(r.index, r.reply.text) for r in rest] == [(1, "re:after")]
        assert broker.handler.started == ["after"]
    finally:
        broker.close()


class ToolHandler(ScriptedHandler):
    """Answers a tool call with the size of the arguments it got."""

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        return pb.ToolReply(result_json=str(len(request.args_json)).encode())


@pytest.fixture
def tool_broker() -> Iterator[Broker]:
    made = Broker()

    async def use_tool_handler() -> None:
        made.handler = ToolHandler()
        made.server.sessions[made.token].handler = made.handler

    run_sync(use_tool_handler())
    yield made
    made.close()


def test_prompts_over_the_message_cap_travel_in_parts_and_arrive_whole(tool_broker):
    broker = tool_broker
    runner = Runner(broker.server.address, broker.token)
    big = "b" * (5 * MIB)
    assert runner.llm_query(big) == "re:" + big[:20]
    assert runner.rlm_query(big) == "re:child:" + big[:14]
    assert runner.llm_query_batched(["s1", big, "s2"]) == ["re:s1", "re:" + big[:20], "re:s2"]
    assert broker.handler.started[0] == big and broker.handler.started[1] == "child:" + big
    assert sorted(map(len, broker.handler.started)) == [2, 2, len(big), len(big), len(big) + 6]
    tool = runner.make_tool("size", "")
    assert tool("t" * (3 * MIB)) > 3 * MIB  # JSON of the arguments, sent in parts
    assert tool("small") < PART_BYTES
    assert broker.server.bytes_in_flight == 0


def test_a_big_llm_query_over_the_cap_gets_an_error_string_and_nothing_runs():
    broker = Broker(max_bytes_in_flight=3 * MIB)
    try:
        runner = Runner(broker.server.address, broker.token)
        reply = runner.llm_query("c" * (4 * MIB))
        assert reply.startswith("Error: the host already holds 0 MiB")
        assert "limit 3 MiB" in reply
        assert broker.handler.calls == 0
        assert runner.llm_query("small") == "re:small"  # the connection is still usable
    finally:
        broker.close()


def test_a_prompt_over_the_whole_request_limit_gets_an_error_string_not_a_dead_run():
    """Over 64 MiB used to fail in gRPC as RESOURCE_EXHAUSTED, which the runner reads as a spent
    budget; now the broker refuses it on its announced size, like any other refused call."""
    broker = Broker()
    try:
        runner = Runner(broker.server.address, broker.token)
        reply = runner.llm_query("d" * (65 * MIB))
        assert reply.startswith("Error: a call-back request of 65 MiB is over the 64 MiB limit")
        assert broker.handler.calls == 0 and broker.server.bytes_in_flight == 0
    finally:
        broker.close()


def test_an_answer_over_the_message_cap_comes_back_whole(make_rlm, lm_server):
    """A cell's result bigger than the broker's message cap reaches the host in parts."""
    lm_server.set_script(
        '```repl\nanswer["content"] = "a" * 5_000_000 + "z"\nanswer["ready"] = True\n```'
    )
    result = make_rlm().completion("data")
    assert len(result.response) == 5_000_001 and result.response.endswith("az")


def test_request_bytes_in_flight_are_capped(make_rlm, lm_server, monkeypatch, sandbox):
    monkeypatch.setattr(broker_server, "MAX_BYTES_IN_FLIGHT", 3 * 1024 * 1024)
    lm_server.latency = 1.0

    def script(request: RecordedRequest) -> str:
        if not any(m.get("role") == "system" for m in request.messages):
            return "sub ok"
        if not any(m.get("role") == "assistant" for m in request.messages):
            return (
                "```repl\nresults = llm_query_batched([str(i) * 1_000_000 for i in range(8)])\n"
                "refused = [r for r in results if r.startswith('Error:')]\n"
                "print(len(refused), sum(r == 'sub ok' for r in results))\nprint(refused[0])\n```"
            )
        return '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'

    lm_server.set_script(script)
    result = make_rlm(**sandbox).completion("data")
    assert result.response == "done"
    stdout = result.metadata["iterations"][0]["code_blocks"][0]["result"]["stdout"]
    counts, message = stdout.splitlines()[0], stdout.splitlines()[1]
    refused, answered = map(int, counts.split())
    assert refused + answered == 8
    assert answered <= 3 and refused >= 5  # ~1 MB each under a 3 MiB cap
    assert "limit 3 MiB" in message and "fewer or smaller calls" in message
    sub_requests = [r for r in lm_server.requests if len(r.prompt) >= MB]
    assert len(sub_requests) == answered


def test_the_sub_call_text_a_tree_keeps_is_capped(make_rlm, lm_server, monkeypatch):
    """Sub-call prompts stay in the trajectory (memory, metadata, log) up to a tree-wide cap;
    past it only previews are kept, and the run is unaffected."""
    monkeypatch.setattr(run_module, "TRAJECTORY_TREE_CHARS", 250_000)
    lm_server.set_script(
        lambda r: (
            "sub ok"
            if not any(m.get("role") == "system" for m in r.messages)
            else "```repl\nr = llm_query_batched([str(i) * 100_000 for i in range(6)])\n"
            "answer['content'] = str(r.count('sub ok'))\nanswer['ready'] = True\n```"
        )
    )
    result = make_rlm().completion("data")
    assert result.response == "6"
    calls = result.metadata["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"]
    kept = sorted(len(call["prompt"]) for call in calls)
    assert len(calls) == 6
    assert sum(min(k, 100_000) for k in kept) <= 250_000 + 6 * run_module.PREVIEW_CHARS
    assert kept[0] < 1_000  # the last ones are previews...
    assert (
        "the tree's trajectory text cap is spent"
        in min(calls, key=lambda c: len(c["prompt"]))["prompt"]
    )
    assert kept[-1] == 100_000  # ...the first ones whole


def test_a_runner_flooding_its_attach_stream_gets_no_more_than_a_few_messages_queued():
    """Results nobody asked for wait in the runner (gRPC flow control), not in host memory: the
    host holds at most MAX_RUNNER_MESSAGES_QUEUED unread, and all arrive once they are read."""
    broker = Broker()
    try:
        channel, stub = stub_for(broker)
        hello = pb.RunnerMessage(hello=pb.Hello(runner_version="1"))
        results = [pb.RunnerMessage(result=pb.ExecuteResult(cell_id=i)) for i in range(20)]
        session = broker.server.sessions[broker.token]
        with channel:
            stream = stub.Attach(iter([hello, *results]), metadata=auth(broker))
            connection = run_sync(asyncio.wait_for(session.wait_runner(), 30))
            limit = broker_server.MAX_RUNNER_MESSAGES_QUEUED
            while connection._inbox.qsize() < limit:
                threading.Event().wait(0.01)
            for _ in range(50):  # a broker without a bound would queue all 20 here
                assert connection._inbox.qsize() <= limit
                threading.Event().wait(0.01)
            received = [run_sync(connection.receive()).result.cell_id for _ in range(20)]
            stream.cancel()
        assert received == list(range(20))
    finally:
        broker.close()


def _in_parts(message: pb.RunnerMessage) -> list[pb.RunnerMessage]:
    data = message.SerializeToString()
    parts = [pb.MessagePart(data=data[i : i + MIB]) for i in range(0, len(data), MIB)]
    parts[0].total_bytes = len(data)
    return [pb.RunnerMessage(part=part) for part in parts]


def test_big_runner_messages_are_reassembled_and_queued_up_to_a_byte_cap(monkeypatch):
    monkeypatch.setattr(broker_server, "MAX_RUNNER_BYTES_QUEUED", 8 * MIB)
    broker = Broker()
    try:
        channel, stub = stub_for(broker)
        hello = pb.RunnerMessage(hello=pb.Hello(runner_version="1"))
        big = [
            pb.RunnerMessage(result=pb.ExecuteResult(cell_id=i, answer_content=str(i) * 5 * MB))
            for i in range(3)
        ]
        messages = [hello] + [part for message in big for part in _in_parts(message)]
        session = broker.server.sessions[broker.token]
        with channel:
            stream = stub.Attach(iter(messages), metadata=auth(broker))
            connection = run_sync(asyncio.wait_for(session.wait_runner(), 30))
            while connection._inbox.qsize() < 1:
                threading.Event().wait(0.01)
            for _ in range(50):  # a second 5 MB result would pass the 8 MiB cap
                assert connection._inbox.qsize() == 1
                threading.Event().wait(0.01)
            received = [run_sync(connection.receive()).result for _ in range(3)]
            stream.cancel()
        assert [r.answer_content for r in received] == [m.result.answer_content for m in big]
    finally:
        broker.close()
