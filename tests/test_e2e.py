"""End-to-end: the real openai client against the scripted server, through broker and runner."""

from __future__ import annotations

import random
import re

import pytest

from rlm import BudgetExceededError, ErrorThresholdExceededError, RLMLogger
from rlm.testing import RecordedRequest, Reply
from rlm.testing.scripts import depth_script, is_root_request, iteration_of

NEEDLE = "The secret launch code is 7491-ALPHA."


def haystack(size: int, needle_at: float) -> str:
    rng = random.Random(7)
    words = ["river", "stone", "amber", "falcon", "quiet", "lantern", "meadow", "copper"]
    lines, total, inserted = [], 0, False
    while total < size:
        if not inserted and total >= size * needle_at:
            lines.append(NEEDLE)
            inserted = True
        line = " ".join(rng.choice(words) for _ in range(12)) + "."
        lines.append(line)
        total += len(line) + 1
    return "\n".join(lines)


CHUNK = 250_000
ROOT_CHUNK_AND_BATCH = f"""I will split the context and ask sub-models in parallel.
```repl
chunks = [context[i:i + {CHUNK}] for i in range(0, len(context), {CHUNK})]
prompts = ["Find the secret launch code in this text. Reply with the code only, or NONE.\\n" + c for c in chunks]
replies = llm_query_batched(prompts)
found = [r for r in replies if r != "NONE"]
print(len(chunks), found)
```"""
ROOT_FINISH = """```repl
answer["content"] = found[0]
answer["ready"] = True
```"""


def needle_script(request: RecordedRequest) -> str:
    if is_root_request(request):
        return [ROOT_CHUNK_AND_BATCH, ROOT_FINISH][iteration_of(request)]
    match = re.search(r"secret launch code is (\S+)\.", request.prompt)
    return match.group(1) if match else "NONE"


def test_needle_in_a_2mb_haystack_with_concurrent_batched_subcalls(lm_server, make_rlm, tmp_path):
    context = haystack(2_500_000, needle_at=0.77)
    lm_server.set_script(needle_script)
    lm_server.latency = 0.2
    logger = RLMLogger(log_dir=str(tmp_path))
    rlm = make_rlm(
        other_backends=["openai"],
        other_backend_kwargs=[
            {"model_name": "sub-model", "base_url": lm_server.base_url, "api_key": "k"}
        ],
        logger=logger,
    )
    result = rlm.completion(context, root_prompt="What is the secret launch code?")

    assert result.response == "7491-ALPHA"
    chunks = -(-len(context) // CHUNK)
    sub_requests = [r for r in lm_server.requests if not is_root_request(r)]
    assert len(sub_requests) == chunks
    # The sub-calls overlapped on the server: they ran concurrently, not one after another.
    assert lm_server.max_in_flight >= min(chunks, 8)
    starts = sorted(r.started for r in sub_requests)
    ends = sorted(r.finished for r in sub_requests)
    assert starts[-1] < ends[0], "every sub-call should have started before the first one ended"
    # Usage: what the server reported equals what the RLM summed, per model and in total.
    summary = result.usage_summary
    assert summary.model_usage_summaries["sub-model"].total_calls == chunks
    assert summary.model_usage_summaries["root-model"].total_calls == 2
    server_usage = lm_server.usage_total()
    assert summary.total_calls == server_usage["calls"]
    assert summary.total_input_tokens == server_usage["input_tokens"]
    assert summary.total_output_tokens == server_usage["output_tokens"]
    # The trajectory and the JSONL log tell what happened.
    assert result.metadata["finished_by"] == "answer"
    first_block = result.metadata["iterations"][0]["code_blocks"][0]
    calls = first_block["result"]["rlm_calls"]
    assert len(calls) == chunks
    assert {c["kind"] for c in calls} == {"llm_query"}
    assert sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls) == sum(
        r.usage["input_tokens"] + r.usage["output_tokens"] for r in sub_requests
    )
    # The log holds what the metadata holds: a metadata line, then one line per iteration.
    entries = RLMLogger.read(logger.log_file_path)
    assert [e["type"] for e in entries] == ["metadata", "iteration", "iteration"]
    assert entries[0]["root_model"] == "root-model"
    assert entries[1:] == result.metadata["iterations"]
    assert result.metadata["run_metadata"]["backend_kwargs"]["api_key"] == "<hidden>"


def test_depth_two_recursion_rolls_child_usage_into_the_root(lm_server, make_rlm):
    lm_server.set_script(depth_script())
    rlm = make_rlm(max_depth=3)
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: grand got: leaf answe"
    # Root 2 calls, child 2, grandchild 2 + 1 leaf call: all of them in the root's summary.
    assert result.usage_summary.total_calls == 7 == lm_server.usage_total()["calls"]
    assert result.usage_summary.total_input_tokens == lm_server.usage_total()["input_tokens"]
    # Each child's trajectory is nested in the call that started it, as in the reference.
    child_call = result.metadata["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"][0]
    assert child_call["kind"] == "rlm_query"
    assert child_call["response"] == "child got: grand got: leaf answe"
    child = child_call["metadata"]
    assert child["depth"] == 1 and child["run_metadata"]["max_depth"] == 3
    grand_call = child["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"][0]
    grandchild = grand_call["metadata"]
    assert grandchild["depth"] == 2
    leaf = grandchild["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"][0]
    assert (leaf["kind"], leaf["response"]) == ("llm_query", "leaf answer")
    # The child's usage covers its own calls and the grandchild's (2 + 2 + 1).
    assert child_call["usage_summary"]["model_usage_summaries"]["root-model"]["total_calls"] == 5


