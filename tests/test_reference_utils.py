"""``rlm.utils`` under the reference ``rlms`` names: exceptions, parsing, prompts, token counts."""

from __future__ import annotations

import pickle

import pytest

import rlm.errors as errors
from rlm.types import CodeBlock, QueryMetadata, REPLResult, RLMIteration
from rlm.utils import exceptions, token_utils
from rlm.utils.parsing import (
    convert_context_for_repl,
    find_code_blocks,
    format_execution_result,
    format_iteration,
)
from rlm.utils.prompts import (
    ORCHESTRATOR_ADDENDUM,
    RLM_SYSTEM_PROMPT,
    USER_PROMPT,
    build_rlm_system_prompt,
    build_user_prompt,
)
from rlm.utils.rlm_utils import filter_sensitive_keys

# ---- exceptions ------------------------------------------------------------------------------


def test_exceptions_are_rlms_own_classes() -> None:
    for name in (
        "BudgetExceededError",
        "TimeoutExceededError",
        "TokenLimitExceededError",
        "ErrorThresholdExceededError",
        "CancellationError",
    ):
        cls = getattr(exceptions, name)
        assert cls is getattr(errors, name)
        assert issubclass(cls, errors.LimitExceededError)


def test_limit_errors_keyword_construction() -> None:
    budget = exceptions.BudgetExceededError(spent=1.5, budget=1.0)
    assert (budget.spent, budget.budget, budget.partial_answer) == (1.5, 1.0, None)
    assert "1.500000" in str(budget) and "max_budget" in str(budget)

    timeout = exceptions.TimeoutExceededError(elapsed=12.0, timeout=10.0, partial_answer="so far")
    assert (timeout.elapsed, timeout.timeout, timeout.partial_answer) == (12.0, 10.0, "so far")
    assert "12.0s" in str(timeout)

    tokens = exceptions.TokenLimitExceededError(tokens_used=1200, token_limit=1000)
    assert (tokens.tokens_used, tokens.token_limit) == (1200, 1000)
    assert "1,200 of 1,000" in str(tokens)

    threshold = exceptions.ErrorThresholdExceededError(
        error_count=3, threshold=3, last_error="NameError: x", partial_answer="p"
    )
    assert (threshold.error_count, threshold.threshold) == (3, 3)
    assert (threshold.last_error, threshold.partial_answer) == ("NameError: x", "p")

    custom = exceptions.BudgetExceededError(spent=2, budget=1, message="stop here")
    assert str(custom) == "stop here"


def test_limit_errors_positional_forms() -> None:
    # The reference's positional order (numbers first) ...
    threshold = exceptions.ErrorThresholdExceededError(4, 3, "boom", "partial", "msg")
    assert (threshold.error_count, threshold.threshold, threshold.last_error) == (4, 3, "boom")
    assert (threshold.partial_answer, str(threshold)) == ("partial", "msg")
    assert exceptions.TimeoutExceededError(5.0, 1.0, "p").partial_answer == "p"
    # ... and rlm's, a message first.
    ours = errors.BudgetExceededError("over budget", spent=3.0, budget=2.0, partial_answer="x")
    assert (str(ours), ours.spent, ours.budget, ours.partial_answer) == (
        "over budget",
        3.0,
        2.0,
        "x",
    )
    plain = errors.TimeoutExceededError("late")
    assert (plain.elapsed, plain.timeout, plain.partial_answer) == (None, None, None)
    with pytest.raises(TypeError, match="unexpected keyword"):
        errors.TokenLimitExceededError("x", spent=1)
    with pytest.raises(TypeError, match="positional"):
        errors.BudgetExceededError(1.0, 2.0, "m", "extra")


def test_cancellation_error_meaning() -> None:
    cancelled = exceptions.CancellationError("best so far")
    assert isinstance(cancelled, Exception)
    assert not isinstance(cancelled, KeyboardInterrupt)
    assert cancelled.partial_answer == "best so far"
    assert "cancelled" in str(cancelled)
    assert exceptions.CancellationError is errors.CancellationError


def test_limit_errors_pickle() -> None:
    for error in (
        errors.CancellationError("p", "stop"),
        exceptions.CancellationError("partial"),
        exceptions.TokenLimitExceededError(tokens_used=5, token_limit=4),
    ):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error)
        assert (str(back), back.partial_answer) == (str(error), error.partial_answer)
        assert back.__dict__ == error.__dict__


# ---- parsing ---------------------------------------------------------------------------------


def test_find_code_blocks() -> None:
    text = "Plan.\n```repl\nx = 1\nprint(x)\n```\nThen:\n```repl\ny = 2\n```\n"
    assert find_code_blocks(text) == ["x = 1\nprint(x)", "y = 2"]
    assert find_code_blocks("no code here") == []
    mixed = "```python\na = 1\n```\n```repl\nb = 2\n```\n"
    assert find_code_blocks(mixed) == ["b = 2"]


