"""``rlm serve``: the real openai client against the server, the server against the scripted LM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from rlm.serve import APIError, ChatCall, RLMServer, ServeConfig, parse_chat_request
from rlm.testing import RecordedRequest, ScriptedLMServer

SERVE_KEY = "serve-secret"


def is_root(request: RecordedRequest) -> bool:
    return any(m.get("role") == "system" for m in request.messages)


def iteration_of(request: RecordedRequest) -> int:
    return sum(1 for m in request.messages if m.get("role") == "assistant")


def isolation_script(both_arrived: threading.Barrier):
    """Request A/B: the first block stores the context in ``mine_A``/``mine_B`` and waits (in the
    LM server) until the other request got there too; the answer then reports whether the other
    request's variable is visible and which process ran the code."""

    def script(request: RecordedRequest) -> str:
        who = "A" if "QUESTION-A" in request.messages[1]["content"] else "B"
        other = "B" if who == "A" else "A"
        if iteration_of(request) == 0:
            return f"```repl\nimport os\nmine_{who} = context\nprint(os.getpid())\n```"
        both_arrived.wait(timeout=20)  # both sandboxes hold their variable before either answers
        return (
            "```repl\n"
            f"answer['content'] = f\"{{mine_{who}}}|{{'mine_{other}' in globals()}}|{{os.getpid()}}\"\n"
            "answer['ready'] = True\n```"
        )

    return script


def usage_of(server: ScriptedLMServer, question: str) -> tuple[int, int]:
    mine = [r for r in server.requests if question in r.messages[1]["content"]]
    assert mine, f"no LM request for {question}"
    return (
        sum(r.usage["input_tokens"] for r in mine),
        sum(r.usage["output_tokens"] for r in mine),
    )


@pytest.fixture
def served(tmp_path: Path, lm_server: ScriptedLMServer) -> Iterator[str]:
    """``python -m rlm.serve`` (= ``rlm serve``) in a subprocess, configured by file + env vars."""
    (tmp_path / "rlm.toml").write_text(
        'model = "root-model"\nmax_depth = 2\n\n[backend_kwargs]\nmax_retries = 1\n'
    )
    env = {
        **os.environ,
        "RLM_BASE_URL": lm_server.base_url,
        "RLM_API_KEY": "lm-key",
        "RLM_SERVE_API_KEY": SERVE_KEY,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("RLM_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "rlm.serve", "--port", "0", "--max-concurrent", "4"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stderr.readline()
        match = re.search(r"listening on (http://\S+)", line)
        assert match, f"rlm serve did not start: {line}{process.stderr.read()}"
        assert "max_depth 2" in line  # the config file was read
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr


def test_two_parallel_requests_get_their_own_sandbox_answer_and_usage(served, lm_server):
    lm_server.set_script(isolation_script(threading.Barrier(2)))
    lm_server.latency = 0.05
    client = openai.AsyncOpenAI(base_url=served, api_key=SERVE_KEY, max_retries=0)

    async def ask(who: str):
        return await client.chat.completions.create(
            model="rlm",
            messages=[
                {"role": "system", "content": f"QUESTION-{who}: what is stored?"},
                {"role": "user", "content": f"context of {who}"},
            ],
        )

    async def both():
        try:
            return await asyncio.gather(ask("A"), ask("B"))
        finally:
            await client.close()

    started = time.perf_counter()
    answer_a, answer_b = asyncio.run(both())
    elapsed = time.perf_counter() - started

    content_a, leaked_a, pid_a = answer_a.choices[0].message.content.split("|")
    content_b, leaked_b, pid_b = answer_b.choices[0].message.content.split("|")
    assert (content_a, content_b) == ("context of A", "context of B")
    # Each request's code ran in its own process and could not see the other's variable,
    # although both variables existed at the same time (the barrier in the script).
    assert (leaked_a, leaked_b) == ("False", "False")
    assert pid_a != pid_b
    for who, answer in (("A", answer_a), ("B", answer_b)):
        prompt_tokens, completion_tokens = usage_of(lm_server, f"QUESTION-{who}")
        assert answer.usage.prompt_tokens == prompt_tokens
        assert answer.usage.completion_tokens == completion_tokens
        assert answer.usage.total_tokens == prompt_tokens + completion_tokens
        assert answer.choices[0].finish_reason == "stop"
        assert answer.model == "rlm"
    assert len(lm_server.requests) == 4
    print(f"two parallel requests through rlm serve: {elapsed:.2f}s")


def test_wrong_or_missing_key_is_401(served):
    client = openai.OpenAI(base_url=served, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="RLM_SERVE_API_KEY"):
        client.models.list()
    assert [m.id for m in openai.OpenAI(base_url=served, api_key=SERVE_KEY).models.list()] == [
        "rlm"
    ]


# ---- the in-process server (same app, started on a thread) -------------------------------------


@pytest.fixture
def server(lm_server: ScriptedLMServer) -> Iterator[RLMServer]:
    config = ServeConfig(
        rlm_kwargs={
            "backend": "openai",
            "backend_kwargs": {
                "model_name": "root-model",
                "base_url": lm_server.base_url,
                "api_key": "k",
                "max_retries": 1,
                "price_per_million": (1.0, 1.0),
            },
            "max_depth": 2,
            "max_budget": 1.0,
        },
        stream_chunk_chars=5,
    )
    with RLMServer(config) as running:
        yield running


ANSWER = (
    "```repl\nanswer['content'] = 'the streamed answer, in chunks'\nanswer['ready'] = True\n```"
)


def test_streaming_sends_the_answer_in_chunks_then_usage(server, lm_server):
    lm_server.set_script(["```repl\nprint(len(context))\n```", ANSWER])
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "some context"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"progress": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    text = "".join(d.content or "" for d in deltas)
    assert text == "the streamed answer, in chunks"
    assert sum(1 for d in deltas if d.content) == 6  # 30 characters in chunks of 5
    progress = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert "iteration 1" in progress and "code block 1" in progress
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        lm_server.usage_total()["input_tokens"],
        lm_server.usage_total()["output_tokens"],
    )


def test_extra_body_context_question_and_limits(server, lm_server):
    lm_server.set_script([ANSWER])
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    reply = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "What is in the list?"}],
        extra_body={"context": ["doc one", "doc two"], "max_iterations": 3, "max_depth": 1},
    )
    assert reply.choices[0].message.content == "the streamed answer, in chunks"
    first_user = lm_server.requests[0].messages[1]["content"]
    assert "What is in the list?" in first_user
    assert reply.rlm["finished_by"] == "answer"  # extra fields reach the client


