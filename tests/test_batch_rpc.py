"""``llm_query_batched`` / ``rlm_query_batched`` travel as one ``CompleteBatch`` stream.

The broker runs in-process with a scripted session handler (no LM, no sandbox); the runner side
is the real ``Runner`` class talking gRPC to it, or a plain stub where the test needs to watch the
stream itself.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import rlm.broker.server as broker_server
from rlm.broker.loop import background_loop, run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.runner.runner import BudgetExhausted, Runner
from rlm.errors import BudgetExceededError, LMError
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.protos import rlm_sandbox_pb2_grpc as pb_grpc
from rlm.testing import RecordedRequest, Reply

MIB = 1024 * 1024


class ScriptedHandler:
    """A session handler whose replies are chosen by prompt: ``fail:...`` raises an LMError,
    ``budget:...`` a spent budget, ``wait:...`` blocks until ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.calls = 0

    async def _reply(self, prompt: str) -> pb.CompleteReply:
        self.calls += 1
        self.started.append(prompt)
        if prompt.startswith("fail:"):
            raise LMError(f"provider said no to {prompt}")
        if prompt.startswith("budget:"):
            raise BudgetExceededError("max_budget of $0.05 reached", spent=0.05, budget=0.05)
        if prompt.startswith("wait:"):
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled.append(prompt)
                raise
        return pb.CompleteReply(text=f"re:{prompt[:20]}")

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        return await self._reply(request.prompt)

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        return await self._reply(f"child:{request.prompt}")

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        raise AssertionError("no tools in these tests")


class Broker:
    """A started ``BrokerServer`` on the process's rlm loop with one scripted session."""

    def __init__(self, max_bytes_in_flight: int | None = None) -> None:
        self.server = BrokerServer(max_bytes_in_flight=max_bytes_in_flight)
        self.handler: ScriptedHandler

        async def start() -> str:
            await self.server.start()
            self.handler = ScriptedHandler()
            return self.server.open_session(self.handler, "test").token

        self.token = run_sync(start())

    def on_loop(self, function: Any) -> None:
        background_loop().call_soon_threadsafe(function)

    def close(self) -> None:
        run_sync(self.server.aclose(grace=0))


@pytest.fixture
def broker() -> Iterator[Broker]:
    made = Broker()
    yield made
    made.close()


def stub_for(broker: Broker) -> tuple[grpc.Channel, pb_grpc.BrokerStub]:
    channel = grpc.insecure_channel(broker.server.address)
    return channel, pb_grpc.BrokerStub(channel)


def auth(broker: Broker) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {broker.token}")]


def count_unary_completes(monkeypatch) -> list[str]:
    """Records every unary Complete the broker serves (patched before the server starts: the
    servicer's methods are bound when it is registered)."""
    unary: list[str] = []
    original = broker_server._Servicer.Complete

    async def counting(self, request, context):
        unary.append(request.prompt)
        return await original(self, request, context)

    monkeypatch.setattr(broker_server._Servicer, "Complete", counting)
    return unary


def test_a_batch_is_one_rpc_whatever_its_size(monkeypatch):
    unary = count_unary_completes(monkeypatch)
    broker = Broker()
    try:
        runner = Runner(broker.server.address, broker.token)
        results = runner.llm_query_batched([f"q{i}" for i in range(40)])
        assert results == [f"re:q{i}" for i in range(40)]
        assert unary == []  # nothing went through the unary Complete
        assert broker.handler.calls == 40
    finally:
        broker.close()


def test_rlm_query_batched_sends_subcalls_in_order(broker):
    runner = Runner(broker.server.address, broker.token)
    assert runner.rlm_query_batched(["a", "b", "c"]) == ["re:child:a", "re:child:b", "re:child:c"]
    assert runner.rlm_query_batched([]) == []
    assert broker.handler.calls == 3


def test_results_stream_back_as_they_finish(broker):
    """Item 0 blocks until the client has seen item 1's result: only a stream that writes each
    result as it finishes can get past this."""
    channel, stub = stub_for(broker)
    calls = [pb.BatchCall(complete=pb.CompleteRequest(prompt=p)) for p in ("wait:0", "fast")]
    seen = []
    with channel:
        for result in stub.CompleteBatch(iter(calls), metadata=auth(broker), timeout=30):
            seen.append((result.index, result.reply.text))
            if result.index == 1:
                broker.on_loop(broker.handler.release.set)
    assert seen == [(1, "re:fast"), (0, "re:wait:0")]


def test_failed_items_become_error_strings_and_the_rest_answer(broker):
    runner = Runner(broker.server.address, broker.token)
    results = runner.llm_query_batched(["ok1", "fail:x", "ok2"])
    assert results[0] == "re:ok1" and results[2] == "re:ok2"
    assert results[1] == "Error: LMError: provider said no to fail:x"


