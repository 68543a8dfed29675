"""The RLM loop, the ledger and the router without any sandbox: ``ScriptedEnvironment`` answers the
cells in-process (no subprocess, no container), the scripted LM server answers the models over
real HTTP. Each test takes milliseconds; the same behaviour in real sandboxes is covered by
test_e2e.py and the environment contract suite."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rlm import BudgetExceededError, ErrorThresholdExceededError
from rlm.environments.base import CellResult, Environment
from rlm.errors import ConfigurationError
from rlm.testing import Cell, RecordedRequest, Reply, ScriptedEnvironment


@pytest.fixture(autouse=True)
def fresh_registry():
    ScriptedEnvironment.opened.clear()
    yield
    assert all(env.closed for env in ScriptedEnvironment.opened), "an environment was left open"


def is_root(request: RecordedRequest) -> bool:
    return any(m.get("role") == "system" for m in request.messages)


def turn(request: RecordedRequest) -> int:
    return sum(m.get("role") == "assistant" for m in request.messages)


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


ANSWER = repl('answer["content"] = "42"\nanswer["ready"] = True')


def scripted(make_rlm: Any, cells: Any = None, **kwargs: Any) -> Any:
    environment_kwargs = {"cells": cells} if cells else {}
    return make_rlm(
        environment=ScriptedEnvironment, environment_kwargs=environment_kwargs, **kwargs
    )


def test_an_answer_ends_the_run_and_the_environment_is_closed(make_rlm, lm_server):
    lm_server.set_script([ANSWER])
    result = scripted(make_rlm).completion("the context")
    assert result.response == "42"
    assert result.metadata["finished_by"] == "answer"
    (env,) = ScriptedEnvironment.opened
    assert env.variables["context"] == "the context"
    assert [code.strip() for code in env.executed] == [
        'answer["content"] = "42"\nanswer["ready"] = True'
    ]
    assert result.metadata["run_metadata"]["environment_type"] == "scripted"


def test_what_a_cell_printed_is_what_the_model_reads_next(make_rlm, lm_server):
    lm_server.set_script([repl("look()"), ANSWER])
    result = scripted(make_rlm, cells=lambda cell: "OUTPUT-7f3" if "look" in cell.code else None)
    assert result.completion("ctx").response == "42"
    second = lm_server.requests[1]
    assert "OUTPUT-7f3" in second.messages[-1]["content"]
    assert second.messages[-2] == {"role": "assistant", "content": repl("look()")}


def test_consecutive_failing_cells_stop_the_run_at_max_errors(make_rlm, lm_server):
    lm_server.set_script(lambda r: repl("boom()"))
    rlm = scripted(make_rlm, cells=lambda cell: CellResult(error="NameError: boom"), max_errors=3)
    with pytest.raises(ErrorThresholdExceededError) as caught:
        rlm.completion("ctx")
    assert len(lm_server.requests) == 3
    assert "3" in str(caught.value)


def test_running_out_of_iterations_asks_for_a_final_reply(make_rlm, lm_server):
    lm_server.set_script(lambda r: "my best guess" if turn(r) >= 2 else repl("print(1)"))
    result = scripted(make_rlm, max_iterations=2).completion("ctx")
    assert result.metadata["finished_by"] == "max_iterations"
    assert result.response == "my best guess"
    assert "every iteration" in lm_server.requests[-1].messages[-1]["content"]


def sub_calls(make_rlm: Any, lm_server: Any, n: int, **kwargs: Any) -> Any:
    """A root whose one cell makes ``n`` concurrent llm_query calls to a $0.01 sub-model."""

    async def cell(cell: Cell) -> str | None:
        replies = await asyncio.gather(
            *(cell.llm_query(f"item {i}") for i in range(n)), return_exceptions=True
        )
        ok = sum(r == "sub" for r in replies)
        refused = sum(isinstance(r, BudgetExceededError) for r in replies)
        return f"{ok} ok, {refused} refused"

    lm_server.set_script(
        lambda r: (
            (ANSWER if turn(r) else repl("fan_out()"))
            if is_root(r)
            else Reply("sub", input_tokens=1, output_tokens=100)
        )
    )
    return scripted(
        make_rlm,
        cells=lambda c: cell(c) if "fan_out" in c.code else None,
        backend_kwargs={"price_per_million": (0.0, 0.0)},
        other_backends=["openai"],
        other_backend_kwargs=[
            {"model_name": "sub-model", "base_url": lm_server.base_url, "api_key": "k",
             "price_per_million": (0.0, 100.0)}
        ],
        **kwargs,
    )  # fmt: skip


def test_sub_calls_are_charged_recorded_and_rolled_up(make_rlm, lm_server):
    result = sub_calls(make_rlm, lm_server, 3).completion("ctx")
    assert result.response == "42"
    block = result.metadata["iterations"][0]["code_blocks"][0]["result"]
    assert block["stdout"] == "3 ok, 0 refused"
    assert sorted(c["prompt"] for c in block["rlm_calls"]) == ["item 0", "item 1", "item 2"]
    assert result.usage_summary.total_cost == pytest.approx(0.03)


def test_a_budget_holds_under_100_concurrent_sub_calls(make_rlm, lm_server):
    with pytest.raises(BudgetExceededError) as caught:
        sub_calls(make_rlm, lm_server, 100, max_budget=0.05).completion("ctx")
    assert len([r for r in lm_server.requests if r.model == "sub-model"]) == 5
    assert caught.value.spent == pytest.approx(0.05)


def test_a_child_rlm_gets_an_environment_of_its_own(make_rlm, lm_server):
    async def root_cell(cell: Cell) -> CellResult | None:
        if "delegate" not in cell.code:
            return None
        return cell.answer("root saw: " + await cell.rlm_query("CHILD TASK"))

    def script(request: RecordedRequest) -> str:
        if any("CHILD TASK" in str(m.get("content")) for m in request.messages):
            return repl('answer["content"] = "child done"\nanswer["ready"] = True')
        return repl("delegate()")

    lm_server.set_script(script)
    rlm = scripted(make_rlm, cells=root_cell, max_depth=2)
    result = rlm.completion("ctx")
    assert result.response == "root saw: child done"
    _root, child = ScriptedEnvironment.opened
    assert child.variables["context"] == "CHILD TASK"
    (call,) = result.metadata["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"]
    assert call["response"] == "child done"


def test_compaction_replaces_a_long_history_with_a_summary(make_rlm, lm_server):
    def script(request: RecordedRequest) -> str:
        if "Summarise what you have learned" in request.messages[-1]["content"]:
            return "SUMMARY: nothing yet"
        if any("SUMMARY:" in str(m.get("content")) for m in request.messages):
            return ANSWER
        return repl("print('y' * 3000)")

    lm_server.set_script(script)
    rlm = scripted(
        make_rlm,
        cells=lambda c: "y" * 3000 if "print" in c.code else None,
        compaction=True,
        compaction_threshold_pct=0.5,
        backend_kwargs={"context_window_tokens": 4000},
    )
    result = rlm.completion("ctx")
    assert result.response == "42"
    kinds = [it["kind"] for it in result.metadata["iterations"]]
    assert "compaction" in kinds
    after = lm_server.requests[-1].messages
    assert any("SUMMARY: nothing yet" in str(m.get("content")) for m in after)
    assert not any("y" * 3000 in str(m.get("content")) for m in after)


def test_environment_takes_a_class_but_not_any_class(make_rlm):
    with pytest.raises(ConfigurationError, match="not an Environment"):
        make_rlm(environment=dict)
    assert issubclass(ScriptedEnvironment, Environment)
