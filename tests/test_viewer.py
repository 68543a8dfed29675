"""``rlm view``: pages for real logs (depth 2, compaction, persistent), the reference's log shape,
crafted logs that must render inert, the command line, the live view, and a port of the reference
visualizer's log parser run over our logs. The layout is checked in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from rlm import RLMLogger
from rlm.testing import RecordedRequest, Reply
from rlm.viewer import Run, find_logs, main, make_server, read_log, render_html

ARTIFACTS = Path(__file__).parent / "artifacts" / "viewer"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium: apt-get install -y chromium"
)

PLANS = {
    "root": [
        'Delegating.\n```repl\nr = rlm_query("CHILD: summarise the task")\nprint(r)\n```',
        "```repl\nprint(undefined_name)\n```",
        '```repl\nanswer["content"] = "root got: " + r\nanswer["ready"] = True\n```',
    ],
    "child": [
        '```repl\ng = rlm_query("GRANDCHILD: go deeper")\nprint(g)\n```',
        '```repl\nanswer.update({"content": "child got: " + g, "ready": True})\n```',
    ],
    "grandchild": [
        '```repl\nv = llm_query_batched(["leaf one", "leaf two"])\nprint(v)\n```',
        '```repl\nanswer = {"content": "grand got: " + v[0] + v[1], "ready": True}\n```',
    ],
}


def depth_two_script(request: RecordedRequest) -> str:
    """Root → child (rlm_query) → grandchild (rlm_query) → two batched leaf llm_query calls; the
    root's second block raises a NameError so that the page has an error to highlight."""
    if not any(m.get("role") == "system" for m in request.messages):
        return f"leaf reply to {request.messages[-1]['content']}"
    first_user = request.messages[1]["content"]
    who = (
        "grandchild" if "GRANDCHILD" in first_user else "child" if "CHILD" in first_user else "root"
    )
    return PLANS[who][sum(1 for m in request.messages if m.get("role") == "assistant")]


ANSWER = "root got: child got: grand got: leaf reply to leaf oneleaf reply to leaf two"


@pytest.fixture
def depth_two(lm_server, make_rlm, tmp_path) -> tuple[Path, dict[str, int]]:
    """The log of a depth-2 run and the token totals the LM server counted for it."""
    lm_server.set_script(depth_two_script)
    logger = RLMLogger(log_dir=str(tmp_path / "logs"), file_name="depth2")
    rlm = make_rlm(max_depth=3, logger=logger)
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == ANSWER
    rlm.close()
    return Path(logger.log_file_path), lm_server.usage_total()


@pytest.fixture
def depth_two_log(depth_two) -> Path:
    return depth_two[0]


def compaction_script(request: RecordedRequest) -> str:
    last = request.messages[-1]["content"]
    if "Summarise what you have learned" in last:
        return "SUMMARY: x holds the running total."
    if any("SUMMARY:" in str(m.get("content")) for m in request.messages):
        return '```repl\nanswer["content"] = str(x)\nanswer["ready"] = True\n```'
    return '```repl\nx = globals().get("x", 0) + 1\nprint("y" * 300)\n```'