def test_a_spent_budget_in_a_batch_stops_the_cell(broker):
    runner = Runner(broker.server.address, broker.token)
    with pytest.raises(BudgetExhausted, match=r"max_budget of \$0.05 reached"):
        runner.llm_query_batched(["ok", "budget:x", "ok"])


def test_an_unauthenticated_batch_gets_error_strings(broker):
    runner = Runner(broker.server.address, "not-the-token")
    results = runner.llm_query_batched(["a", "b"])
    assert results == ["Error: missing, unknown or expired session token"] * 2
    assert broker.handler.calls == 0


def test_each_item_is_admitted_against_the_bytes_in_flight_cap():
    """8 items of ~1 MB under a 3 MiB cap: 3 run (their bytes held until they finish), 5 are
    refused at once with the same message a unary call gets; the batch itself goes on."""
    broker = Broker(max_bytes_in_flight=3 * MIB)
    try:
        channel, stub = stub_for(broker)
        prompts = ["wait:" + str(i) * 1_000_000 for i in range(8)]
        calls = [pb.BatchCall(complete=pb.CompleteRequest(prompt=p)) for p in prompts]
        refused, answered = [], []
        with channel:
            for result in stub.CompleteBatch(iter(calls), metadata=auth(broker), timeout=30):
                if result.code == grpc.StatusCode.ABORTED.value[0]:
                    refused.append(result)
                    if len(refused) == 5:  # the three admitted ones are still waiting
                        assert broker.server.bytes_in_flight > 2 * 1_000_000
                        broker.on_loop(broker.handler.release.set)
                else:
                    answered.append(result)
        assert len(refused) == 5 and len(answered) == 3
        assert len(broker.handler.started) == 3
        assert "limit 3 MiB" in refused[0].details
        assert "fewer or smaller calls" in refused[0].details
        assert broker.server.bytes_in_flight == 0
    finally:
        broker.close()


def test_the_broker_holds_a_bounded_number_of_items_per_batch(broker, monkeypatch):
    monkeypatch.setattr(broker_server, "MAX_BATCH_ITEMS_HELD", 4)
    runner = Runner(broker.server.address, broker.token)
    results: list[str] = []
    worker = threading.Thread(
        target=lambda: results.extend(runner.llm_query_batched([f"wait:{i}" for i in range(10)]))
    )
    worker.start()
    while len(broker.handler.started) < 4:
        worker.join(0.01)
    worker.join(0.3)  # give a broker that reads ahead the chance to show it
    assert len(broker.handler.started) == 4
    broker.on_loop(broker.handler.release.set)
    worker.join(30)
    assert results == [f"re:wait:{i}" for i in range(10)]


def test_a_cancelled_batch_cancels_its_items_and_releases_their_bytes(broker):
    channel, stub = stub_for(broker)
    calls = [pb.BatchCall(complete=pb.CompleteRequest(prompt=f"wait:{i}")) for i in range(3)]
    with channel:
        stream = stub.CompleteBatch(iter(calls), metadata=auth(broker), timeout=30)
        while len(broker.handler.started) < 3:
            threading.Event().wait(0.01)
        assert broker.server.bytes_in_flight > 0
        stream.cancel()
        for _ in range(500):
            if len(broker.handler.cancelled) == 3:
                break
            threading.Event().wait(0.01)
    assert sorted(broker.handler.cancelled) == ["wait:0", "wait:1", "wait:2"]
    assert broker.server.bytes_in_flight == 0


def test_llm_query_batched_in_a_sandbox_uses_one_stream(make_rlm, lm_server, monkeypatch):
    """End to end through the local sandbox: one CompleteBatch, no unary Complete."""
    calls: list[str] = []
    original = broker_server._Servicer.CompleteBatch

    async def counting(self, request_iterator, context):
        calls.append("batch")
        return await original(self, request_iterator, context)

    monkeypatch.setattr(broker_server._Servicer, "CompleteBatch", counting)
    unary = count_unary_completes(monkeypatch)

    def script(request: RecordedRequest) -> Reply | str:
        if request.prompt.startswith("item"):
            return Reply(f"answer to {request.prompt}")
        if not any(m.get("role") == "assistant" for m in request.messages):
            return (
                "```repl\nres = llm_query_batched(['item %d' % i for i in range(12)])\n"
                "answer['content'] = '|'.join(res)\nanswer['ready'] = True\n```"
            )
        return "unreachable"

    lm_server.set_script(script)
    result = make_rlm().completion("data")
    assert result.response == "|".join(f"answer to item {i}" for i in range(12))
    assert calls == ["batch"]
    assert unary == []


