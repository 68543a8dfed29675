"""``rlm.clients``: the reference package's client API, driven against ScriptedLMServer."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from rlm.broker.clients import create_client
from rlm.broker.loop import run_sync
from rlm.clients import (
    DEFAULT_TIMEOUT,
    AnthropicClient,
    AzureOpenAIClient,
    BaseLM,
    BrokerLM,
    GeminiClient,
    OpenAIClient,
    PortkeyClient,
    get_client,
)
from rlm.errors import ConfigurationError, LMAuthenticationError
from rlm.testing import RecordedRequest, Reply, ScriptedLMServer
from rlm.types import ModelUsageSummary, UsageSummary

CONVERSATION = [
    {"role": "system", "content": "be terse"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]


@pytest.fixture
def clients() -> Iterator[list[BaseLM]]:
    """Clients made by a test; closed after it."""
    made: list[BaseLM] = []
    yield made
    for client in made:
        client.close()


def kwargs_for(backend: str, server: ScriptedLMServer) -> dict[str, Any]:
    """backend_kwargs pointing ``backend`` at the scripted server."""
    root = {"anthropic", "gemini"}
    return {
        "model_name": f"{backend}-model",
        "api_key": "test-key",
        "base_url": server.root_url if backend in root else server.base_url,
        "max_retries": 0,
    }


def usage_of(record: RecordedRequest) -> tuple[int, int]:
    assert record.usage is not None, f"request answered {record.status}"
    return record.usage["input_tokens"], record.usage["output_tokens"]


# -- get_client ----------------------------------------------------------------------------------

WIRE_API = {"anthropic": "anthropic", "gemini": "gemini"}


@pytest.mark.parametrize(
    ("backend", "cls"),
    [
        ("openai", OpenAIClient),
        ("vllm", OpenAIClient),
        ("openrouter", OpenAIClient),
        ("vercel", OpenAIClient),
        ("portkey", PortkeyClient),
        ("anthropic", AnthropicClient),
        ("gemini", GeminiClient),
        ("ollama", BrokerLM),
        ("lmstudio", BrokerLM),
    ],
)
def test_get_client_builds_each_backend_and_completes(
    backend: str, cls: type, lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script([Reply(f"hello from {backend}", input_tokens=11, output_tokens=7)])
    backend_kwargs = kwargs_for(backend, lm_server)
    original = dict(backend_kwargs)
    client = get_client(backend, backend_kwargs)
    clients.append(client)
    assert type(client) is cls
    assert isinstance(client, BaseLM)
    assert backend_kwargs == original  # not modified
    assert client.backend == backend
    assert client.model_name == original["model_name"]

    assert client.completion("say hi") == f"hello from {backend}"

    record = lm_server.requests[-1]
    assert record.api == WIRE_API.get(backend, "openai")
    assert record.model == original["model_name"]
    assert record.prompt == "say hi"
    summary = client.get_usage_summary()
    assert isinstance(summary, UsageSummary)
    assert summary.to_dict()["model_usage_summaries"] == {
        original["model_name"]: {
            "total_calls": 1,
            "total_input_tokens": 11,
            "total_output_tokens": 7,
        }
    }
    assert client.get_last_usage() == ModelUsageSummary(1, 11, 7, None)


@pytest.mark.parametrize("backend", ["openai", "anthropic", "gemini"])
def test_a_message_list_prompt_reaches_the_server_whole(
    backend: str, lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(["second answer"])
    client = get_client(backend, kwargs_for(backend, lm_server))
    clients.append(client)
    assert client.completion(CONVERSATION) == "second answer"
    assert lm_server.requests[0].messages == CONVERSATION


def test_acompletion_takes_str_and_message_lists(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(["one", "two", "three"])
    client = OpenAIClient(api_key="k", model_name="m", base_url=lm_server.base_url)
    clients.append(client)

    async def calls() -> list[str]:
        return [
            await client.acompletion("plain"),
            await client.acompletion(CONVERSATION),
            await client.acompletion({"role": "user", "content": "one message"}),
        ]

    assert asyncio.run(calls()) == ["one", "two", "three"]
    assert [r.messages for r in lm_server.requests] == [
        [{"role": "user", "content": "plain"}],
        CONVERSATION,
        [{"role": "user", "content": "one message"}],
    ]
    with pytest.raises(ConfigurationError, match="prompt"):
        client.completion(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="prompt"):
        client.completion(["not a message"])  # type: ignore[list-item]


def test_unknown_backends_and_missing_settings_are_configuration_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_client("nope", {"model_name": "m"})
    assert isinstance(info.value, ValueError)  # what the reference raises
    for name in ("openai", "portkey", "azure_openai", "gemini", "vllm", "ollama"):
        assert name in str(info.value)
    with pytest.raises(ConfigurationError, match="base_url"):
        get_client("vllm", {"model_name": "m"})
    with pytest.raises(ConfigurationError, match="needs a model"):
        OpenAIClient(api_key="k", base_url="http://127.0.0.1:9/v1").completion("x")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        OpenAIClient(model_name="gpt-4o")


# -- usage ---------------------------------------------------------------------------------------


def test_usage_summary_equals_what_the_server_reported(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(
        [
            Reply("a", input_tokens=100, output_tokens=10, cost=0.5),
            Reply("b", input_tokens=200, output_tokens=20, cost=0.25),
            Reply("c", input_tokens=300, output_tokens=30),
        ]
    )
    client = get_client("openrouter", kwargs_for("openrouter", lm_server))
    clients.append(client)
    client.completion("one")
    assert client.get_last_usage() == ModelUsageSummary(1, 100, 10, 0.5)
    client.completion("two")
    assert client.last_prompt_tokens == 200
    assert client.last_completion_tokens == 20
    assert client.last_cost == 0.25
    client.completion("three", model="other-model")  # a per-call model, as in the reference
    assert lm_server.requests[-1].model == "other-model"
    assert client.get_last_usage() == ModelUsageSummary(1, 300, 30, None)

    summary = client.get_usage_summary()
    main = summary.model_usage_summaries["openrouter-model"]
    other = summary.model_usage_summaries["other-model"]
    assert (main.total_calls, main.total_input_tokens, main.total_output_tokens) == (2, 300, 30)
    assert main.total_cost == pytest.approx(0.75)
    assert (other.total_calls, other.total_input_tokens, other.total_output_tokens) == (1, 300, 30)
    assert other.total_cost is None
    server_total = lm_server.usage_total()
    assert summary.total_input_tokens == server_total["input_tokens"] == 600
    assert summary.total_output_tokens == server_total["output_tokens"] == 60
    assert client.model_call_counts == {"openrouter-model": 2, "other-model": 1}
    assert client.model_total_tokens == {"openrouter-model": 330, "other-model": 330}
    assert client.model_costs == {"openrouter-model": pytest.approx(0.75)}


def test_get_last_usage_before_any_call_is_empty(lm_server: ScriptedLMServer) -> None:
    client = OpenAIClient(api_key="k", model_name="m", base_url=lm_server.base_url)
    assert client.get_last_usage() == ModelUsageSummary(0, 0, 0)
    assert client.get_usage_summary().model_usage_summaries == {}


def _numbered_script(request: RecordedRequest) -> Reply:
    """Reply to "q<i>" with usage derived from i; later prompts answer sooner."""
    i = int(request.prompt.removeprefix("q"))
    return Reply(f"a{i}", input_tokens=1000 + i, output_tokens=i + 1, delay=(16 - i) * 0.01)


@pytest.mark.parametrize("loop", ["caller's loop", "rlm loop"])
def test_16_parallel_acompletions_each_get_their_own_usage(
    loop: str, lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(_numbered_script)
    client = OpenAIClient(api_key="k", model_name="m", base_url=lm_server.base_url)
    clients.append(client)

    async def one(i: int) -> tuple[str, ModelUsageSummary]:
        text = await client.acompletion(f"q{i}")
        await asyncio.sleep(0.3)  # every other call finishes meanwhile
        return text, client.get_last_usage()

    async def all_of_them() -> list[tuple[str, ModelUsageSummary]]:
        return await asyncio.gather(*(one(i) for i in range(16)))

    results = asyncio.run(all_of_them()) if loop == "caller's loop" else run_sync(all_of_them())
    assert lm_server.max_in_flight > 1
    for i, (text, usage) in enumerate(results):
        assert text == f"a{i}"
        assert usage == ModelUsageSummary(1, 1000 + i, i + 1, None)
    summary = client.get_usage_summary().model_usage_summaries["m"]
    assert summary.total_calls == 16
    assert summary.total_input_tokens == sum(1000 + i for i in range(16))
    assert summary.total_output_tokens == sum(i + 1 for i in range(16))


def test_16_threads_calling_completion_each_get_their_own_usage(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(_numbered_script)
    client = OpenAIClient(api_key="k", model_name="m", base_url=lm_server.base_url)
    clients.append(client)
    everyone_done = threading.Barrier(16, timeout=30)

    def one(i: int) -> tuple[str, ModelUsageSummary]:
        text = client.completion(f"q{i}")
        everyone_done.wait()  # read the last usage only after every thread's call finished
        return text, client.get_last_usage()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(16)))
    for i, (text, usage) in enumerate(results):
        assert (text, usage) == (f"a{i}", ModelUsageSummary(1, 1000 + i, i + 1, None))
    assert client.get_usage_summary().model_usage_summaries["m"].total_calls == 16


# -- constructor keywords ------------------------------------------------------------------------


def test_sdk_constructor_options_pass_through_to_the_server(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(["ok"])
    client = get_client(
        "openai",
        {
            **kwargs_for("openai", lm_server),
            "default_headers": {"X-Trace": "abc"},
            "organization": "org-123",
            "extra_headers": {"X-Extra": "def"},
        },
    )
    clients.append(client)
    client.completion("x")
    headers = lm_server.requests[0].headers
    assert headers["x-trace"] == "abc"
    assert headers["openai-organization"] == "org-123"
    assert headers["x-extra"] == "def"
    assert headers["authorization"] == "Bearer test-key"


def test_keys_neither_rlm_nor_the_sdk_accept_are_rejected(lm_server: ScriptedLMServer) -> None:
    with pytest.raises(ConfigurationError) as info:
        get_client("openai", {**kwargs_for("openai", lm_server), "temprature": 0.3})
    message = str(info.value)
    assert "temprature" in message
    assert "default_headers" in message and "max_retries" in message  # the accepted keys
    with pytest.raises(ConfigurationError, match="temprature"):
        create_client("azure_openai", {"model_name": "m", "api_key": "k", "temprature": 1})
    with pytest.raises(ConfigurationError, match="set by rlm"):
        create_client(
            "openai",
            {"model_name": "m", "base_url": lm_server.base_url, "client_options": {"timeout": 1}},
        )


def test_timeout_and_sampling_args(lm_server: ScriptedLMServer, clients: list[BaseLM]) -> None:
    assert DEFAULT_TIMEOUT == 300.0
    lm_server.set_script(["ok", "ok"])
    client = OpenAIClient(
        api_key="k",
        model_name="m",
        base_url=lm_server.base_url,
        timeout=12.5,
        sampling_args={"temperature": 0.2, "max_tokens": 50, "seed": None},
    )
    clients.append(client)
    assert client.timeout == 12.5
    assert client.lm_client.timeout == 12.5
    assert OpenAIClient(api_key="k", model_name="m").lm_client.timeout == DEFAULT_TIMEOUT
    client.completion("x")
    body = lm_server.requests[0].body
    assert body["temperature"] == 0.2
    assert body["max_completion_tokens"] == 50  # the OpenAI name, as the reference sends it
    assert "max_tokens" not in body and "seed" not in body
    client.sampling_args["temperature"] = 0.9  # read at each call
    client.completion("y")
    assert lm_server.requests[1].body["temperature"] == 0.9


def test_anthropic_sends_max_tokens_and_sampling_args(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script(["a", "b"])
    default = AnthropicClient("k", "claude-test", base_url=lm_server.root_url)
    capped = AnthropicClient(
        api_key="k",
        model_name="claude-test",
        max_tokens=1000,
        base_url=lm_server.root_url,
        sampling_args={"temperature": 0.3},
    )
    clients += [default, capped]
    default.completion("x")
    capped.completion("y")
    assert lm_server.requests[0].body["max_tokens"] == 32768
    assert lm_server.requests[1].body["max_tokens"] == 1000
    assert lm_server.requests[1].body["temperature"] == 0.3
    assert capped.max_tokens == 1000


def test_gemini_defaults_to_flash_and_prices_it_from_the_table(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script([Reply("hi", input_tokens=1_000_000, output_tokens=1_000_000)])
    client = GeminiClient("k", base_url=lm_server.root_url)
    clients.append(client)
    assert client.model_name == "gemini-2.5-flash"
    client.completion("x")
    assert lm_server.requests[0].model == "gemini-2.5-flash"
    # Reference clients report no cost here; the price table gives one (0.30 + 2.50 USD).
    assert client.get_last_usage().total_cost == pytest.approx(2.80)


def test_errors_are_typed(lm_server: ScriptedLMServer, clients: list[BaseLM]) -> None:
    lm_server.set_script([Reply("bad key", status=401)])
    client = OpenAIClient(api_key="wrong", model_name="m", base_url=lm_server.base_url)
    clients.append(client)
    with pytest.raises(LMAuthenticationError, match="OPENAI_API_KEY"):
        client.completion("x")
    assert client.get_usage_summary().model_usage_summaries == {}


# -- Portkey ---------------------------------------------------------------------------------------


def test_portkey_sends_its_key_in_the_portkey_header(
    lm_server: ScriptedLMServer, clients: list[BaseLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    lm_server.set_script(["via portkey", "again"])
    client = PortkeyClient(
        "pk-secret",
        "@openai/gpt-5-nano",
        base_url=lm_server.base_url,
        provider="@openai-prod",
        config={"retry": {"attempts": 2}},
    )
    clients.append(client)
    assert client.completion("x") == "via portkey"
    record = lm_server.requests[0]
    assert record.model == "@openai/gpt-5-nano"
    assert record.headers["x-portkey-api-key"] == "pk-secret"
    assert record.headers["x-portkey-provider"] == "@openai-prod"
    assert record.headers["x-portkey-config"] == '{"retry": {"attempts": 2}}'
    assert "pk-secret" not in record.headers.get("authorization", "")

    monkeypatch.setenv("PORTKEY_API_KEY", "pk-from-env")
    from_env = get_client("portkey", {"model_name": "m", "base_url": lm_server.base_url})
    clients.append(from_env)
    from_env.completion("y")
    assert lm_server.requests[1].headers["x-portkey-api-key"] == "pk-from-env"


def test_portkey_defaults_to_the_portkey_gateway_and_needs_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PORTKEY_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="PORTKEY_API_KEY"):
        PortkeyClient(model_name="m")
    client = PortkeyClient("pk", "m")
    assert client.base_url == "https://api.portkey.ai/v1"
    assert str(client.lm_client.base_url).rstrip("/") == "https://api.portkey.ai/v1"


# -- Azure OpenAI ----------------------------------------------------------------------------------


def forwarding_http_client(
    server: ScriptedLMServer, seen: list[httpx.Request]
) -> httpx.AsyncClient:
    """An httpx client that records each request the SDK builds and forwards its body to the
    scripted server's OpenAI route (which has no Azure-style deployment paths)."""

    async def forward(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        async with httpx.AsyncClient() as upstream:
            answer = await upstream.post(
                f"{server.base_url}/chat/completions",
                content=request.content,
                headers={"content-type": "application/json"},
            )
        return httpx.Response(answer.status_code, json=answer.json())

    return httpx.AsyncClient(transport=httpx.MockTransport(forward))


def test_azure_requests_go_to_the_deployment_with_the_api_version(
    lm_server: ScriptedLMServer, clients: list[BaseLM]
) -> None:
    lm_server.set_script([Reply("from azure", input_tokens=40, output_tokens=4)])
    seen: list[httpx.Request] = []
    client = get_client(
        "azure_openai",
        {
            "api_key": "azure-key",
            "model_name": "gpt-4o",
            "azure_endpoint": "https://example-resource.openai.azure.com",
            "api_version": "2024-06-01",
            "azure_deployment": "my-deployment",
            "http_client": forwarding_http_client(lm_server, seen),  # an SDK constructor option
        },
    )
    clients.append(client)
    assert isinstance(client, AzureOpenAIClient)
    assert client.azure_deployment == "my-deployment"
    assert client.completion("x") == "from azure"

    (request,) = seen
    assert request.method == "POST"
    assert request.url.host == "example-resource.openai.azure.com"
    assert request.url.path == "/openai/deployments/my-deployment/chat/completions"
    assert request.url.params["api-version"] == "2024-06-01"
    assert request.headers["api-key"] == "azure-key"
    assert lm_server.requests[0].model == "gpt-4o"
    last = client.get_last_usage()
    assert (last.total_calls, last.total_input_tokens, last.total_output_tokens) == (1, 40, 4)
    assert last.total_cost == pytest.approx((40 * 2.50 + 4 * 10.00) / 1e6)  # gpt-4o's price


def test_azure_reads_the_environment_and_routes_by_model_without_a_deployment(
    lm_server: ScriptedLMServer, clients: list[BaseLM], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_API_VERSION", "OPENAI_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://env-resource.openai.azure.com/")
    lm_server.set_script(["ok"])
    seen: list[httpx.Request] = []
    client = AzureOpenAIClient(
        model_name="gpt-4o-mini", http_client=forwarding_http_client(lm_server, seen)
    )
    clients.append(client)
    client.completion("x")
    (request,) = seen
    assert request.url.host == "env-resource.openai.azure.com"
    assert request.url.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert request.url.params["api-version"] == "2024-02-01"
    assert request.headers["api-key"] == "env-key"

    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT")
    with pytest.raises(ConfigurationError, match="azure_endpoint"):
        AzureOpenAIClient(api_key="k", model_name="gpt-4o")
    monkeypatch.delenv("AZURE_OPENAI_API_KEY")
    with pytest.raises(ConfigurationError, match="AZURE_OPENAI_API_KEY"):
        AzureOpenAIClient(model_name="gpt-4o", azure_endpoint="https://x.openai.azure.com")

    lm_server.set_script(["ok"])
    with_token = AzureOpenAIClient(
        model_name="gpt-4o",
        azure_endpoint="https://x.openai.azure.com",
        azure_ad_token_provider=lambda: "entra-token",  # an SDK option, passed through
        http_client=forwarding_http_client(lm_server, seen),
    )
    clients.append(with_token)
    with_token.completion("y")
    assert seen[-1].headers["authorization"] == "Bearer entra-token"
    assert "api-key" not in seen[-1].headers


# -- the package -----------------------------------------------------------------------------------


def test_importing_rlm_clients_imports_no_provider_sdk() -> None:
    code = (
        "import sys, rlm.clients\n"
        "from rlm.clients import OpenAIClient, AnthropicClient, GeminiClient\n"
        "bad = [m for m in ('openai', 'anthropic', 'google.genai', 'portkey_ai') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_user_subclass_of_base_lm_must_implement_the_interface() -> None:
    class Incomplete(BaseLM):
        def completion(self, prompt: Any) -> str:
            return "x"

    with pytest.raises(TypeError):
        Incomplete("m")  # type: ignore[abstract]

    class Echo(Incomplete):
        async def acompletion(self, prompt: Any) -> str:
            return "x"

        def get_usage_summary(self) -> UsageSummary:
            return UsageSummary({})

        def get_last_usage(self) -> ModelUsageSummary:
            return ModelUsageSummary(0, 0, 0)

    echo = Echo("m", sampling_args={"temperature": 0}, extra=1)
    assert (echo.model_name, echo.timeout, echo.sampling_args) == ("m", 300.0, {"temperature": 0})
    assert echo.kwargs == {"extra": 1}
