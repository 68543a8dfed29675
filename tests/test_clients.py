"""LM clients: the real provider SDKs against ScriptedLMServer, plus the registry."""

from __future__ import annotations

import asyncio
import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from rlm.broker.clients import BACKENDS, create_client, register_backend
from rlm.broker.clients.anthropic import AnthropicClient, to_anthropic_messages
from rlm.broker.clients.base import (
    MAX_RETRY_AFTER,
    LMClient,
    LMResponse,
    LMUsage,
    parse_retry_after,
)
from rlm.broker.clients.gemini import GeminiClient, to_gemini_contents
from rlm.broker.clients.openai_compat import OpenAIClient, OpenRouterClient
from rlm.errors import ConfigurationError, LMAuthenticationError, LMError
from rlm.testing import RecordedRequest, Reply, ScriptedLMServer

T = TypeVar("T")


def run(factory: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(factory())  # type: ignore[arg-type]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def openai_client(server: ScriptedLMServer, **kwargs: Any) -> OpenAIClient:
    kwargs.setdefault("initial_backoff", 0.01)
    return OpenAIClient("test-model", base_url=server.base_url, **kwargs)


async def complete(client: LMClient, messages: list[dict[str, Any]], **sampling: Any) -> LMResponse:
    try:
        return await client.acomplete(messages, **sampling)
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- OpenAI-compatible ---------------------------------------------------------------------------


class CannedServer:
    """A loopback HTTP server that answers every POST with the next canned (status, body) reply,
    the last one repeated: for bodies ScriptedLMServer never sends (malformed JSON, odd usage)."""

    def __init__(self, *replies: tuple[int, bytes | dict[str, Any]]) -> None:
        self.replies = [
            (status, body if isinstance(body, bytes) else json.dumps(body).encode())
            for status, body in replies
        ]
        self.posts = 0
        self.paths: list[str] = []
        canned = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                status, body = canned.replies[min(canned.posts, len(canned.replies) - 1)]
                canned.posts += 1
                canned.paths.append(self.path)
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> CannedServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def chat_body(**fields: Any) -> dict[str, Any]:
    """An OpenAI chat completion body; ``fields`` replace its top-level keys."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello"},
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }
    body.update(fields)
    return body


def canned_call(server: CannedServer, **kwargs: Any) -> LMResponse:
    kwargs.setdefault("initial_backoff", 0.0)
    client = OpenAIClient("asked-model", base_url=server.base_url, **kwargs)
    return run(lambda: complete(client, user("x")))


def test_the_shared_request_options_are_never_changed_by_a_call() -> None:
    """Every call copies one prepared set of options: a new base_url, or the deployment path
    Azure puts in front of the URL, must not leak into the next call."""
    with ScriptedLMServer(["one", "two"]) as first, ScriptedLMServer(["three"]) as second:

        async def calls() -> list[str]:
            client = openai_client(first)
            try:
                texts = [(await client.acomplete(user("x"))).text for _ in range(2)]
                client._client.base_url = second.base_url
                return [*texts, (await client.acomplete(user("x"))).text]
            finally:
                await client.aclose()

        assert run(calls) == ["one", "two", "three"]
        assert [len(first.requests), len(second.requests)] == [2, 1]

    with CannedServer((200, chat_body())) as server:
        endpoint = server.base_url.removesuffix("/v1")
        for model in ("gpt-x", "gpt-y", "gpt-x"):
            kwargs = {"model_name": model, "api_key": "k", "azure_endpoint": endpoint}
            kwargs["api_version"] = "2024-02-01"
            azure = create_client("azure_openai", kwargs)
            assert run(lambda: complete(azure, user("x"))).text == "hello"  # noqa: B023
        plain = OpenAIClient("plain", base_url=server.base_url)
        assert run(lambda: complete(plain, user("x"))).text == "hello"
    assert server.paths == [
        "/openai/deployments/gpt-x/chat/completions?api-version=2024-02-01",
        "/openai/deployments/gpt-y/chat/completions?api-version=2024-02-01",
        "/openai/deployments/gpt-x/chat/completions?api-version=2024-02-01",
        "/v1/chat/completions",
    ]


def test_text_model_usage_and_cost_are_read_from_the_body() -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "cost": 0.25,
        "prompt_tokens_details": {"cached_tokens": 8},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    with CannedServer((200, chat_body(usage=usage))) as server:
        response = canned_call(server)
    assert response == LMResponse("hello", "served-model", LMUsage(12, 5, 0.25))


def test_integer_cost_counts_and_a_non_numeric_one_is_ignored() -> None:
    with CannedServer((200, chat_body(usage={"prompt_tokens": 1, "cost": 2}))) as server:
        assert canned_call(server).usage == LMUsage(1, 0, 2.0)
    with CannedServer((200, chat_body(usage={"completion_tokens": 3, "cost": "0.1"}))) as server:
        assert canned_call(server).usage == LMUsage(0, 3, None)


def test_null_content_and_missing_model_and_usage() -> None:
    """A reply of tool calls only has content null; no model or usage falls back to nothing."""
    choice = {"index": 0, "finish_reason": "tool_calls", "message": {"content": None}}
    body = chat_body(choices=[choice])
    del body["model"], body["usage"]
    with CannedServer((200, body)) as server:
        response = canned_call(server)
    assert response == LMResponse("", "asked-model", LMUsage())


def test_negative_or_garbage_token_counts_count_as_zero() -> None:
    usage = {"prompt_tokens": -40, "completion_tokens": "many", "cost": -1.5}
    with CannedServer((200, chat_body(usage=usage))) as server:
        response = canned_call(server)
    assert response.usage == LMUsage(0, 0, None)


def test_out_of_range_numbers_in_usage_do_not_break_the_call() -> None:
    huge = 10**400  # valid JSON; float() of it overflows
    body = json.dumps(
        chat_body(usage={"prompt_tokens": 3, "completion_tokens": "1e999", "cost": huge})
    )
    with CannedServer((200, body.encode())) as server:
        response = canned_call(server)
    assert response.usage == LMUsage(3, 0, None)


def test_a_long_error_object_is_cut_short_in_the_message() -> None:
    error = {"error": {"message": "upstream failed " + "x" * 5000}}
    with CannedServer((200, error)) as server, pytest.raises(LMError) as info:
        canned_call(server, max_retries=0)
    assert "upstream failed" in str(info.value)
    assert "x" * 400 not in str(info.value)


def test_a_200_with_an_error_object_and_no_choices_is_retried_then_reported() -> None:
    error = {"error": {"message": "upstream provider overloaded", "code": 502}}
    with CannedServer((200, error), (200, error), (200, chat_body())) as server:
        assert canned_call(server).text == "hello"
        assert server.posts == 3
    with CannedServer((200, error)) as server, pytest.raises(LMError) as info:
        canned_call(server, max_retries=1)
    assert server.posts == 2
    assert "no choices" in str(info.value)
    assert "upstream provider overloaded" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b"<html>gateway says hello</html>",
        b"[1, 2]",
        json.dumps(chat_body(choices=["not an object"])).encode(),
        json.dumps(chat_body(choices=[{"message": "not an object"}])).encode(),
        json.dumps(chat_body(choices=[{"message": {"content": ["a", "list"]}}])).encode(),
    ],
)
def test_a_malformed_200_body_is_a_permanent_lm_error(body: bytes) -> None:
    with CannedServer((200, body)) as server, pytest.raises(LMError) as info:
        canned_call(server)
    assert server.posts == 1  # not retried: the same request would get the same answer
    assert info.value.status is None
    assert "malformed" in str(info.value)


def test_error_bodies_give_their_message_and_status() -> None:
    openai_error = {"error": {"message": "max_tokens is too large", "type": "invalid_request"}}
    with CannedServer((400, openai_error)) as server, pytest.raises(LMError) as info:
        canned_call(server)
    assert info.value.status == 400
    assert "max_tokens is too large" in str(info.value)
    with CannedServer((502, b"Bad gateway"), (200, chat_body())) as server:
        assert canned_call(server).text == "hello"  # a 5xx with a text body is retried
        assert server.posts == 2
    with CannedServer((429, b"slow down")) as server, pytest.raises(LMError) as info:
        canned_call(server, max_retries=0)
    assert info.value.status == 429
    assert "slow down" in str(info.value)
    assert "Rate limited" in str(info.value)


def test_success_returns_text_model_and_this_calls_usage() -> None:
    with ScriptedLMServer(["the answer"]) as server:
        client = openai_client(server)
        response = run(lambda: complete(client, user("what is it?")))
    assert response.text == "the answer"
    assert response.model == "test-model"
    record = server.requests[0]
    assert record.usage is not None
    assert response.usage == LMUsage(record.usage["input_tokens"], record.usage["output_tokens"])
    assert response.usage.cost is None


def test_sampling_defaults_merge_with_per_call_arguments_and_headers_are_sent() -> None:
    with ScriptedLMServer(["ok"]) as server:
        client = openai_client(
            server,
            sampling={"temperature": 0.1, "max_tokens": 10},
            extra_headers={"x-trace": "abc"},
        )
        run(lambda: complete(client, user("x"), max_tokens=99))
    body = server.requests[0].body
    assert body["temperature"] == 0.1
    assert body["max_tokens"] == 99
    assert server.requests[0].headers["x-trace"] == "abc"


def test_two_503s_are_retried() -> None:
    with ScriptedLMServer(["finally"], fail_first=2, fail_status=503) as server:
        response = run(lambda: complete(openai_client(server), user("x")))
    assert response.text == "finally"
    assert len(server.requests) == 3
    assert [r.status for r in server.requests] == [503, 503, 200]


def test_429_retry_after_is_honoured() -> None:
    script = [Reply("slow down", status=429, headers={"retry-after": "0.4"}), "ok"]
    with ScriptedLMServer(script) as server:
        # initial_backoff=0: any wait between the two attempts comes from retry-after
        client = openai_client(server, initial_backoff=0.0)
        response = run(lambda: complete(client, user("x")))
    assert response.text == "ok"
    first, second = server.requests
    assert second.started - first.finished >= 0.35


def test_400_is_not_retried_and_carries_the_server_message() -> None:
    with (
        ScriptedLMServer(
            [Reply("context too long for this model", status=400), "unused"]
        ) as server,
        pytest.raises(LMError) as info,
    ):
        run(lambda: complete(openai_client(server), user("x")))
    error = info.value
    assert not isinstance(error, LMAuthenticationError)
    assert error.status == 400
    assert error.model == "test-model"
    assert "context too long for this model" in str(error)
    assert "HTTP 400" in str(error)
    assert len(server.requests) == 1


def test_404_is_not_retried_and_points_at_model_name() -> None:
    with (
        ScriptedLMServer([Reply("model not found", status=404)]) as server,
        pytest.raises(LMError, match="model_name") as info,
    ):
        run(lambda: complete(openai_client(server), user("x")))
    assert info.value.status == 404
    assert len(server.requests) == 1


def test_401_raises_authentication_error_naming_the_key_setting() -> None:
    with ScriptedLMServer(["unused"], api_key="the-right-key") as server:
        client = openai_client(server, api_key="wrong")
        with pytest.raises(LMAuthenticationError) as info:
            run(lambda: complete(client, user("x")))
    message = str(info.value)
    assert "OPENAI_API_KEY" in message
    assert "backend_kwargs['api_key']" in message
    assert info.value.status == 401
    assert len(server.requests) == 1


def test_persistent_5xx_fails_after_max_retries() -> None:
    with (
        ScriptedLMServer(["unused"], fail_first=100, fail_status=502) as server,
        pytest.raises(LMError) as info,
    ):
        run(lambda: complete(openai_client(server, max_retries=2), user("x")))
    assert len(server.requests) == 3
    assert info.value.status == 502
    assert "after 3 attempts" in str(info.value)
    assert "injected failure" in str(info.value)


def test_connection_refused_mentions_base_url() -> None:
    port = free_port()
    client = OpenAIClient(
        "m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, initial_backoff=0
    )
    with pytest.raises(LMError) as info:
        run(lambda: complete(client, user("x")))
    assert "base_url" in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert info.value.status is None


def test_concurrent_calls_each_get_their_own_usage() -> None:
    def script(request: RecordedRequest) -> str:
        n = int(request.prompt.split()[-1])
        return "w" * (n * 37 % 500 + 1)

    async def many() -> list[LMResponse]:
        client = OpenAIClient("m", base_url=server.base_url)
        prompts = [("x" * (i * 11)) + f" {i}" for i in range(64)]
        try:
            return await asyncio.gather(*(client.acomplete(user(p)) for p in prompts))
        finally:
            await client.aclose()

    with ScriptedLMServer(script, latency=0.05) as server:
        responses = run(many)
    assert server.max_in_flight > 1
    by_prompt = {r.prompt: r for r in server.requests}
    assert len(by_prompt) == 64
    for i, response in enumerate(responses):
        record = by_prompt[("x" * (i * 11)) + f" {i}"]
        assert record.reply is not None and record.usage is not None
        assert response.text == record.reply.text
        assert response.usage.input_tokens == record.usage["input_tokens"]
        assert response.usage.output_tokens == record.usage["output_tokens"]
    assert len({r.usage for r in responses}) > 32  # distinct, not one shared "last usage"


def test_reported_cost_is_passed_through() -> None:
    with ScriptedLMServer([Reply("paid", cost=0.0123)]) as server:
        client = openai_client(server, price_per_million=(100.0, 100.0))
        response = run(lambda: complete(client, user("x")))
    assert response.usage.cost == pytest.approx(0.0123)
    assert client.cost_of(response) == pytest.approx(0.0123)  # reported beats the override


def test_price_per_million_prices_an_unknown_model() -> None:
    with ScriptedLMServer([Reply("x", input_tokens=1_000_000, output_tokens=500_000)]) as server:
        client = openai_client(server, price_per_million=(2.0, 8.0))
        response = run(lambda: complete(client, user("x")))
    assert client.cost_of(response) == pytest.approx(2.0 + 4.0)


def test_openrouter_asks_for_usage_and_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENROUTER_API_KEY"):
        OpenRouterClient("openai/gpt-4o")
    with ScriptedLMServer([Reply("routed", cost=0.5)]) as server:
        client = OpenRouterClient("openai/gpt-4o", base_url=server.base_url)  # local: no key
        response = run(lambda: complete(client, user("x")))
    assert server.requests[0].body["usage"] == {"include": True}
    assert client.reports_cost and not OpenAIClient.reports_cost
    assert response.usage.cost == 0.5


def test_key_and_base_url_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AI_GATEWAY_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIClient("gpt-4o")
    with pytest.raises(ConfigurationError, match="AI_GATEWAY_API_KEY"):
        create_client("vercel", {"model_name": "openai/gpt-4o"})
    with pytest.raises(ConfigurationError, match="base_url"):
        create_client("vllm", {"model_name": "llama"})
    assert OpenAIClient("m", base_url="http://localhost:8000/v1").model_name == "m"
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    assert OpenAIClient("gpt-4o")._client.api_key == "from-env"
    ollama = create_client("ollama", {"model_name": "llama3"})
    assert str(ollama._client.base_url).startswith("http://localhost:11434/v1")  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="model_name"):
        OpenAIClient("", base_url="http://localhost/v1")


# -- retry policy --------------------------------------------------------------------------------


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "nonsense"}) is None
    assert parse_retry_after({}) is None
    http_date = parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert http_date == 0.0  # in the past


def test_backoff_is_capped_and_jittered() -> None:
    client = OpenAIClient("m", base_url="http://localhost/v1", initial_backoff=1.0, max_backoff=5)
    assert client._backoff(0, retry_after=10_000) == MAX_RETRY_AFTER
    assert client._backoff(3, retry_after=0.0) == 0.0
    samples = [client._backoff(10, None) for _ in range(200)]
    assert all(0 <= s <= 5 for s in samples)
    assert len(set(samples)) > 100  # full jitter, not a fixed delay


# -- registry ------------------------------------------------------------------------------------


def test_importing_the_package_imports_no_provider_sdk() -> None:
    code = (
        "import sys, rlm.broker.clients, rlm.broker.pricing\n"
        "bad = [m for m in ('openai', 'anthropic', 'google.genai') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=_subprocess_env())


def _subprocess_env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


def test_every_registered_backend_resolves() -> None:
    import importlib

    for name, (target, _extra) in BACKENDS.items():
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        assert issubclass(cls, LMClient)
        assert cls.backend == name


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as info:
        create_client("nope", {"model_name": "m"})
    for name in ("openai", "anthropic", "gemini", "vllm"):
        assert name in str(info.value)


def test_create_client_rejects_unknown_and_missing_kwargs() -> None:
    with pytest.raises(ConfigurationError, match="temprature"):
        create_client("ollama", {"model_name": "m", "temprature": 0.5})
    with pytest.raises(ConfigurationError, match="model_name"):
        create_client("ollama", {})


def test_create_client_end_to_end_with_all_common_kwargs() -> None:
    with ScriptedLMServer(["via registry"], fail_first=1) as server:
        client = create_client(
            "vllm",
            {
                "model_name": "served-model",
                "base_url": server.base_url,
                "timeout": 10,
                "max_retries": 1,
                "initial_backoff": 0.01,
                "sampling": {"temperature": 0},
                "price_per_million": (1, 2),
            },
        )
        response = run(lambda: complete(client, user("x")))
    assert response.text == "via registry"
    assert client.price_per_million == (1.0, 2.0)
    assert server.requests[-1].body["temperature"] == 0


def test_register_backend_and_missing_extra_hint() -> None:
    register_backend("broken-test-backend", "rlm_no_such_module:Client", "imaginary")
    try:
        with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[imaginary\]'"):
            create_client("broken-test-backend", {"model_name": "m"})
    finally:
        BACKENDS.pop("broken-test-backend")


# -- Anthropic -----------------------------------------------------------------------------------


def test_anthropic_message_conversion() -> None:
    system, turns = to_anthropic_messages(
        [
            {"role": "system", "content": "rule one"},
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c"},
            {"role": "system", "content": "rule two"},
            {"role": "user", "content": "d"},
        ]
    )
    assert system == "rule one\n\nrule two"
    assert turns == [
        {"role": "user", "content": "a\n\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "user", "content": "d"},
    ]
    assert to_anthropic_messages(user("x")) == (None, user("x"))


def test_anthropic_round_trip_retries_overload() -> None:
    with ScriptedLMServer([Reply("busy", status=529), "claude says hi"]) as server:
        client = AnthropicClient(
            "claude-test", api_key="k", base_url=server.root_url, initial_backoff=0.01
        )
        messages = [{"role": "system", "content": "be terse"}, *user("hello")]
        response = run(lambda: complete(client, messages, temperature=0.2, stop="END"))
    assert response.text == "claude says hi"
    assert [r.status for r in server.requests] == [529, 200]
    record = server.requests[-1]
    assert record.api == "anthropic"
    assert record.body["system"] == "be terse"
    assert record.body["max_tokens"] == 4096
    assert record.body["stop_sequences"] == ["END"]
    assert record.body["temperature"] == 0.2  # not declared by this SDK: sent via extra_body
    assert record.body["messages"] == user("hello")
    assert record.usage is not None
    assert response.usage == LMUsage(record.usage["input_tokens"], record.usage["output_tokens"])


def test_anthropic_auth_error_names_its_env_var() -> None:
    with ScriptedLMServer(["x"], api_key="right") as server:
        client = AnthropicClient("claude-test", api_key="wrong", base_url=server.root_url)
        with pytest.raises(LMAuthenticationError, match="ANTHROPIC_API_KEY"):
            run(lambda: complete(client, user("x")))


def test_anthropic_missing_key_and_missing_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicClient("claude-sonnet-4-5")
    monkeypatch.setitem(sys.modules, "anthropic", None)  # makes `import anthropic` fail
    with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[anthropic\]'"):
        AnthropicClient("claude-sonnet-4-5", api_key="k")


# -- Gemini --------------------------------------------------------------------------------------


def test_gemini_message_conversion() -> None:
    system, contents = to_gemini_contents(
        [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "assistant", "content": "c"},
            {"role": "user", "content": "d"},
        ]
    )
    assert system == "sys"
    assert contents == [
        {"role": "user", "parts": [{"text": "a"}]},
        {"role": "model", "parts": [{"text": "b"}, {"text": "c"}]},
        {"role": "user", "parts": [{"text": "d"}]},
    ]
    with pytest.raises(ConfigurationError, match="tool"):
        to_gemini_contents([{"role": "tool", "content": "x"}])


def test_gemini_round_trip_retries_and_maps_sampling() -> None:
    with ScriptedLMServer([Reply("quota", status=429), "gemini says hi"]) as server:
        client = GeminiClient(
            "gemini-2.5-flash", api_key="k", base_url=server.root_url, initial_backoff=0.01
        )
        messages = [{"role": "system", "content": "be terse"}, *user("hello")]
        response = run(lambda: complete(client, messages, max_tokens=64, temperature=0.5))
    assert response.text == "gemini says hi"
    assert [r.status for r in server.requests] == [429, 200]
    record = server.requests[-1]
    assert record.api == "gemini"
    assert record.model == "gemini-2.5-flash"
    assert record.messages == [{"role": "system", "content": "be terse"}, *user("hello")]
    assert record.body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.5}
    assert record.usage is not None
    assert response.usage == LMUsage(record.usage["input_tokens"], record.usage["output_tokens"])


def test_gemini_400_is_not_retried() -> None:
    with ScriptedLMServer([Reply("bad schema", status=400), "unused"]) as server:
        client = GeminiClient("gemini-2.5-pro", api_key="k", base_url=server.root_url)
        with pytest.raises(LMError, match="bad schema") as info:
            run(lambda: complete(client, user("x")))
    assert info.value.status == 400
    assert len(server.requests) == 1


def test_gemini_missing_key_and_missing_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="GEMINI_API_KEY"):
        GeminiClient("gemini-2.5-flash")
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google-env")
    assert GeminiClient("gemini-2.5-flash").model_name == "gemini-2.5-flash"
    monkeypatch.setitem(sys.modules, "google.genai", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[gemini\]'"):
        GeminiClient("gemini-2.5-flash", api_key="k")


def test_timeouts_are_transient_and_retried() -> None:
    script = [Reply("too slow", delay=1.0), "quick"]
    with ScriptedLMServer(script) as server:
        client = openai_client(server, timeout=0.3, max_retries=1)
        response = run(lambda: complete(client, user("x")))
    assert response.text == "quick"  # the slow reply was given up on, not waited for
    assert len(server.requests) == 2


def test_unknown_names_suggest_the_closest_one() -> None:
    from rlm.environments import environment_class

    with pytest.raises(ConfigurationError, match="did you mean 'docker'"):
        environment_class("dockr")
    with pytest.raises(ConfigurationError, match="did you mean 'anthropic'"):
        create_client("antropic", {"model_name": "m"})


def test_registered_names_never_scan_installed_distributions(monkeypatch) -> None:
    """Each sandbox of a fan-out looks its environment up: a registered name is a dict hit."""
    import rlm.registry as registry

    registry._plugins.cache_clear()

    def scan(**_: object) -> list:
        raise AssertionError("entry points were scanned for a registered name")

    monkeypatch.setattr(registry, "entry_points", scan)
    from rlm.environments import environment_class

    assert environment_class("local").__name__ == "LocalEnvironment"
    registry._plugins.cache_clear()