def test_format_execution_result() -> None:
    assert format_execution_result(REPLResult("", "", {})) == "No output"
    shown = format_execution_result(
        REPLResult("hello", "oops", {"x": 1, "_hidden": 2, "obj": object()})
    )
    assert "hello" in shown and "oops" in shown
    assert "['x']" in shown and "_hidden" not in shown and "obj" not in shown


def test_format_iteration() -> None:
    one = RLMIteration("p", "reply", [CodeBlock("x = 3", REPLResult("3", "", {"x": 3}))])
    messages = format_iteration(one)
    assert [m["role"] for m in messages] == ["assistant", "user"]
    assert messages[0]["content"] == "reply"
    assert messages[1]["content"].startswith("REPL output:\n")
    two = RLMIteration(
        "p",
        "r",
        [CodeBlock("a", REPLResult("A" * 50, "", {})), CodeBlock("b", REPLResult("B", "", {}))],
    )
    text = format_iteration(two, max_character_length=10)[1]["content"]
    assert "REPL output (block 1):" in text and "REPL output (block 2):" in text
    assert "chars...]" in text and "A" * 11 not in text
    assert format_iteration(RLMIteration("p", "thinking", [])) == [
        {"role": "assistant", "content": "thinking"}
    ]


def test_convert_context_for_repl() -> None:
    assert convert_context_for_repl("text") == (None, "text")
    assert convert_context_for_repl({"k": 1}) == ({"k": 1}, None)
    assert convert_context_for_repl(["a", "b"]) == (["a", "b"], None)
    assert convert_context_for_repl([{"content": "x"}, {"role": "u"}]) == (["x", ""], None)
    assert convert_context_for_repl([{"id": 1}]) == ([{"id": 1}], None)


# ---- prompts ---------------------------------------------------------------------------------


def test_system_prompt_template() -> None:
    filled = RLM_SYSTEM_PROMPT.format(custom_tools_section="")
    assert "{" in filled and "custom_tools_section" not in filled  # literal braces survive
    assert "llm_query" in filled and 'answer["ready"] = True' in filled
    messages = build_rlm_system_prompt(
        RLM_SYSTEM_PROMPT,
        QueryMetadata(["abc", "de"]),
        custom_tools={"lookup": {"tool": len, "description": "Finds things"}},
        root_prompt="Count the items",
    )
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "- `lookup`: Finds things" in messages[0]["content"]
    assert messages[0]["content"].endswith(ORCHESTRATOR_ADDENDUM)
    assert (
        "Count the items" in messages[1]["content"]
        and "list of 5 characters" in messages[1]["content"]
    )
    bare = build_rlm_system_prompt(
        "Custom {custom_tools_section}end", QueryMetadata("xy"), orchestrator=False
    )
    assert bare[0]["content"] == "Custom end"


def test_user_prompt() -> None:
    first = build_user_prompt(iteration=0, max_iterations=5)["content"]
    assert first.endswith(USER_PROMPT.format(iter_1=1, max_iter=5)) and "answer yet" in first
    later = build_user_prompt(iteration=2, context_count=3, history_count=2)
    assert later["role"] == "user"
    assert later["content"].startswith(USER_PROMPT.format(iter_1=3, max_iter=30))
    assert "context_0 to context_2" in later["content"]
    assert "history_0 to history_1" in later["content"]
    assert "`history`" in build_user_prompt(iteration=1, history_count=1)["content"]


# ---- tokens and helpers ----------------------------------------------------------------------


def test_context_limits() -> None:
    assert token_utils.get_context_limit("gpt-4o-mini") == 128_000
    assert token_utils.get_context_limit("@openai/gpt-4o-2024-08-06") == 128_000
    assert token_utils.get_context_limit("gpt-4") == 8_192
    assert token_utils.get_context_limit("gemini-2.5-flash") == 1_000_000
    assert token_utils.get_context_limit("unknown") == token_utils.DEFAULT_CONTEXT_LIMIT
    assert token_utils.get_context_limit("my-own-model") == token_utils.DEFAULT_CONTEXT_LIMIT


def test_count_tokens_estimate_without_tokenizer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(token_utils, "_encoding", lambda model: None)
    messages = [{"role": "user", "content": "abcdefghi"}, {"role": "assistant", "content": None}]
    assert token_utils.CHARS_PER_TOKEN_ESTIMATE == 4
    assert token_utils.count_tokens(messages, "gpt-4o") == 3  # ceil(9 / 4)
    assert token_utils.count_tokens([], "gpt-4o") == 0
    assert token_utils.count_tokens([{"role": "user", "content": "x" * 8}], "unknown") == 2


def test_filter_sensitive_keys() -> None:
    kwargs = {"api_key": "s", "OPENAI_API_KEY": "s", "model_name": "m", "keywords": 1}
    assert filter_sensitive_keys(kwargs) == {"model_name": "m", "keywords": 1}