def test_rlm_query_at_max_depth_is_a_plain_lm_call(lm_server, make_rlm):
    lm_server.set_script(depth_script())
    rlm = make_rlm(max_depth=1, max_iterations=2)
    result = rlm.completion("ROOT DATA")
    assert result.response == "root got: leaf answer"
    assert result.usage_summary.total_calls == 3


def test_budget_exhausted_in_a_grandchild_stops_the_whole_tree(lm_server, make_rlm):
    # The grandchild's leaf call returns 40k characters (~10k tokens): that blows the budget.
    lm_server.set_script(depth_script(leaf_reply="x" * 40_000))
    rlm = make_rlm(
        max_depth=3,
        max_budget=0.005,
        backend_kwargs={"price_per_million": (1.0, 1.0)},
    )
    with pytest.raises(BudgetExceededError) as caught:
        rlm.completion("ROOT DATA", root_prompt="go")
    assert "max_budget" in str(caught.value)
    # Root, child and grandchild each made one call, then the leaf call overspent; nothing
    # ran after it (no further iteration anywhere in the tree).
    assert lm_server.usage_total()["calls"] == 4
    assert not is_root_request(lm_server.requests[-1])


def test_budget_needs_a_known_price(lm_server, make_rlm):
    from rlm import ConfigurationError

    lm_server.set_script(["```repl\nprint(1)\n```"])
    rlm = make_rlm(max_budget=1.0, backend_kwargs={"model_name": "my-private-model"})
    with pytest.raises(ConfigurationError, match="price_per_million"):
        rlm.completion("data")
    assert lm_server.requests == []


def test_max_errors_stops_with_the_partial_answer(lm_server, make_rlm):
    lm_server.set_script(['```repl\nanswer["content"] = "half"\nraise ValueError("boom")\n```'] * 3)
    rlm = make_rlm(max_errors=2)
    with pytest.raises(ErrorThresholdExceededError) as caught:
        rlm.completion("data")
    assert caught.value.partial_answer == "half"


def test_malformed_replies_are_explained_and_iterations_fall_back(lm_server, make_rlm):
    lm_server.set_script(
        [
            "I think the answer is 4.",  # no code block
            "```repl\nprint('unterminated'",  # never closed
            "The answer is 4.",  # the forced final answer
        ]
    )
    rlm = make_rlm(max_iterations=2)
    result = rlm.completion("2+2?")
    assert result.response == "The answer is 4."
    assert result.metadata["finished_by"] == "max_iterations"
    second = lm_server.requests[1].messages[-1]["content"]
    assert "no ```repl code block found" in second
    third = lm_server.requests[2].messages
    assert "never closed" in third[-2]["content"]


def test_lm_errors_are_retried(lm_server, make_rlm):
    lm_server.set_script(['```repl\nanswer["content"]="ok"\nanswer["ready"]=True\n```'])
    lm_server.fail_first = 2
    rlm = make_rlm(backend_kwargs={"max_retries": 3})
    assert rlm.completion("x").response == "ok"
    assert len(lm_server.requests) == 3


def test_persistent_sessions_keep_state_across_completions(lm_server, make_rlm):
    """As in the reference: turn N's data is `context_N`; `context` stays the first turn's; each
    finished turn's conversation is `history_N`, and `history` is the first one."""
    lm_server.set_script(
        [
            "```repl\nseen = [context]\nanswer.update(content=str(len(seen)), ready=True)\n```",
            "```repl\nseen.append(context_1)\nroles = [m['role'] for m in history_0]\n"
            "answer = {'content': '|'.join(seen) + '|' + context + '|' + context_0 + '|' + "
            "str(history == history_0) + '|' + roles[-1] + '|' + history[1]['content'][:40], "
            "'ready': True}\n```",
            "```repl\nanswer['content'] = str(sorted(k for k in globals() "
            "if k.startswith(('context', 'history'))))\nanswer['ready'] = True\n```",
        ]
    )
    rlm = make_rlm(persistent=True)
    assert rlm.completion("first").response == "1"
    second = rlm.completion("second").response.split("|")
    assert second[:4] == ["first", "second", "first", "first"]
    assert second[4:6] == ["True", "assistant"]  # history_0 ends with the model's answer
    assert second[6].startswith("The request is part of `context`")
    assert "context_1" in lm_server.requests[1].messages[1]["content"]  # told where its data is
    names = rlm.completion("third").response
    assert names == str(
        ["context", "context_0", "context_1", "context_2", "history", "history_0", "history_1"]
    )