@pytest.mark.parametrize(
    ("extra", "status", "message"),
    [
        ({"max_depth": 5}, 400, "at most 2"),
        ({"max_budget": 3.0}, 400, "at most 1.0"),
        ({"environment": "docker"}, 400, "--allow-environment"),
        ({"max_iterations": "many"}, 400, "must be a number"),
        ({"n": 2}, 400, "n must be 1"),
    ],
)
def test_bad_requests_are_400_with_a_reason(server, lm_server, extra, status, message):
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError, match=re.escape(message)) as caught:
        client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "x"}], extra_body=extra
        )
    assert caught.value.status_code == status
    assert lm_server.requests == []


def test_unknown_model_is_404(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="use model='rlm'"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])


def test_budget_exhausted_is_402_with_the_partial_answer_and_no_retry(server, lm_server):
    # $1/M tokens: the first root call fits in $0.02; the second carries the 20K characters the
    # first printed, so its worst case (input bytes + output cap) does not, and it is refused
    # before it is sent.
    lm_server.set_script(
        ["```repl\nanswer['content'] = 'half done'\nprint('x' * 40000)\n```", "x" * 40_000]
    )
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=2)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"max_budget": 0.02},
        )
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "budget_exceeded"
    assert caught.value.body["partial_answer"] == "half done"
    assert "may cost up to" in caught.value.body["message"]
    assert len(lm_server.requests) == 1  # x-should-retry: false; the client did not re-run it


def test_streamed_request_that_fails_fast_keeps_its_status(server, lm_server):
    lm_server.set_script(["x" * 40_000])
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        list(
            client.chat.completions.create(
                model="rlm",
                messages=[{"role": "user", "content": "x"}],
                stream=True,
                extra_body={"max_budget": 0.001},
            )
        )
    assert caught.value.status_code == 402


# ---- request parsing ------------------------------------------------------------------------------


CONFIG = ServeConfig(rlm_kwargs={"max_depth": 2, "environment": "local"})


def parse(**body) -> ChatCall:
    return parse_chat_request({"model": "rlm", **body}, CONFIG)


def test_context_is_the_last_user_message_and_the_question_the_system_message():
    call = parse(
        messages=[
            {"role": "system", "content": "Q?"},
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "..."},
            {"role": "user", "content": [{"type": "text", "text": "new "}, {"type": "text", "text": "data"}]},
        ]
    )  # fmt: skip
    assert (call.context, call.root_prompt) == ("new data", "Q?")
    assert parse(messages=[{"role": "user", "content": "only"}]).root_prompt is None
    explicit = parse(messages=[{"role": "user", "content": "data"}], question="Why?")
    assert explicit.root_prompt == "Why?"
    attached = parse(messages=[{"role": "user", "content": "Why?"}], context={"a": 1})
    assert (attached.context, attached.root_prompt) == ({"a": 1}, "Why?")
    assert parse(messages=[{"role": "user", "content": "x"}], max_tree_tokens=10).overrides == {
        "max_tokens": 10
    }


