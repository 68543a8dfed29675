"""Result types under the reference ``rlms`` names: dict shapes and ``to_dict``/``from_dict`` round trips."""

from __future__ import annotations

import json
import math
import typing

import pytest

import rlm.core.types as core_types
import rlm.types as types
from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    QueryMetadata,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
    _serialize_value,
)


def _usage() -> UsageSummary:
    return UsageSummary(
        {
            "root-model": ModelUsageSummary(3, 120, 40, 0.25),
            "sub-model": ModelUsageSummary(2, 30, 10),
        }
    )


def _completion(prompt: typing.Any = "hi") -> RLMChatCompletion:
    return RLMChatCompletion(
        root_model="root-model",
        prompt=prompt,
        response="hello",
        usage_summary=_usage(),
        execution_time=1.5,
    )


def test_core_types_is_the_same_implementation() -> None:
    for name in ("ModelUsageSummary", "UsageSummary", "RLMChatCompletion", "REPLResult"):
        assert getattr(core_types, name) is getattr(types, name)
    assert typing.get_args(core_types.EnvironmentType) == (
        "local",
        "ipython",
        "docker",
        "modal",
        "prime",
        "daytona",
        "e2b",
    )
    assert "gemini" in typing.get_args(core_types.ClientBackend)


def test_model_usage_summary_round_trip_and_optional_cost() -> None:
    with_cost = ModelUsageSummary(
        total_calls=2, total_input_tokens=10, total_output_tokens=5, total_cost=0.1
    )
    assert with_cost.to_dict() == {
        "total_calls": 2,
        "total_input_tokens": 10,
        "total_output_tokens": 5,
        "total_cost": 0.1,
    }
    assert ModelUsageSummary.from_dict(with_cost.to_dict()) == with_cost
    no_cost = ModelUsageSummary(1, 2, 3)
    assert "total_cost" not in no_cost.to_dict()
    assert ModelUsageSummary.from_dict(no_cost.to_dict()) == no_cost


def test_usage_summary_round_trip_and_totals() -> None:
    usage = _usage()
    data = usage.to_dict()
    assert set(data) == {"model_usage_summaries", "total_cost"}
    assert data["total_cost"] == pytest.approx(0.25)
    assert set(data["model_usage_summaries"]) == {"root-model", "sub-model"}
    back = UsageSummary.from_dict(data)
    assert back == usage
    assert (back.total_calls, back.total_input_tokens, back.total_output_tokens) == (5, 150, 50)
    empty = UsageSummary({})
    assert empty.to_dict() == {"model_usage_summaries": {}}
    assert empty.total_cost is None
    assert UsageSummary.from_dict(empty.to_dict()) == empty


@pytest.mark.parametrize(
    "prompt",
    [
        "plain text",
        {"question": "q", "documents": ["a", "b"]},
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
    ],
)
def test_chat_completion_keeps_non_text_prompts(prompt: typing.Any) -> None:
    completion = _completion(prompt)
    data = completion.to_dict()
    assert data["prompt"] == prompt
    assert list(data) == ["root_model", "prompt", "response", "usage_summary", "execution_time"]
    back = RLMChatCompletion.from_dict(json.loads(json.dumps(data)))
    assert back == completion


def test_chat_completion_optional_metadata_and_error() -> None:
    trajectory = {"run_metadata": {"root_model": "root-model"}, "iterations": []}
    completion = _completion()
    completion.metadata = trajectory
    completion.error = "provider said no"
    data = completion.to_dict()
    assert data["metadata"] == trajectory
    assert data["error"] == "provider said no"
    assert RLMChatCompletion.from_dict(data) == completion
    assert "metadata" not in _completion().to_dict()
    assert "error" not in _completion().to_dict()