def test_host_callable_tools(lm_server, make_rlm):
    calls = []

    def lookup(key: str) -> dict:
        """Looks a key up in the host's database."""
        calls.append(key)
        return {"key": key, "value": 42}

    lm_server.set_script(
        [
            '```repl\nr = lookup("k")\nanswer["content"] = f"{r[\'value\']} {LIMIT}"\nanswer["ready"] = True\n```'
        ]
    )
    rlm = make_rlm(custom_tools={"lookup": lookup, "LIMIT": 7})
    assert rlm.completion("x").response == "42 7"
    assert calls == ["k"]
    assert "Looks a key up" in lm_server.requests[0].messages[0]["content"]


def test_acompletion(lm_server, make_rlm):
    import asyncio

    lm_server.set_script(['```repl\nanswer["content"]="async"\nanswer["ready"]=True\n```'])
    rlm = make_rlm()
    assert asyncio.run(rlm.acompletion("x")).response == "async"


def test_max_tokens_stops_the_tree(lm_server, make_rlm):
    from rlm import TokenLimitExceededError

    lm_server.set_script(['```repl\nx = llm_query("q" * 4000)\n```'] * 5)
    rlm = make_rlm(max_tokens=1500)
    with pytest.raises(TokenLimitExceededError, match="max_tokens"):
        rlm.completion("data")


def test_max_timeout_stops_a_slow_run_with_a_typed_error(lm_server, make_rlm, tmp_path):
    from rlm import TimeoutExceededError

    finished = tmp_path / "finished"
    cell = f"import time\ntime.sleep(30)\nopen({str(finished)!r}, 'w').close()"
    lm_server.set_script([f"```repl\n{cell}\n```"])
    rlm = make_rlm(max_timeout=1.5)
    with pytest.raises(TimeoutExceededError, match="max_timeout"):
        rlm.completion("data")
    assert not finished.exists(), "the run waited for the cell instead of stopping it"


def test_rlm_query_batched_runs_children_concurrently(lm_server, make_rlm):
    def script(request: RecordedRequest) -> str | Reply:
        first_user = request.messages[1]["content"] if len(request.messages) > 1 else ""
        if is_root_request(request) and "CHILD" not in first_user:
            if iteration_of(request) == 0:
                return '```repl\nr = rlm_query_batched(["CHILD %d" % i for i in range(4)])\nprint(r)\n```'
            return '```repl\nanswer["content"] = ",".join(r)\nanswer["ready"] = True\n```'
        if is_root_request(request):
            # A child: a 0.5 s root call, then the answer.
            n = first_user.split("CHILD ")[1][0]
            if iteration_of(request) == 0:
                return Reply(
                    f'```repl\nanswer["content"] = "c{n}"\nanswer["ready"] = True\n```', delay=0.5
                )
        return "unexpected"

    lm_server.set_script(script)
    rlm = make_rlm(max_depth=2, max_concurrent_subcalls=4)
    result = rlm.completion("ROOT")
    assert result.response == "c0,c1,c2,c3"
    children = [r for r in lm_server.requests if "CHILD" in r.messages[1]["content"]]
    assert len(children) == 4
    assert max(r.started for r in children) < min(r.finished for r in children)


def test_compaction_summarises_a_long_history(lm_server, make_rlm):
    def script(request: RecordedRequest) -> str:
        last = request.messages[-1]["content"]
        if "Summarise what you have learned" in last:
            return "SUMMARY: x holds the running total."
        if any("SUMMARY:" in str(m.get("content")) for m in request.messages):
            return (
                "```repl\nturns = [h for h in history if isinstance(h, list)]\n"
                "summaries = [h for h in history if isinstance(h, dict)]\n"
                "answer['content'] = f\"{x}|{len(turns)}|{summaries[0]['content']}|"
                "{[m['role'] for m in turns[0]]}\"\n"
                "answer['ready'] = True\n```"
            )
        return '```repl\nx = globals().get("x", 0) + 1\nprint("y" * 3000)\n```'

    lm_server.set_script(script)
    rlm = make_rlm(
        compaction=True,
        compaction_threshold_pct=0.5,
        backend_kwargs={"context_window_tokens": 4000},  # compaction after ~8,000 characters
    )
    result = rlm.completion("data")
    kinds = [it["kind"] for it in result.metadata["iterations"]]
    assert "compaction" in kinds
    total, turns, summary, roles = result.response.split("|")
    assert int(total) >= 2  # the REPL state survived the compaction
    # As in the reference: `history` holds every iteration's new messages (a list each) and
    # the summaries ({"type": "summary", "content": ...}).
    assert int(turns) == int(total)
    assert summary == "SUMMARY: x holds the running total."
    assert roles == "['assistant', 'user']"
    after = [
        r
        for r in lm_server.requests
        if any("SUMMARY:" in str(m.get("content")) for m in r.messages)
    ]
    assert after and len(after[0].messages) <= 5  # the history was replaced by the summary
