"""rlm.Sandbox: one of our sandboxes without the RLM loop (local always, docker when usable)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from rlm import AsyncSandbox, Sandbox
from rlm.broker.clients import create_client
from rlm.broker.loop import run_sync
from rlm.errors import ConfigurationError, SandboxError
from rlm.testing import ScriptedLMServer


def test_state_tools_and_llm_query(environment: str) -> None:
    seen: list[tuple[str, int]] = []

    def lookup(key: str, times: int = 1) -> str:
        """Looks a key up on the host."""
        seen.append((key, times))
        return key.upper() * times

    with Sandbox(environment, tools={"lookup": lookup, "LIMIT": 3}, lm=lambda p: f"echo:{p}") as sb:
        first = sb.execute("x = 20 + 1\nprint('pid', __import__('os').getpid())")
        assert first.ok and first.stdout.startswith("pid ")
        assert int(first.stdout.split()[1]) != os.getpid()
        result = sb.execute("print(x * 2, lookup('ab', times=LIMIT), llm_query('hi'))")
        assert result.ok, result.error
        assert result.stdout.strip() == "42 ABABAB echo:hi"
    assert seen == [("ab", 3)]
    assert sb.closed and not sb.started


def test_tools_added_after_start_are_sent_before_the_next_cell() -> None:
    with Sandbox("local") as sb:
        assert "NameError" in sb.execute("late()").error
        sb.tools["late"] = lambda: "here"
        assert sb.execute("print(late())").stdout.strip() == "here"


def test_errors_of_code_and_tools_are_results_not_exceptions() -> None:
    def broken() -> None:
        raise ValueError("the host tool failed")

    with Sandbox("local", tools={"broken": broken}) as sb:
        cell = sb.execute("1 / 0")
        assert "ZeroDivisionError" in cell.error
        cell = sb.execute("broken()")
        assert "the host tool failed" in cell.error
        # As in the RLM loop, a failed llm_query returns its error as text, saying what to do.
        cell = sb.execute("print(llm_query('no model'))")
        assert cell.stdout.startswith("Error: ConfigurationError") and "lm=" in cell.stdout
        assert sb.execute("print('still alive')").stdout.strip() == "still alive"


def test_context_and_usage_through_an_rlm_client() -> None:
    with ScriptedLMServer(["sub answer"]) as server:
        client = create_client(
            "openai",
            {"model_name": "sub-model", "base_url": server.base_url, "api_key": "k"},
        )
        try:
            with Sandbox("local", lm=client) as sb:
                sb.load_context("abc" * 1000)
                cell = sb.execute("print(len(context), llm_query(context[:6]))")
                assert cell.stdout.strip() == "3000 sub answer"
                assert sb.usage.calls == 1
                assert sb.usage.input_tokens > 0 and sb.usage.output_tokens > 0
            assert server.requests[0].prompt == "abcabc"
        finally:
            run_sync(client.aclose())


def test_async_twin_runs_sandboxes_concurrently() -> None:
    async def main() -> list[str]:
        async def one(i: int) -> str:
            async with AsyncSandbox("local", tools={"double": lambda n: 2 * n}) as sb:
                cell = await sb.execute(f"print(double({i}))")
                return cell.stdout.strip()

        return await asyncio.gather(*(one(i) for i in range(3)))

    assert run_sync(main()) == ["0", "2", "4"]


def test_closed_sandbox_says_so_and_bad_kwargs_are_configuration_errors() -> None:
    sb = Sandbox("local")
    sb.execute("x = 1")  # starts lazily
    sb.close()
    sb.close()
    with pytest.raises(SandboxError, match="closed"):
        sb.execute("x")
    with pytest.raises(ConfigurationError, match="memory"):
        Sandbox("local", memory="2g").start()
    with pytest.raises(ConfigurationError):
        Sandbox("no-such-environment").start()


def test_pool_shares_one_broker_and_hands_out_prestarted_runners() -> None:
    import time

    from suite_runs import our_runner_pids

    from rlm import SandboxPool

    with SandboxPool("local", pool_size=1) as pool:
        first = pool.sandbox()
        first.execute("x = 1")
        serving = {int(first.execute("print(__import__('os').getpid())").stdout)}
        # The pool refills in the background: wait for the spare runner to exist.
        deadline = time.monotonic() + 60
        spare: set[int] = set()
        while not spare and time.monotonic() < deadline:
            spare = set(our_runner_pids()) - serving
            time.sleep(0.05)
        assert len(spare) == 1
        second = pool.sandbox(tools={"f": lambda: "tool"})
        assert int(second.execute("print(__import__('os').getpid())").stdout) in spare
        assert second.execute("print(f())").stdout.strip() == "tool"
        assert first.environment.broker is second.environment.broker
        assert first.environment.pool is second.environment.pool is not None
        first.close()  # one sandbox ends; the pool's broker serves the other on
        assert second.execute("print('alive')").stdout.strip() == "alive"
    assert second.closed  # closing the pool closed what was still open
    with pytest.raises(SandboxError, match="closed"):
        pool.sandbox()


def test_rlms_on_one_pool_share_its_broker_keep_their_own_keys_and_stay_bounded(
    environment: str,
) -> None:
    """Six RLMs at once on one SandboxPool, each with its own API key: one broker, at most
    ``max_sandboxes`` sandboxes alive, every model call carries its own RLM's key only, every
    RLM's usage counts its own calls, and the sandboxes of a closed RLM are gone."""
    from suite_runs import our_runner_pids

    from rlm import RLM, SandboxPool
    from rlm.broker.server import BrokerServer
    from rlm.testing.lm_server import RecordedRequest, content_text

    def script(request: RecordedRequest) -> str:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        if "echo the key" not in content_text(request.messages[-1].get("content")):
            return (
                "```repl\nreply = llm_query('echo the key')\n"
                "answer['content'] = reply\nanswer['ready'] = True\n```"
            )
        return key

    started: list[BrokerServer] = []
    original = BrokerServer.start

    async def counting_start(self: BrokerServer) -> None:
        started.append(self)
        await original(self)

    BrokerServer.start = counting_start  # type: ignore[method-assign]
    keys = [f"key-{i}" for i in range(6)]
    try:
        with (
            ScriptedLMServer(script) as server,
            SandboxPool(environment, pool_size=1, max_sandboxes=2) as pool,
        ):

            def model(key: str) -> RLM:
                backend = {"model_name": "m", "base_url": server.base_url, "api_key": key}
                return RLM(backend_kwargs=backend, sandbox_pool=pool, max_iterations=2)

            async def one(key: str) -> Any:
                # A tree keeps its sandbox until the RLM closes (docker: the tree's container).
                async with model(key) as rlm:
                    return await rlm.acompletion("ctx")

            async def run_all() -> list:
                return await asyncio.gather(*(one(key) for key in keys))

            completions = asyncio.run(run_all())
            assert 0 < pool.peak_sandboxes <= 2
            assert pool.started_sandboxes >= len(keys)
    finally:
        BrokerServer.start = original  # type: ignore[method-assign]
    assert len(started) == 1
    assert [c.response for c in completions] == keys
    for completion in completions:
        assert completion.usage_summary.total_calls == 2
    by_key: dict[str, int] = {}
    for request in server.requests:
        key = request.headers["authorization"].removeprefix("Bearer ")
        by_key[key] = by_key.get(key, 0) + 1
    assert by_key == {key: 2 for key in keys}
    assert not our_runner_pids()


def test_rlm_with_a_pool_takes_its_environment_from_the_pool() -> None:
    from rlm import RLM, SandboxPool

    with SandboxPool("local") as pool:
        backend = {"model_name": "m", "api_key": "k"}
        with pytest.raises(ConfigurationError, match="give environment"):
            RLM(backend_kwargs=backend, sandbox_pool=pool, environment_kwargs={"x": 1})
        with pytest.raises(ConfigurationError, match="give environment"):
            RLM(backend_kwargs=backend, sandbox_pool=pool, environment="docker")
        assert RLM(backend_kwargs=backend, sandbox_pool=pool).environment == "local"
