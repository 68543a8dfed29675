"""ScriptedLMServer, driven by the real openai client (sync and async) and raw HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time

import openai
import pytest

from rlm.testing import RecordedRequest, Reply, ScriptedLMServer, estimate_tokens


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def sync_client(server: ScriptedLMServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def async_client(server: ScriptedLMServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)


def test_sequence_script_replies_in_order_and_records_requests() -> None:
    with ScriptedLMServer(["first", Reply("second")]) as server:
        client = sync_client(server)
        one = client.chat.completions.create(
            model="scripted-model",
            messages=[{"role": "system", "content": "be brief"}, *user("question one")],
            temperature=0.3,
        )
        two = client.chat.completions.create(model="scripted-model", messages=user("question two"))

    assert one.object == "chat.completion"
    assert one.model == "scripted-model"
    assert one.choices[0].message.role == "assistant"
    assert one.choices[0].message.content == "first"
    assert one.choices[0].finish_reason == "stop"
    assert two.choices[0].message.content == "second"
    assert [r.prompt for r in server.requests] == ["question one", "question two"]
    first = server.requests[0]
    assert first.model == "scripted-model"
    assert first.messages[0] == {"role": "system", "content": "be brief"}
    assert first.body["temperature"] == 0.3
    assert first.status == 200
    assert first.started <= first.finished


def test_exhausted_script_answers_500_naming_the_prompt() -> None:
    with ScriptedLMServer(["only one"]) as server:
        client = sync_client(server)
        client.chat.completions.create(model="m", messages=user("a"))
        with pytest.raises(openai.InternalServerError) as info:
            client.chat.completions.create(model="m", messages=user("the unanswered one"))
    assert "script exhausted" in str(info.value)
    assert "the unanswered one" in str(info.value)
    assert server.usage_total()["calls"] == 1


def test_prompt_joins_text_parts_of_the_last_user_message() -> None:
    request = RecordedRequest(
        model="m",
        messages=[
            {"role": "user", "content": "old"},
            {"role": "assistant", "content": "reply"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            },
        ],
        body={},
        started=0.0,
    )
    assert request.prompt == "ab"


def test_rule_script_matches_substrings_and_predicates() -> None:
    script = ScriptedLMServer.rule_script(
        [
            ("weather", "sunny"),
            (lambda r: r.model == "special", Reply("special reply")),
            ("echo:", lambda r: r.prompt.upper()),
        ],
        default="fallback",
    )
    with ScriptedLMServer(script) as server:
        client = sync_client(server)

        def ask(prompt: str, model: str = "m") -> str | None:
            reply = client.chat.completions.create(model=model, messages=user(prompt))
            return reply.choices[0].message.content

        assert ask("what is the weather?") == "sunny"
        assert ask("anything", model="special") == "special reply"
        assert ask("echo: hi") == "ECHO: HI"
        assert ask("unmatched") == "fallback"


def test_rule_script_without_default_fails_loudly() -> None:
    script = ScriptedLMServer.rule_script([("known", "yes")])
    with (
        ScriptedLMServer(script) as server,
        pytest.raises(openai.InternalServerError, match="no rule matched"),
    ):
        sync_client(server).chat.completions.create(model="m", messages=user("other"))


def test_a_raising_script_becomes_a_500_with_the_traceback() -> None:
    def script(request: RecordedRequest) -> str:
        raise RuntimeError("boom in script")

    with (
        ScriptedLMServer(script) as server,
        pytest.raises(openai.InternalServerError, match="boom in script"),
    ):
        sync_client(server).chat.completions.create(model="m", messages=user("x"))


async def _fire(server: ScriptedLMServer, prompts: list[str]) -> tuple[list, float]:
    """Send every prompt at once from one async client; return the replies and the wall time."""
    client = async_client(server)
    started = time.perf_counter()
    replies = await asyncio.gather(
        *(client.chat.completions.create(model="m", messages=user(p)) for p in prompts)
    )
    elapsed = time.perf_counter() - started
    await client.close()
    return replies, elapsed


def test_concurrent_requests_are_served_in_parallel() -> None:
    with ScriptedLMServer(lambda r: f"echo {r.prompt}", latency=0.2) as server:
        replies, _ = asyncio.run(_fire(server, [f"p{i}" for i in range(32)]))
    assert [r.choices[0].message.content for r in replies] == [f"echo p{i}" for i in range(32)]
    assert server.max_in_flight >= 32  # all 32 were being answered at the same time


def test_256_concurrent_requests() -> None:
    with ScriptedLMServer(lambda r: r.prompt, latency=0.5) as server:
        replies, _ = asyncio.run(_fire(server, [str(i) for i in range(256)]))
    assert sorted(int(r.choices[0].message.content or "") for r in replies) == list(range(256))
    assert server.max_in_flight >= 200


def test_reply_delay_overrides_latency() -> None:
    with ScriptedLMServer([Reply("fast", delay=0.0), "slow"], latency=0.3) as server:
        client = sync_client(server)
        client.chat.completions.create(model="m", messages=user("a"))
        client.chat.completions.create(model="m", messages=user("b"))
    fast, slow = server.requests
    assert fast.finished - fast.started < 0.3  # did not wait the latency it overrides
    assert slow.finished - slow.started >= 0.3


def test_fail_first_injects_errors_without_consuming_the_script() -> None:
    with ScriptedLMServer(["after failures"], fail_first=2, fail_status=503) as server:
        client = sync_client(server)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as info:
                client.chat.completions.create(model="m", messages=user("x"))
            assert info.value.status_code == 503
            assert info.value.body["type"] == "server_error"  # type: ignore[index]
        reply = client.chat.completions.create(model="m", messages=user("x"))
    assert reply.choices[0].message.content == "after failures"
    assert [r.status for r in server.requests] == [503, 503, 200]


def test_error_reply_has_openai_error_body_and_headers() -> None:
    script = [Reply("slow down", status=429, headers={"retry-after": "7"})]
    with ScriptedLMServer(script) as server, pytest.raises(openai.RateLimitError) as info:
        sync_client(server).chat.completions.create(model="m", messages=user("x"))
    error = info.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "7"
    assert error.body == {"message": "slow down", "type": "rate_limit_error", "code": 429}
    assert server.usage_total() == {"calls": 0, "input_tokens": 0, "output_tokens": 0}


def test_api_key_is_enforced_when_set() -> None:
    with ScriptedLMServer(["ok"], api_key="secret") as server:
        with pytest.raises(openai.AuthenticationError):
            sync_client(server).chat.completions.create(model="m", messages=user("x"))
        good = openai.OpenAI(base_url=server.base_url, api_key="secret", max_retries=0)
        reply = good.chat.completions.create(model="m", messages=user("x"))
    assert reply.choices[0].message.content == "ok"


def test_usage_total_equals_what_the_clients_saw() -> None:
    texts = ["a" * n for n in (1, 9, 40, 123, 1000)]
    script = [Reply(t) for t in texts] + [Reply("costly", cost=0.25), Reply("no", status=500)]
    with ScriptedLMServer(script) as server:
        seen = asyncio.run(_ask_all(server, len(script) - 1))
    assert server.usage_total() == {
        "calls": len(seen),
        "input_tokens": sum(u.prompt_tokens for u in seen),
        "output_tokens": sum(u.completion_tokens for u in seen),
    }
    assert seen[3].completion_tokens == estimate_tokens("a" * 123)
    assert seen[-1].model_extra == {"cost": 0.25}
    assert seen[0].model_extra == {}


async def _ask_all(server: ScriptedLMServer, n: int) -> list:
    """Make n successful calls with growing prompts, then one that fails; return the usages."""
    client = async_client(server)
    seen = []
    for i in range(n):
        reply = await client.chat.completions.create(
            model="m",
            messages=[{"role": "system", "content": "s" * i * 7}, *user("q" * i * 13)],
        )
        assert reply.usage is not None
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
        seen.append(reply.usage)
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="m", messages=user("x"))
    await client.close()
    return seen


def test_token_overrides_are_reported() -> None:
    with ScriptedLMServer([Reply("x", input_tokens=1000, output_tokens=50)]) as server:
        reply = sync_client(server).chat.completions.create(model="m", messages=user("x"))
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (1000, 50)
    assert server.usage_total()["input_tokens"] == 1000


def test_a_client_that_hung_up_is_not_counted_as_served() -> None:
    with ScriptedLMServer([Reply("too late", delay=0.6), "in time"]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="t", max_retries=0, timeout=0.2)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=user("x"))
        deadline = time.monotonic() + 5
        while not server.requests[0].finished and time.monotonic() < deadline:
            time.sleep(0.02)
        reply = client.chat.completions.create(model="m", messages=user("y"))
    assert reply.choices[0].message.content == "in time"
    assert server.requests[0].status == 499
    assert server.usage_total()["calls"] == 1


def test_set_script_and_reset() -> None:
    with ScriptedLMServer(["one"], fail_first=1) as server:
        client = sync_client(server)
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=user("x"))
        server.set_script(["two", "three"])
        assert client.chat.completions.create(model="m", messages=user("x")).choices[
            0
        ].message.content == ("two")
        server.reset()
        assert server.requests == []
        assert server.usage_total()["calls"] == 0
        with pytest.raises(openai.InternalServerError):  # fail_first counts again after reset
            client.chat.completions.create(model="m", messages=user("x"))
        reply = client.chat.completions.create(model="m", messages=user("x"))
    assert reply.choices[0].message.content == "two"  # reset rewinds the sequence


def test_models_endpoint() -> None:
    with ScriptedLMServer(["x"]) as server:
        client = sync_client(server)
        client.chat.completions.create(model="seen-model", messages=user("x"))
        ids = [m.id for m in client.models.list()]
    assert "seen-model" in ids
    assert "scripted" in ids


def _raw_post(server: ScriptedLMServer, path: str, body: bytes) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("POST", path, body=body, headers={"content-type": "application/json"})
    response = connection.getresponse()
    payload = json.loads(response.read())
    connection.close()
    return response.status, payload


def test_bad_json_is_a_400_with_an_error_body() -> None:
    with ScriptedLMServer(["unused"]) as server:
        status, payload = _raw_post(server, "/v1/chat/completions", b"{not json")
        assert status == 400
        assert payload["error"]["type"] == "invalid_request_error"
        assert "could not parse" in payload["error"]["message"]
        status, payload = _raw_post(server, "/v1/chat/completions", b'{"model": "m"}')
        assert status == 400
        assert "messages" in payload["error"]["message"]
        status, payload = _raw_post(server, "/v1/nothing-here", b"{}")
        assert status == 404
    assert server.requests == []


def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    with ScriptedLMServer(["a", "b", "c"]) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        body = json.dumps({"model": "m", "messages": user("x")})
        contents = []
        for _ in range(3):
            connection.request("POST", "/v1/chat/completions", body=body)
            response = connection.getresponse()
            assert response.getheader("connection") != "close"
            contents.append(json.loads(response.read())["choices"][0]["message"]["content"])
        connection.close()
    assert contents == ["a", "b", "c"]


def test_stop_frees_the_port_and_base_url_needs_a_started_server() -> None:
    server = ScriptedLMServer(["x"])
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.base_url
    server.start()
    port = server.port
    sync_client(server).chat.completions.create(model="m", messages=user("x"))
    server.stop()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()


def test_cli_serves_a_fixed_reply() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    process = subprocess.Popen(
        [sys.executable, "-m", "rlm.testing.lm_server", "--port", "0", "--reply", "from cli"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        client = openai.OpenAI(base_url=base_url, api_key="test", max_retries=0, timeout=5)
        reply = client.chat.completions.create(model="m", messages=user("x"))
        assert reply.choices[0].message.content == "from cli"
    finally:
        process.terminate()
        process.wait(timeout=10)