def test_a_client_that_hangs_up_cancels_its_run(server, lm_server):
    from suite_runs import our_runner_pids as runner_pids

    before = set(runner_pids())
    lm_server.set_script(["```repl\nimport time\ntime.sleep(60)\n```", ANSWER])
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=1.5)
    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="rlm", messages=[{"role": "user", "content": "x"}])
    deadline = time.monotonic() + 10
    while set(runner_pids()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(runner_pids()) - before, "the sandbox of the abandoned run is still alive"
    print(f"sandbox gone {time.perf_counter() - started:.2f}s after the request began")
    assert len(lm_server.requests) == 1


# ---- secrets and limits ---------------------------------------------------------------------------


def _start_serve(tmp_path: Path, args: list[str], env_extra: dict[str, str]) -> tuple[Any, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))}
    env.update(PYTHONUNBUFFERED="1", **env_extra)
    process = subprocess.Popen(
        [sys.executable, "-m", "rlm.serve", "--port", "0", *args],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = process.stderr.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        process.kill()
        raise AssertionError(f"rlm serve did not start: {line}{process.stderr.read()}")
    return process, match.group(1)


@pytest.mark.parametrize(
    ("lm_key_args", "lm_key_env"),
    [([], {"OPENAI_API_KEY": "the-lm-key"}), (["--lm-api-key", "the-lm-key"], {})],
    ids=["lm-key-from-env", "lm-key-from-flag"],
)
def test_the_client_key_is_never_sent_to_the_lm_provider(
    tmp_path, lm_server, lm_key_args, lm_key_env
):
    # The provider accepts only its own key: before the fix, --api-key went upstream (401).
    lm_server.api_key = "the-lm-key"
    lm_server.set_script([ANSWER])
    process, url = _start_serve(
        tmp_path,
        ["--api-key", "the-client-key", "--base-url", lm_server.base_url, "--model", "m",
         "--backend", "openai", *lm_key_args],
        lm_key_env,
    )  # fmt: skip
    try:
        client = openai.OpenAI(base_url=url, api_key="the-client-key", max_retries=0)
        reply = client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "x"}]
        )
        assert reply.choices[0].message.content == "the streamed answer, in chunks"
        with pytest.raises(openai.AuthenticationError):  # the LM key does not open the server
            openai.OpenAI(base_url=url, api_key="the-lm-key", max_retries=0).models.list()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert lm_server.requests, "the LM was never called"
    for request in lm_server.requests:
        assert request.headers.get("authorization") == "Bearer the-lm-key"
        assert "the-client-key" not in json.dumps(request.headers)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("field", ["max_budget", "max_timeout", "max_tree_tokens", "max_depth"])
def test_non_finite_limits_are_refused_before_anything_runs(server, lm_server, field, raw):
    lm_server.set_script([ANSWER])
    # Python's json module writes these constants; standard JSON has no such values.
    body = json.dumps(
        {"model": "rlm", "messages": [{"role": "user", "content": "x"}], field: float(raw)}
    )
    assert raw in body
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert lm_server.requests == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_limits_are_refused_in_a_parsed_body(value):
    with pytest.raises(APIError, match="finite"):
        parse(messages=[{"role": "user", "content": "x"}], max_budget=value)


@pytest.mark.parametrize("flag", ["--max-budget", "--max-timeout"])
def test_rlm_serve_refuses_a_nan_limit_at_start(tmp_path, lm_server, flag):
    result = subprocess.run(
        [sys.executable, "-m", "rlm.serve", "--port", "0", "--base-url", lm_server.base_url,
         "--model", "m", "--backend", "openai", flag, "nan"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("RLM_")},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "finite number" in result.stderr


def test_a_body_over_the_limit_is_413_before_anything_runs(lm_server):
    lm_server.set_script([ANSWER])
    config = ServeConfig(
        rlm_kwargs={"backend_kwargs": {"model_name": "m", "base_url": lm_server.base_url,
                                       "api_key": "k"}},
        max_body_mb=1,
    )  # fmt: skip
    with RLMServer(config) as running:
        response = httpx.post(
            f"{running.base_url}/chat/completions",
            json={"model": "rlm", "messages": [{"role": "user", "content": "x" * 2_000_000}]},
            timeout=30,
        )
        assert response.status_code == 413
        assert "1 MiB" in response.json()["error"]["message"]
        small = httpx.post(
            f"{running.base_url}/chat/completions",
            json={"model": "rlm", "messages": [{"role": "user", "content": "x" * 500_000}]},
            timeout=60,
        )
        assert small.status_code == 200, small.text
    assert len(lm_server.requests) == 1