@pytest.fixture
def compaction_log(lm_server, make_rlm, tmp_path) -> Path:
    lm_server.set_script(compaction_script)
    logger = RLMLogger(log_dir=str(tmp_path / "logs"), file_name="compaction")
    rlm = make_rlm(compaction=True, backend_kwargs={"context_window_tokens": 1000}, logger=logger)
    assert int(rlm.completion("data").response) >= 2
    rlm.close()
    return Path(logger.log_file_path)


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def all_calls(iterations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every sub-call in ``iterations`` and in the child trajectories below them."""
    found = []
    for iteration in iterations:
        for block in iteration["code_blocks"]:
            for call in block["result"]["rlm_calls"]:
                found.append(call)
                found.extend(all_calls((call.get("metadata") or {}).get("iterations", [])))
    return found


class Page(HTMLParser):
    """The parsed page: every start tag with its attributes, and the text of chosen elements."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[str, list[str]] = {}
        self._open: list[tuple[str, str | None, list[str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag in ("pre", "span", "b", "div", "summary", "td", "h1", "li", "title"):
            self._open.append((tag, attributes.get("class"), []))

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index][0] == tag:
                _, cls, parts = self._open.pop(index)
                text = "".join(parts)
                for name in (cls or "").split():
                    self.texts.setdefault(name, []).append(text)
                self.texts.setdefault(tag, []).append(text)
                if self._open:
                    self._open[-1][2].append(text)
                return

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1][2].append(data)


# ---- the reference visualizer's parser, ported from visualizer/src/lib/{types,parse-logs}.ts ----


MISSING = object()
"""A key the line lacks (``undefined`` in the visualizer), which no declared type admits."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (JSON.parse rejects it)")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def reference_parse(text: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[str]]:
    """``parseJSONL`` + the interfaces of types.ts: (config, iterations, violations), each
    violation naming the line and the field as ``line N: path: expected type``."""
    problems: list[str] = []

    def need(ok: bool, where: str, expected: str) -> None:
        if not ok:
            problems.append(f"{where}: expected {expected}")

    def nullable(value: Any, check: Any) -> bool:
        return value is None or check(value)

    config = dict.fromkeys(
        (
            "root_model",
            "max_depth",
            "max_iterations",
            "backend",
            "backend_kwargs",
            "environment_type",
            "environment_kwargs",
            "other_backends",
        )
    )
    iterations = []
    for number, line in enumerate(text.strip().split("\n"), start=1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line, parse_constant=_reject_constant)
        except ValueError as error:
            problems.append(f"line {number}: not parseable by JSON.parse ({error})")
            continue
        at = f"line {number}"
        if isinstance(parsed, dict) and parsed.get("type") == "metadata":
            config = {key: parsed.get(key) for key in config}  # `?? null`
            # RLMConfigMetadata
            for key in ("root_model", "backend", "environment_type"):
                need(
                    nullable(config[key], lambda v: isinstance(v, str)),
                    f"{at}: {key}",
                    "string|null",
                )
            for key in ("max_depth", "max_iterations"):
                need(nullable(config[key], _is_number), f"{at}: {key}", "number|null")
            for key in ("backend_kwargs", "environment_kwargs"):
                need(
                    nullable(config[key], lambda v: isinstance(v, dict)),
                    f"{at}: {key}",
                    "object|null",
                )
            need(
                nullable(
                    config["other_backends"],
                    lambda v: isinstance(v, list) and all(isinstance(b, str) for b in v),
                ),
                f"{at}: other_backends",
                "string[]|null",
            )
            continue
        # Every other line is an RLMIteration.
        if not isinstance(parsed, dict):
            problems.append(f"{at}: expected an RLMIteration object")
            continue
        iterations.append(parsed)
        need(nullable(parsed.get("type"), lambda v: isinstance(v, str)), f"{at}: type", "string")
        need(_is_number(parsed.get("iteration")), f"{at}: iteration", "number")
        need(isinstance(parsed.get("timestamp"), str), f"{at}: timestamp", "string")
        prompt = parsed.get("prompt")
        need(isinstance(prompt, list), f"{at}: prompt", "Array<{role, content}>")
        for m, message in enumerate(prompt if isinstance(prompt, list) else []):
            ok = isinstance(message, dict)
            need(ok and isinstance(message.get("role"), str), f"{at}: prompt[{m}].role", "string")
            need(
                ok and isinstance(message.get("content"), str),
                f"{at}: prompt[{m}].content",
                "string",
            )
        need(isinstance(parsed.get("response"), str), f"{at}: response", "string")
        answer = parsed.get("final_answer", MISSING)
        need(
            answer is None
            or isinstance(answer, str)
            or (
                isinstance(answer, list)
                and len(answer) == 2
                and all(isinstance(a, str) for a in answer)
            ),
            f"{at}: final_answer",
            "string|[string, string]|null",
        )
        need(
            nullable(parsed.get("iteration_time", MISSING), _is_number),
            f"{at}: iteration_time",
            "number|null",
        )
        blocks = parsed.get("code_blocks")
        need(isinstance(blocks, list), f"{at}: code_blocks", "CodeBlock[]")
        for b, block in enumerate(blocks if isinstance(blocks, list) else []):
            where = f"{at}: code_blocks[{b}]"
            block = block if isinstance(block, dict) else {}
            need(isinstance(block.get("code"), str), f"{where}.code", "string")
            result = block.get("result")
            need(isinstance(result, dict), f"{where}.result", "REPLResult")
            result = result if isinstance(result, dict) else {}
            for key in ("stdout", "stderr"):
                need(isinstance(result.get(key), str), f"{where}.result.{key}", "string")
            need(
                isinstance(result.get("locals"), dict),
                f"{where}.result.locals",
                "Record<string, unknown>",
            )
            need(
                _is_number(result.get("execution_time")), f"{where}.result.execution_time", "number"
            )
            calls = result.get("rlm_calls")
            need(isinstance(calls, list), f"{where}.result.rlm_calls", "RLMChatCompletion[]")
            for c, call in enumerate(calls if isinstance(calls, list) else []):
                there = f"{where}.result.rlm_calls[{c}]"
                call = call if isinstance(call, dict) else {}
                # string | Record<string, unknown>: an array is not a Record in TypeScript.
                need(isinstance(call.get("prompt"), str | dict), f"{there}.prompt", "string|Record")
                need(isinstance(call.get("response"), str), f"{there}.response", "string")
                for key in ("prompt_tokens", "completion_tokens", "execution_time"):
                    need(_is_number(call.get(key)), f"{there}.{key}", "number")
    return config, iterations, problems


def compute_metadata(iterations: list[dict[str, Any]]) -> dict[str, Any]:
    """``computeMetadata`` of parse-logs.ts (without the context question)."""
    blocks = sub_calls = 0
    seconds = 0.0
    has_errors = False
    final = None
    for iteration in iterations:
        blocks += len(iteration["code_blocks"])
        if iteration["iteration_time"] is not None:
            seconds += iteration["iteration_time"]
        else:
            seconds += sum(b["result"]["execution_time"] or 0 for b in iteration["code_blocks"])
        for block in iteration["code_blocks"]:
            has_errors = has_errors or bool(block["result"]["stderr"])
            sub_calls += len(block["result"]["rlm_calls"] or [])
        if iteration["final_answer"]:
            answer = iteration["final_answer"]
            final = answer[1] if isinstance(answer, list) else answer
    return {
        "totalIterations": len(iterations),
        "totalCodeBlocks": blocks,
        "totalSubLMCalls": sub_calls,
        "finalAnswer": final,
        "totalExecutionTime": seconds,
        "hasErrors": has_errors,
    }


def test_our_depth_two_log_follows_the_reference_visualizer_types(depth_two_log):
    config, iterations, problems = reference_parse(depth_two_log.read_text())
    assert problems == []
    assert config["root_model"] == "root-model" and config["max_depth"] == 3
    meta = compute_metadata(iterations)
    assert meta["totalIterations"] == 3 and meta["totalCodeBlocks"] == 3
    assert meta["totalSubLMCalls"] == 1  # the root's rlm_query; the rest is nested in it
    assert meta["finalAnswer"] == ANSWER
    assert meta["hasErrors"] is True  # the NameError's traceback is in stderr, as there


def test_our_compaction_log_follows_the_reference_visualizer_types(compaction_log):
    config, iterations, problems = reference_parse(compaction_log.read_text())
    assert problems == []
    assert config["backend"] == "openai"
    kinds = [i["kind"] for i in iterations]
    assert "compaction" in kinds and kinds[-1] == "iteration"
    meta = compute_metadata(iterations)
    assert meta["totalIterations"] == len(iterations) >= 4
    assert int(meta["finalAnswer"]) >= 2 and meta["hasErrors"] is False


def test_the_ported_parser_reports_each_field_the_visualizer_would_trip_on(depth_two_log):
    lines = log_lines(depth_two_log)
    first = lines[1]
    del first["final_answer"]
    first["iteration_time"] = "slow"
    first["prompt"][1]["content"] = [{"type": "text", "text": "hi"}]
    call = first["code_blocks"][0]["result"]["rlm_calls"][0]
    del call["prompt_tokens"]
    call["execution_time"] = None
    lines[2]["code_blocks"] = None
    text = "".join(json.dumps(line) + "\n" for line in lines)
    assert reference_parse(text)[2] == [
        "line 2: prompt[1].content: expected string",
        "line 2: final_answer: expected string|[string, string]|null",
        "line 2: iteration_time: expected number|null",
        "line 2: code_blocks[0].result.rlm_calls[0].prompt_tokens: expected number",
        "line 2: code_blocks[0].result.rlm_calls[0].execution_time: expected number",
        "line 3: code_blocks: expected CodeBlock[]",
    ]


def test_a_failed_subcall_follows_the_reference_visualizer_types(lm_server, make_rlm, tmp_path):
    def script(request: RecordedRequest) -> str | Reply:
        if not any(m.get("role") == "system" for m in request.messages):
            return Reply("provider says no", status=400)
        if not any(m.get("role") == "assistant" for m in request.messages):
            return '```repl\nx = llm_query("leaf")\nprint(x)\n```'
        return '```repl\nanswer["content"] = x\nanswer["ready"] = True\n```'

    lm_server.set_script(script)
    logger = RLMLogger(log_dir=str(tmp_path), file_name="failed")
    make_rlm(logger=logger).completion("data")
    path = Path(logger.log_file_path)
    (call,) = log_lines(path)[1]["code_blocks"][0]["result"]["rlm_calls"]
    assert call["error"]  # the call did fail (the condition under test)
    problems = reference_parse(path.read_text())[2]
    assert problems == [], problems


# ---- reading our logs ----------------------------------------------------------------------------


def test_the_depth_two_log_reads_into_the_typed_trajectory(depth_two_log):
    log = read_log(str(depth_two_log))
    assert log.config is not None and log.config.max_depth == 3 and log.skipped_lines == 0
    (root,) = log.runs
    assert root.depth == 0 and root.finished_by == "answer" and root.final_answer == ANSWER
    assert [len(i.code_blocks) for i in root.iterations] == [1, 1, 1]
    assert [i.extras["iteration"] for i in root.iterations] == [1, 2, 3]
    assert "NameError" in root.iterations[1].code_blocks[0].result.extras["error"]
    (to_child,) = root.iterations[0].code_blocks[0].result.rlm_calls
    assert to_child.extras["kind"] == "rlm_query"
    child = Run.from_trajectory(to_child.metadata)
    assert (child.depth, child.finished_by) == (1, "answer")
    (to_grandchild,) = child.iterations[0].code_blocks[0].result.rlm_calls
    grandchild = Run.from_trajectory(to_grandchild.metadata)
    assert grandchild.depth == 2 and grandchild.run_id == to_grandchild.extras["child_run_id"]
    leaves = grandchild.iterations[0].code_blocks[0].result.rlm_calls
    assert [(c.extras["kind"], c.response) for c in leaves] == [
        ("llm_query", "leaf reply to leaf one"),
        ("llm_query", "leaf reply to leaf two"),
    ]


def test_the_depth_two_page_shows_the_tree_with_every_reply_and_the_totals(depth_two):
    path, served = depth_two
    page_text = render_html([read_log(str(path))])
    page = Page(page_text)
    calls = all_calls(log_lines(path)[1:])
    assert len(calls) == 4  # rlm_query → rlm_query → 2 × llm_query
    assert sorted(page.texts["reply"]) == sorted(c["response"] for c in calls)
    assert "leaf reply to leaf two" in page.texts["reply"]
    assert sorted(page.texts["call-kind"]) == ["llm_query", "llm_query", "rlm_query", "rlm_query"]
    # Prompts are there, collapsed.
    prompts = [
        attrs
        for tag, attrs in page.tags
        if tag == "details" and attrs.get("class") == "call-prompt"
    ]
    assert len(prompts) == 4 and all("open" not in attrs for attrs in prompts)
    # Runs nest: root (0), child (1), grandchild (2).
    depths = [attrs["data-depth"] for tag, attrs in page.tags if tag == "section"]
    assert depths == ["0", "1", "2"]
    # The header sums the log: every LM call of the tree, as the server counted them.
    tokens = served["input_tokens"] + served["output_tokens"]
    header = page.texts["log-totals"][0]
    assert f"{tokens:,} tokens" in header and tokens > 0
    assert "3 iterations" in header and "+4 in child runs" in header
    assert "4 sub-calls" in header and "finished by answer" in header
    assert "1 error(s)" in header
    # The failing block is marked and its error shown.
    failing = [
        attrs
        for tag, attrs in page.tags
        if tag == "div" and "error" in (attrs.get("class") or "").split()
    ]
    assert len(failing) == 1
    assert any("NameError" in text for text in page.texts["error"])
    # The configuration and the final answer.
    assert "root-model" in page.texts["td"] and "<hidden>" in " ".join(page.texts["td"])
    assert page.texts["final-answer"][-1] == ANSWER  # after the child runs' answers


def test_a_compaction_run_renders_its_summary_entry(compaction_log, lm_server):
    page = Page(render_html([read_log(str(compaction_log))]))
    kinds = [attrs.get("class") for tag, attrs in page.tags if tag == "details"]
    assert sum("kind-compaction" in (k or "") for k in kinds) == 1
    assert "SUMMARY: x holds the running total." in page.texts["response"]
    assert "compaction" in page.texts["kind-compaction"]
    header = page.texts["log-totals"][0]
    # Every root call's tokens are in the log, the compaction's too: the total is the server's.
    used = lm_server.usage_total()
    total = used["input_tokens"] + used["output_tokens"]
    assert (
        f"{total:,} tokens ({used['input_tokens']:,} in / {used['output_tokens']:,} out)" in header
    )
    assert "does not carry" not in header
    assert int(page.texts["final-answer"][0]) >= 2


def test_a_persistent_rlm_log_shows_each_completion(lm_server, make_rlm, tmp_path):
    lm_server.set_script(
        [
            "```repl\nseen = [context]\nanswer.update(content=str(len(seen)), ready=True)\n```",
            '```repl\nseen.append(context)\nanswer = {"content": str(len(seen)), "ready": True}\n```',
        ]
    )
    logger = RLMLogger(log_dir=str(tmp_path), file_name="persistent")
    rlm = make_rlm(persistent=True, logger=logger)
    assert [rlm.completion("a").response, rlm.completion("b").response] == ["1", "2"]
    log = read_log(logger.log_file_path)
    assert [r.final_answer for r in log.runs] == ["1", "2"]
    page = Page(render_html([log]))
    assert [t for t in page.texts["title"] if "completion" in t] == [
        f"completion 1 of 2 · run {log.runs[0].run_id}",
        f"completion 2 of 2 · run {log.runs[1].run_id}",
    ]


# ---- the reference package's logs ------------------------------------------------------------------

REFERENCE_LOG = [
    {
        "type": "metadata",
        "timestamp": "2025-01-01T10:00:00.000000",
        "root_model": "gpt-5-nano",
        "max_depth": 1,
        "max_iterations": 10,
        "backend": "openai",
        "backend_kwargs": {"model_name": "gpt-5-nano"},
        "environment_type": "local",
        "environment_kwargs": {},
        "other_backends": None,
    },
    {
        "type": "iteration",
        "iteration": 1,
        "timestamp": "2025-01-01T10:00:01.000000",
        "prompt": [
            {"role": "system", "content": "You are tasked with answering a query."},
            {"role": "user", "content": "Think step by step and answer the prompt."},
        ],
        "response": "Let me look.\n```repl\nprint(len(context))\nsub = llm_query('count the words')\n```",
        "code_blocks": [
            {
                "code": "print(len(context))\nsub = llm_query('count the words')",
                "result": {
                    "stdout": "1234\n",
                    "stderr": "",
                    "locals": {"context": "lorem ipsum", "sub": "REFERENCE-SUB-REPLY 17"},
                    "execution_time": 0.52,
                    "rlm_calls": [
                        # As types.ts declares an RLMChatCompletion.
                        {
                            "prompt": "count the words",
                            "response": "REFERENCE-SUB-REPLY 17",
                            "prompt_tokens": 120,
                            "completion_tokens": 4,
                            "execution_time": 0.4,
                        },
                        # As the reference's RLMChatCompletion.to_dict() writes one.
                        {
                            "root_model": "gpt-5-mini",
                            "prompt": {"question": "and the lines?"},
                            "response": "REFERENCE-SECOND-REPLY",
                            "usage_summary": {
                                "model_usage_summaries": {
                                    "gpt-5-mini": {
                                        "total_calls": 1,
                                        "total_input_tokens": 30,
                                        "total_output_tokens": 6,
                                        "total_cost": 0.25,
                                    }
                                },
                                "total_cost": 0.25,
                            },
                            "execution_time": 0.1,
                        },
                    ],
                    "final_answer": None,
                },
            }
        ],
        "final_answer": None,
        "iteration_time": 1.5,
    },
    {
        "type": "iteration",
        "iteration": 2,
        "timestamp": "2025-01-01T10:00:03.000000",
        "prompt": [
            {"role": "system", "content": "You are tasked with answering a query."},
            {"role": "user", "content": "Think step by step and answer the prompt."},
            {"role": "assistant", "content": "Let me look."},
            {"role": "user", "content": "REPL output: 1234"},
        ],
        "response": "```repl\nx = 1/0\n```\nFINAL_VAR(result)",
        "code_blocks": [
            {
                "code": "x = 1/0",
                "result": {
                    "stdout": "",
                    "stderr": "\nZeroDivisionError: division by zero",
                    "locals": {},
                    "execution_time": 0.01,
                    "rlm_calls": [],
                    "final_answer": None,
                },
            }
        ],
        "final_answer": ["result", "REFERENCE-ANSWER 42"],
        "iteration_time": None,
    },
]


@pytest.fixture
def reference_log(tmp_path) -> Path:
    path = tmp_path / "reference.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in REFERENCE_LOG))
    return path


def test_a_reference_shaped_log_renders(reference_log):
    # The reference's own writer leaves out the tokens that its visualizer's types declare.
    assert reference_parse(reference_log.read_text())[2] == [
        "line 2: code_blocks[0].result.rlm_calls[1].prompt_tokens: expected number",
        "line 2: code_blocks[0].result.rlm_calls[1].completion_tokens: expected number",
    ]
    log = read_log(str(reference_log))
    (run,) = log.runs
    assert run.run_id is None and run.depth is None
    assert run.finished_by == "answer" and run.final_answer == "REFERENCE-ANSWER 42"
    page = Page(render_html([log]))
    assert page.texts["reply"] == ["REFERENCE-SUB-REPLY 17", "REFERENCE-SECOND-REPLY"]
    assert page.texts["call-kind"] == ["llm_query", "llm_query"]
    assert page.texts["final-answer"] == ["REFERENCE-ANSWER 42"]
    heads = page.texts["call-head"]
    assert "120 in / 4 out" in heads[0] and "cost unknown" in heads[0]
    assert "30 in / 6 out" in heads[1] and "$0.2500" in heads[1] and "gpt-5-mini" in heads[1]
    header = page.texts["log-totals"][0]
    assert "160 tokens (150 in / 10 out)" in header and "$0.2500" in header
    assert "2 root-model call(s) whose tokens the log does not carry" in header
    assert "2 iterations" in header and "2 sub-calls" in header
    # The ZeroDivisionError is only in stderr there: still an error.
    failing = [a for t, a in page.tags if t == "div" and "error" in (a.get("class") or "").split()]
    assert len(failing) == 1 and "ZeroDivisionError" in " ".join(page.texts["stderr"])
    assert "gpt-5-nano" in page.texts["td"]
    # Only the messages new since the previous iteration are repeated.
    assert "2 earlier message(s) as in the previous iteration, then:" in page.texts["note"]


# ---- untrusted content ---------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2)">'
CONTROL = "\x1b]0;pwned\x07\x1b[2J\u202egnp.exe\x00\x85"


def crafted_log() -> str:
    call = {
        "kind": f"llm_query{IMG}",
        "root_model": f'm"{SCRIPT}',
        "prompt": [{"role": f"user{IMG}", "content": SCRIPT}],
        "response": f"</pre>{SCRIPT}{CONTROL}",
        "prompt_tokens": "<b>1</b>",
        "completion_tokens": 1e400,
        "cost": "NaN<script>",
        "usage_summary": {"model_usage_summaries": {IMG: {"total_input_tokens": IMG}}},
        "execution_time": f"1{SCRIPT}",
        "error": f"boom{IMG}",
        "metadata": {
            "run_metadata": {"root_model": SCRIPT, "max_depth": IMG},
            "run_id": '"><script>alert(3)</script>',
            "depth": "<script>alert(4)</script>",
            "finished_by": IMG,
            "iterations": [
                {
                    "iteration": '"><img src=x onerror=alert(5)>',
                    "depth": "<script>alert(6)</script>",
                    "prompt": SCRIPT,
                    "response": IMG,
                    "code_blocks": [{"code": f"</pre>{SCRIPT}", "result": "not a dict"}],
                    "iteration_time": "2; background:url(//evil)",
                    "lm_seconds": "<script>",
                }
            ],
        },
    }
    lines = [
        {
            "type": "metadata",
            "root_model": SCRIPT,
            "max_depth": IMG,
            "backend": CONTROL,
            "backend_kwargs": {SCRIPT: IMG},
            "environment_type": "local",
            "environment_kwargs": IMG,  # not even a dict
        },
        {
            "type": "iteration",
            "iteration": '<img src=x onerror="alert(7)">',
            "timestamp": SCRIPT,
            "kind": 'iteration" onmouseover="alert(8)',
            "run_id": "'><script>alert(9)</script>",
            "depth": "<script>alert(10)</script>",
            "lm_seconds": float("nan"),
            "input_tokens": f"{IMG}",
            "output_tokens": -5,
            "finished_by": IMG,
            "reply_problem": SCRIPT,
            "prompt": [{"role": "system", "content": CONTROL}, "not a message", {"role": SCRIPT}],
            "response": f"```repl\n{SCRIPT}\n```{CONTROL}\ud800",
            "code_blocks": [
                {
                    "code": f"print('</pre>{SCRIPT}')\n# {CONTROL}",
                    "result": {
                        "stdout": f"{IMG}{CONTROL}",
                        "stderr": SCRIPT,
                        "locals": "nope",
                        "execution_time": float("inf"),
                        "rlm_calls": [call, "not a call", 7],
                        "final_answer": [SCRIPT, IMG],
                        "error": IMG,
                        "restarted": True,
                        "stdout_dropped": IMG,
                        "tool_calls": [{"name": SCRIPT, "seconds": IMG, "error": IMG}, "x"],
                    },
                },
                "not a block",
            ],
            "final_answer": [SCRIPT, f"{IMG}{CONTROL}"],
            "iteration_time": "1e3</span><script>",
        },
        ["a JSON line that is not an object"],
        {
            "type": "iteration",
            "iteration": 2,
            "code_blocks": [],
            "response": 5,
            "prompt": 7,
            "iteration_time": 0.5,
        },
    ]
    return "".join(json.dumps(line) + "\n" for line in lines) + '{"type": "iteration", "trunc'


def test_a_crafted_log_renders_inert(tmp_path):
    path = tmp_path / "crafted.jsonl"
    path.write_text(crafted_log(), encoding="utf-8")
    out = tmp_path / "crafted.html"
    assert main([str(path), "-o", str(out)]) == 0
    text = out.read_text(encoding="utf-8")  # lone surrogates did not stop the page being written
    page = Page(text)
    tags = [tag for tag, _ in page.tags]
    assert tags.count("script") == 1 and "img" not in tags  # only the page's own script
    for tag, attrs in page.tags:
        assert not [name for name in attrs if name.startswith("on")], (tag, attrs)
        style = attrs.get("style")
        assert style is None or re.fullmatch(r"flex-grow:\d+\.\d+", style), style
        assert not re.search(r"[<>\"']", attrs.get("data-depth") or ""), attrs
        assert not re.search(r"[<>\"']", attrs.get("data-iteration") or ""), attrs
        assert (attrs.get("class") or "").count("onmouseover") == 0
    # Bad numbers are not shown as numbers, and the text is shown as text.
    assert [a["data-depth"] for t, a in page.tags if t == "section"] == ["", ""]
    assert [
        a["data-iteration"] for t, a in page.tags if t == "details" and "data-iteration" in a
    ] == ["", "", "2"]
    assert "Iteration ?" in " ".join(page.texts["summary"])
    assert f"</pre>{SCRIPT}" in " ".join(page.texts["reply"])
    assert IMG in " ".join(page.texts["out"])
    # Control characters are made visible; none is left raw in the page.
    assert not re.search(
        "[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]", text
    )
    assert "\u241b]0;pwned\u2407" in " ".join(page.texts["out"])
    assert "\\u202egnp.exe" in " ".join(page.texts["out"])
    # The page limits scripts to its own, by hash.
    csp = next(
        a["content"]
        for t, a in page.tags
        if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"
    )
    assert "script-src 'sha256-" in csp and "unsafe-inline" not in csp.split("script-src")[1]
    assert "2 line(s) that are not log entries were skipped" in " ".join(page.texts["notice"])


# ---- the command line ----------------------------------------------------------------------------


def test_several_files_make_one_page_and_a_directory_lists_its_logs_newest_first(
    depth_two_log, reference_log, tmp_path, capsys
):
    out = tmp_path / "both.html"
    assert main([str(depth_two_log), str(reference_log), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = Page(out.read_text())
    assert page.texts["log-name"] == [depth_two_log.name, "reference.jsonl"]
    assert [t for t in page.texts["li"] if t.endswith(".jsonl")] == [
        depth_two_log.name,
        "reference.jsonl",
    ]
    opened = [("open" in a) for t, a in page.tags if t == "details" and a.get("class") == "log"]
    assert opened == [True, False]
    assert (
        "REFERENCE-SUB-REPLY 17" in page.texts["reply"]
        and "leaf reply to leaf one" in page.texts["reply"]
    )

    folder = tmp_path / "logs"  # holds the depth-2 log already
    shutil.copy(reference_log, folder / "newer.jsonl")
    (folder / "notes.txt").write_text("not a log")
    os.utime(depth_two_log, (1_000_000_000, 1_000_000_000))
    assert find_logs([str(folder)]) == [str(folder / "newer.jsonl"), str(depth_two_log)]
    assert main([str(folder)]) == 0
    written = folder / "index.html"
    assert capsys.readouterr().out.strip() == str(written)
    assert Page(written.read_text()).texts["log-name"] == ["newer.jsonl", depth_two_log.name]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: d / "missing.jsonl", "no such file or directory"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no *.jsonl log in directory"),
        (
            lambda d: (d / "a.txt").write_text("hello\nworld\n") and d / "a.txt",
            "not an RLM trajectory log",
        ),
        (
            lambda d: (d / "e.jsonl").write_text("") or d / "e.jsonl",
            "not an RLM trajectory log (it is empty)",
        ),
        (lambda d: (d / "b.bin").write_bytes(b"\xff\xfe\x00\x01") and d / "b.bin", "not UTF-8"),
        (
            lambda d: (
                (d / "old.jsonl").write_text('{"kind": "run_started", "run_id": "x"}\n')
                and d / "old.jsonl"
            ),
            "line 1 is neither a metadata nor an iteration",
        ),
    ],
)
def test_a_path_that_is_not_a_log_is_a_one_line_error(setup, message, tmp_path, capsys):
    from rlm.cli import main as rlm_main

    path = setup(tmp_path)
    assert rlm_main(["view", str(path)]) == 2  # through the real `rlm` entry point
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("rlm view: ")
    assert message in captured.err and str(path) in captured.err
    assert "Traceback" not in captured.err


def test_a_log_among_the_inputs_is_never_overwritten(reference_log, capsys):
    assert main([str(reference_log), "-o", str(reference_log)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert json.loads(reference_log.read_text().splitlines()[0])["type"] == "metadata"


def test_the_live_view_rereads_the_growing_file(depth_two_log, tmp_path):
    lines = depth_two_log.read_text().splitlines(keepends=True)
    growing = tmp_path / "live.jsonl"
    growing.write_text("")
    server = make_server([str(growing)], 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/"

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            return response.read().decode()

    try:
        assert "not an RLM trajectory log (it is empty)" in fetch()  # not written yet
        growing.write_text("".join(lines[:2]))  # metadata + the first iteration
        first = fetch()
        assert '<meta http-equiv="refresh" content="2">' in first  # not finished: reloads
        assert ">1 iteration<" in first and "leaf reply to leaf two" in first
        growing.write_text("".join(lines))
        done = fetch()
        assert 'http-equiv="refresh"' not in done and "finished by answer" in done
        assert "3 iterations" in done
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---- in Chromium ---------------------------------------------------------------------------------

# The page reports, from inside Chromium, what it laid out: code blocks, sub-call replies and each
# run's chain of enclosing runs. Test-only; the product page does not carry it.
PROBE = """<script>
document.addEventListener("DOMContentLoaded", function () {
  function shown(el) {
    var r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== "hidden";
  }
  var report = {
    cells: Array.from(document.querySelectorAll(".cell")).map(function (c) {
      return {code: c.querySelector(".code").innerText, visible: shown(c),
              error: c.classList.contains("error"), color: getComputedStyle(c).borderLeftColor};
    }),
    replies: Array.from(document.querySelectorAll("pre.reply")).map(function (p) {
      return {text: p.innerText, visible: shown(p)};
    }),
    runs: Array.from(document.querySelectorAll("section.run")).map(function (r) {
      var chain = [], p = r.parentElement && r.parentElement.closest("section.run");
      while (p) { chain.push(p.dataset.run); p = p.parentElement && p.parentElement.closest("section.run"); }
      return {id: r.dataset.run, depth: r.dataset.depth, parents: chain, visible: shown(r)};
    }),
    ready: document.body.dataset.ready === "true"
  };
  var pre = document.createElement("pre");
  pre.id = "layout-report";
  pre.textContent = JSON.stringify(report);
  document.body.appendChild(pre);
});
</script>"""


def chromium(*args: str, tmp_path: Path) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@needs_chromium
def test_the_page_lays_out_the_subcall_tree_and_every_reply_in_chromium(
    depth_two_log, tmp_path, capsys
):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = ARTIFACTS / "depth2.html"
    assert main([str(depth_two_log), "-o", str(page)]) == 0  # `rlm view LOG -o PAGE`
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "the page must be offline"

    # The probe is a second script, which the page's policy would block: drop the policy here.
    probed = tmp_path / "probed.html"
    probed.write_text(
        re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text).replace(
            "</body>", PROBE + "</body>"
        )
    )
    dom = chromium("--dump-dom", "--virtual-time-budget=5000", probed.as_uri(), tmp_path=tmp_path)
    found = re.search(r'<pre id="layout-report">(.*?)</pre>', dom, re.S)
    assert found, "the page did not run its script in Chromium"
    report = json.loads(html.unescape(found.group(1)))
    assert report["ready"] is True  # the page's own script ran

    lines = log_lines(depth_two_log)
    codes = [b["code"] for it in lines[1:] for b in it["code_blocks"]]
    codes += [
        b["code"]
        for call in all_calls(lines[1:])
        for it in (call.get("metadata") or {}).get("iterations", [])
        for b in it["code_blocks"]
    ]
    rendered = [c["code"].strip() for c in report["cells"]]
    assert sorted(rendered) == sorted(code.strip() for code in codes)
    assert all(c["visible"] for c in report["cells"]), report["cells"]
    failing = [c for c in report["cells"] if c["error"]]
    assert [c["code"].strip() for c in failing] == ["print(undefined_name)"]
    assert failing[0]["color"] != report["cells"][0]["color"]  # the error is highlighted

    replies = [r["text"].strip() for r in report["replies"]]
    assert sorted(replies) == sorted(c["response"] for c in all_calls(lines[1:]))
    assert all(r["visible"] for r in report["replies"]), report["replies"]

    runs = {r["depth"]: r for r in report["runs"]}
    assert sorted(runs) == ["0", "1", "2"] and all(r["visible"] for r in report["runs"])
    assert runs["0"]["parents"] == []
    assert runs["1"]["parents"] == [runs["0"]["id"]]
    assert runs["2"]["parents"] == [runs["1"]["id"], runs["0"]["id"]]

    shot = ARTIFACTS / "depth2.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", "--window-size=1400,2000", page.as_uri(), tmp_path=tmp_path)
    assert shot.stat().st_size > 20_000, "the screenshot looks blank"
    print(f"\nviewer page: {page}\nscreenshot: {shot}")


@needs_chromium
def test_the_crafted_page_runs_nothing_but_its_own_script_in_chromium(tmp_path):
    path = tmp_path / "crafted.jsonl"
    path.write_text(crafted_log(), encoding="utf-8")
    out = tmp_path / "crafted.html"
    assert main([str(path), "-o", str(out)]) == 0
    dom = chromium("--dump-dom", "--virtual-time-budget=3000", out.as_uri(), tmp_path=tmp_path)
    parsed = Page(dom)
    assert [t for t, _ in parsed.tags].count("script") == 1
    assert "img" not in [t for t, _ in parsed.tags]
    assert 'data-ready="true"' in dom  # the page's own script did run
    assert "alert(" in dom  # the payloads are there, as text
