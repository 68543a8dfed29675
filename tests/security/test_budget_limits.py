"""Budgets and token caps are fail-closed under any concurrency: a call reaches the provider only
if its worst case fits beside what is spent and what calls in flight may still cost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rlm import BudgetExceededError, TokenLimitExceededError
from rlm.broker.accounting import Ledger, Limits
from rlm.broker.clients import create_client
from rlm.broker.router import LMRouter
from rlm.errors import ConfigurationError
from rlm.testing import RecordedRequest, Reply, ScriptedLMServer

SUB_PRICE = (0.0, 100.0)  # USD per million tokens: 100 output tokens = $0.01
CALL_COST = 0.01


def sub_model_reply(request: RecordedRequest) -> Reply | str:
    return Reply("ok", output_tokens=100, input_tokens=7)


def router_for(server: ScriptedLMServer, **kwargs: Any) -> LMRouter:
    client = create_client(
        "openai",
        {"model_name": "sub-model", "base_url": server.base_url, "api_key": "k",
         "max_retries": 0, "price_per_million": SUB_PRICE, **kwargs},
    )  # fmt: skip
    return LMRouter(client, max_concurrency=64)


async def fire(router: LMRouter, ledger: Ledger, n: int) -> list[Any]:
    async def one(i: int) -> Any:
        return await router.complete(
            [{"role": "user", "content": f"item {i}"}], ledger=ledger, depth=1
        )

    try:
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    finally:
        await router.aclose()


def test_100_concurrent_calls_under_a_budget_of_5_reach_the_provider_5_times(lm_server):
    lm_server.set_script(sub_model_reply)
    lm_server.latency = 0.02
    ledger = Ledger(Limits(max_budget=0.05))
    results = asyncio.run(fire(router_for(lm_server), ledger, 100))
    answered = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceededError)]
    assert len(lm_server.requests) == len(answered) == 5
    assert len(refused) == 95
    # The spend reported equals what the provider billed: its count times the price.
    billed = sum(r.usage["output_tokens"] for r in lm_server.requests) * SUB_PRICE[1] / 1e6
    assert ledger.total_cost == pytest.approx(billed) == pytest.approx(5 * CALL_COST)
    assert refused[0].spent == pytest.approx(0.05) and refused[0].budget == 0.05
    assert "$0.0500 spent" in str(refused[0])
    # Every call carried an output cap, so its worst case was bounded at the provider.
    assert all(r.body.get("max_tokens") for r in lm_server.requests)


def test_a_child_ledger_cannot_spend_past_its_root_under_concurrency(lm_server):
    lm_server.set_script(sub_model_reply)
    root = Ledger(Limits(max_budget=0.03))
    children = [root.child(f"child {i}") for i in range(4)]
    router = router_for(lm_server)

    async def all_children() -> list[Any]:
        try:
            return await asyncio.gather(
                *(
                    router.complete([{"role": "user", "content": "x"}], ledger=c, depth=1)
                    for c in children
                    for _ in range(10)
                ),
                return_exceptions=True,
            )
        finally:
            await router.aclose()

    asyncio.run(all_children())
    assert len(lm_server.requests) == 3
    assert root.total_cost == pytest.approx(0.03)
    assert sum(c.total_cost for c in children) == pytest.approx(0.03)


def test_token_cap_holds_under_concurrency(lm_server):
    lm_server.set_script(sub_model_reply)
    ledger = Ledger(Limits(max_tokens=1000))
    results = asyncio.run(fire(router_for(lm_server), ledger, 50))
    assert ledger.total_tokens <= 1000
    assert sum(isinstance(r, TokenLimitExceededError) for r in results) == 50 - len(
        lm_server.requests
    )
    refused = next(r for r in results if isinstance(r, TokenLimitExceededError))
    assert refused.token_limit == 1000 and refused.tokens_used == ledger.total_tokens


def test_a_call_cancelled_after_it_was_sent_keeps_counting(lm_server):
    """A hung-up call may still be billed: its worst case stays against the budget, so cancelling
    calls in a loop cannot spend past the cap."""
    lm_server.set_script(sub_model_reply)
    lm_server.latency = 5.0
    ledger = Ledger(Limits(max_budget=0.05))
    router = router_for(lm_server)

    async def cancel_while_in_flight() -> None:
        try:
            for _ in range(20):
                task = asyncio.create_task(
                    router.complete([{"role": "user", "content": "x"}], ledger=ledger, depth=1)
                )
                await asyncio.sleep(0.1)
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except BudgetExceededError:
                    break
        finally:
            await router.aclose()

    asyncio.run(cancel_while_in_flight())
    assert ledger.uncertain_cost <= 0.05 + 1e-9
    assert ledger.total_cost == 0  # nothing was reported
    # The first call held the whole budget (output capped to what is left) and was cut off: no
    # other call could be sent after it.
    assert len(lm_server.requests) == 1


def budgeted_rlm(make_rlm: Any, server: ScriptedLMServer, script: Any, **kwargs: Any) -> Any:
    """An RLM whose root calls are free and whose sub-calls (sub-model) cost $0.01 each, under
    max_budget=0.05, answering from ``script``."""
    server.set_script(script)
    return make_rlm(
        backend_kwargs={"price_per_million": (0.0, 0.0)},
        other_backends=["openai"],
        other_backend_kwargs=[
            {"model_name": "sub-model", "base_url": server.base_url, "api_key": "k",
             "price_per_million": SUB_PRICE}
        ],
        max_budget=0.05,
        **kwargs,
    )  # fmt: skip


def test_budget_with_concurrent_llm_query_batched_through_the_sandbox(make_rlm, lm_server, sandbox):
    """The issue's scenario end to end: the root's code fans out 100 sub-calls of $0.01 each
    under max_budget=0.05 (before the fix 87 reached the provider)."""

    def script(request: RecordedRequest) -> Reply | str:
        if request.model == "sub-model":
            return sub_model_reply(request)
        return (
            "```repl\nresults = llm_query_batched(['q'] * 100)\n"
            "print(sum(r == 'ok' for r in results))\n```"
        )

    rlm = budgeted_rlm(make_rlm, lm_server, script, max_iterations=3, **sandbox)
    with pytest.raises(BudgetExceededError) as caught:
        rlm.completion("context")
    sub_calls = [r for r in lm_server.requests if r.model == "sub-model"]
    assert len(sub_calls) == 5
    assert caught.value.spent == pytest.approx(5 * CALL_COST)


def test_catching_the_budget_error_in_the_cell_does_not_buy_more_calls(
    make_rlm, lm_server, sandbox
):
    def script(request: RecordedRequest) -> Reply | str:
        if request.model == "sub-model":
            return sub_model_reply(request)
        return (
            "```repl\nn = 0\nfor _ in range(20):\n    try:\n        llm_query('q')\n"
            "        n += 1\n    except BaseException:\n        pass\nprint(n)\n```"
        )

    rlm = budgeted_rlm(make_rlm, lm_server, script, max_iterations=2, **sandbox)
    with pytest.raises(BudgetExceededError):
        rlm.completion("context")
    assert len([r for r in lm_server.requests if r.model == "sub-model"]) == 5


@pytest.mark.parametrize("name", ["max_budget", "max_timeout", "max_tokens"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, 0])
def test_non_finite_or_non_positive_limits_are_configuration_errors(name, value):
    with pytest.raises(ConfigurationError, match="finite number greater than 0"):
        Limits(**{name: value})