def test_serialize_value_shapes() -> None:
    def helper() -> None: ...

    assert _serialize_value(None) is None
    assert _serialize_value((1, "a", 2.5, True)) == [1, "a", 2.5, True]
    assert _serialize_value({1: {"x": [1]}}) == {"1": {"x": [1]}}
    assert _serialize_value(math) == "<module 'math'>"
    assert _serialize_value(helper) == "<function 'helper'>"
    assert _serialize_value({1, 2}) == repr({1, 2})


def test_repl_result_locals_serialised_and_round_trip() -> None:
    call = _completion([{"role": "user", "content": "sub"}])
    result = REPLResult(
        stdout="3\n",
        stderr="",
        locals={"x": 3, "mod": math, "f": len, "pair": (1, 2)},
        execution_time=0.25,
        rlm_calls=[call],
        final_answer="3",
    )
    data = result.to_dict()
    assert list(data) == [
        "stdout",
        "stderr",
        "locals",
        "execution_time",
        "rlm_calls",
        "final_answer",
    ]
    assert data["locals"] == {
        "x": 3,
        "mod": "<module 'math'>",
        "f": "<builtin_function_or_method 'len'>",
        "pair": [1, 2],
    }
    assert data["rlm_calls"] == [call.to_dict()]
    back = REPLResult.from_dict(json.loads(json.dumps(data)))
    assert back.to_dict() == data
    assert back.rlm_calls == [call]
    assert back.llm_calls is back.rlm_calls
    assert "stdout=3" in str(result) and "rlm_calls=1" in str(result)


def test_repl_result_defaults() -> None:
    result = REPLResult(stdout="", stderr="boom", locals={})
    assert result.rlm_calls == []
    assert result.execution_time is None
    assert result.to_dict()["final_answer"] is None


def test_code_block_and_iteration_round_trip() -> None:
    block = CodeBlock(code="x = 1 + 2", result=REPLResult("", "", {"x": 3}, 0.1))
    assert block.to_dict() == {"code": "x = 1 + 2", "result": block.result.to_dict()}
    assert CodeBlock.from_dict(block.to_dict()) == block
    iteration = RLMIteration(
        prompt=[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        response="```repl\nx = 1 + 2\n```",
        code_blocks=[block],
        final_answer=None,
        iteration_time=0.5,
    )
    data = iteration.to_dict()
    assert list(data) == ["prompt", "response", "code_blocks", "final_answer", "iteration_time"]
    assert data["prompt"] == iteration.prompt
    assert RLMIteration.from_dict(json.loads(json.dumps(data))) == iteration


def test_rlm_metadata_round_trip_serialises_kwargs() -> None:
    meta = RLMMetadata(
        root_model="root-model",
        max_depth=1,
        max_iterations=30,
        backend="openai",
        backend_kwargs={"model_name": "m", "hook": len},
        environment_type="local",
        environment_kwargs={"setup_code": "x = 1"},
        other_backends=["anthropic"],
    )
    data = meta.to_dict()
    assert list(data) == [
        "root_model",
        "max_depth",
        "max_iterations",
        "backend",
        "backend_kwargs",
        "environment_type",
        "environment_kwargs",
        "other_backends",
    ]
    assert data["backend_kwargs"]["hook"] == "<builtin_function_or_method 'len'>"
    back = RLMMetadata.from_dict(data)
    assert back.to_dict() == data
    assert back.other_backends == ["anthropic"]


def test_query_metadata_lengths() -> None:
    assert QueryMetadata("hello").context_lengths == [5]
    messages = QueryMetadata(
        [{"role": "user", "content": "abc"}, {"role": "user", "content": "de"}]
    )
    assert (messages.context_type, messages.context_total_length) == ("list", 5)
    assert QueryMetadata([]).context_lengths == [0]
    as_dict = QueryMetadata({"a": "xyz", "b": [1]})
    assert (as_dict.context_type, as_dict.context_lengths) == ("dict", [3, 3])
    with pytest.raises(ValueError, match="str, a dict or a list"):
        QueryMetadata(42)  # type: ignore[arg-type]