def test_a_cell_interrupted_in_a_batch_cancels_the_stream_and_the_repl_goes_on(broker):
    """The local sandbox's cell times out while every item waits: the runner cancels its
    stream, the broker cancels the items and releases their bytes, and the state survives."""
    from rlm.environments import environment_class

    env = environment_class("local")(broker=broker.server, handler=broker.handler, label="t")
    run_sync(env.start())
    try:
        run_sync(env.execute("kept = 'yes'"))
        code = "res = llm_query_batched(['wait:%d' % i for i in range(5)])"
        result = run_sync(env.execute(code, timeout=1.0))
        assert result.interrupted and "TimeoutError" in result.error
        for _ in range(500):
            if len(broker.handler.cancelled) == 5:
                break
            threading.Event().wait(0.01)
        assert sorted(broker.handler.cancelled) == [f"wait:{i}" for i in range(5)]
        assert broker.server.bytes_in_flight == 0
        assert run_sync(env.execute("print(kept)")).stdout == "yes\n"
    finally:
        run_sync(env.aclose())


def test_a_batch_driven_directly_from_the_sandbox_stays_within_the_budget(make_rlm, lm_server):
    """Sandbox code that skips the helpers and writes 300 items on the session's own
    CompleteBatch stream still gets only what max_budget allows: each item reserves its worst
    case before it is sent, as a unary call does."""

    def script(request: RecordedRequest) -> Reply | str:
        if request.model == "sub-model":
            return Reply("ok", output_tokens=100, input_tokens=7)  # $0.01 each
        if not any(m.get("role") == "assistant" for m in request.messages):
            return (
                "```repl\nfrom rlm.protos import rlm_sandbox_pb2 as pb\n"
                "stub = llm_query.__self__._stub\n"
                "calls = [pb.BatchCall(complete=pb.CompleteRequest(prompt='q'))] * 300\n"
                "codes = [r.code for r in stub.CompleteBatch(iter(calls), timeout=60)]\n"
                "print(len(codes), sum(c == 0 for c in codes))\n```"
            )
        return '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'

    lm_server.set_script(script)
    rlm = make_rlm(
        backend_kwargs={"price_per_million": (0.0, 0.0)},
        other_backends=["openai"],
        other_backend_kwargs=[
            {"model_name": "sub-model", "base_url": lm_server.base_url, "api_key": "k",
             "price_per_million": (0.0, 100.0)}
        ],
        max_budget=0.05,
        max_iterations=3,
    )  # fmt: skip
    with pytest.raises(BudgetExceededError):
        rlm.completion("context")
    assert len([r for r in lm_server.requests if r.model == "sub-model"]) == 5


NESTED = pb.BatchCall(parts_total_bytes=7).SerializeToString()


@pytest.mark.parametrize(
    ("calls", "message"),
    [
        ([pb.BatchCall(part=b"x" * 10)], "came before the size of its item"),
        (
            [pb.BatchCall(parts_total_bytes=MIB + 10)] + [pb.BatchCall(part=b"x" * MIB)] * 2,
            "more than the 1048586 bytes announced",
        ),
        ([pb.BatchCall(parts_total_bytes=2 * MIB), pb.BatchCall(part=b"x")], "ended after 1 of"),
        (
            [pb.BatchCall(parts_total_bytes=len(NESTED)), pb.BatchCall(part=NESTED)],
            "must hold a complete, subcall or tool call",
        ),
    ],
    ids=["part-without-size", "parts-over-size", "parts-cut-short", "parts-not-a-call"],
)
def test_parts_that_do_not_add_up_fail_the_stream_and_release_their_bytes(broker, calls, message):
    channel, stub = stub_for(broker)
    with channel, pytest.raises(grpc.RpcError) as raised:
        list(stub.CompleteBatch(iter(calls), metadata=auth(broker), timeout=30))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()
    assert broker.handler.calls == 0
    assert broker.server.bytes_in_flight == 0


def test_an_item_in_parts_runs_like_a_whole_one(broker):
    call = pb.BatchCall(complete=pb.CompleteRequest(prompt="p" * (3 * MIB)))
    data = call.SerializeToString()
    parts = [pb.BatchCall(part=data[i : i + MIB]) for i in range(0, len(data), MIB)]
    calls = [
        pb.BatchCall(parts_total_bytes=len(data)),
        *parts,
        pb.BatchCall(subcall={"prompt": "s"}),
    ]
    channel, stub = stub_for(broker)
    with channel:
        results = list(stub.CompleteBatch(iter(calls), metadata=auth(broker), timeout=30))
    assert sorted((r.index, r.reply.text) for r in results) == [
        (0, "re:" + "p" * 20),
        (1, "re:child:s"),
    ]
    assert broker.handler.started[0] == "p" * (3 * MIB) or broker.handler.started[1] == "p" * (
        3 * MIB
    )
    assert broker.server.bytes_in_flight == 0
