"""Clients for every backend that speaks OpenAI chat completions.

``OpenAIClient`` holds the logic; the other backends are subclasses that only change the default
base URL and which environment variable holds the key: ``openrouter``, ``vllm``, ``ollama``,
``lmstudio``, ``vercel`` (the Vercel AI Gateway) and ``portkey`` (the Portkey gateway), plus
``azure_openai``, which builds ``openai.AsyncAzureOpenAI`` instead.

``client_options`` are keyword arguments for the SDK client's constructor (``default_headers``,
``default_query``, ``organization``, ``http_client``, ...); ``create_client`` moves any
``backend_kwargs`` key that the SDK constructor accepts there.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlparse

import openai
from openai import _base_client
from openai._models import FinalRequestOptions

from rlm.broker.clients.base import (
    LMClient,
    LMResponse,
    LMUsage,
    Messages,
    PermanentError,
    ProviderError,
    TransientError,
    connection_refused,
    parse_retry_after,
)
from rlm.errors import ConfigurationError

__all__ = [
    "AzureOpenAIClient",
    "LMStudioClient",
    "OllamaClient",
    "OpenAIClient",
    "OpenRouterClient",
    "PortkeyClient",
    "VLLMClient",
    "VercelClient",
]

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def _is_local(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    return host in _LOCAL_HOSTS or host.endswith(".localhost")


class OpenAIClient(LMClient):
    """An OpenAI chat-completions client over ``openai.AsyncOpenAI``.

    The key comes from ``api_key`` or the backend's environment variable; a server on
    localhost needs none. ``extra_headers`` are sent with every request. Usage (and
    ``usage.cost`` where the server reports it, as OpenRouter does) is read from each response.
    """

    backend: ClassVar[str] = "openai"
    key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    _answered = False
    """Set once the server has answered a call: from then on a refused connection is retried."""
    default_base_url: ClassVar[str | None] = None  # None: the SDK's default, api.openai.com
    key_required: ClassVar[bool] = True
    base_url_required: ClassVar[bool] = False
    extra_body: ClassVar[Mapping[str, Any] | None] = None

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        client_options: Mapping[str, Any] | None = None,
        reports_cost: bool | None = None,
        **common: Any,
    ) -> None:
        super().__init__(model_name, **common)
        if reports_cost is not None:
            # True: the endpoint reports each call's usage.cost (OpenRouter, LiteLLM and other
            # gateways), so max_budget works without a price; see broker/accounting.py for
            # what a reply without one costs.
            self.reports_cost = bool(reports_cost)
        base_url = base_url or self.default_base_url
        if base_url is None and self.base_url_required:
            raise ConfigurationError(
                f"backend {self.backend!r} needs backend_kwargs['base_url'], "
                "e.g. 'http://localhost:8000/v1' for a local vLLM server"
            )
        api_key = api_key or (os.environ.get(self.key_env) if self.key_env else None)
        if not api_key:
            if self.key_required and not _is_local(base_url):
                raise ConfigurationError(
                    f"backend {self.backend!r} needs an API key: set the {self.key_env} "
                    "environment variable or backend_kwargs['api_key']"
                )
            api_key = "EMPTY"
        self.base_url = base_url
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            **self._sdk_arguments(extra_headers, client_options),
        )
        _keep_request_urls(self._client)

    @classmethod
    def sdk_options(cls) -> frozenset[str]:
        """Keyword arguments of the SDK client's constructor that ``client_options`` may hold."""
        return _constructor_options(openai.AsyncOpenAI)

    def _sdk_arguments(
        self, extra_headers: Mapping[str, str] | None, client_options: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """Timeout, retries, headers and HTTP client for the SDK constructor, plus the options."""
        options = dict(client_options or {})
        reserved = sorted(set(options) & _RESERVED_OPTIONS)
        if reserved:
            raise ConfigurationError(
                f"client_options {reserved} are set by rlm; pass them as backend_kwargs instead"
            )
        unknown = sorted(set(options) - self.sdk_options())
        if unknown:
            raise ConfigurationError(
                f"backend {self.backend!r}: the SDK client does not accept {unknown}; "
                f"it accepts: {', '.join(sorted(self.sdk_options()))}"
            )
        headers = {**(options.pop("default_headers", None) or {}), **(extra_headers or {})}
        http_client = options.pop("http_client", None) or _http_client()
        return {
            "timeout": self.timeout,
            "max_retries": 0,  # retries are LMClient's, so they are counted and logged once
            "default_headers": headers or None,
            "http_client": http_client,
            **options,
        }

    def _base_url_hint(self) -> str:
        return str(self._client.base_url)

    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        extra_body = {**(self.extra_body or {}), **(sampling.pop("extra_body", None) or {})}
        body = {"model": self.model_name, "messages": messages, **sampling, **extra_body}
        try:
            # The SDK's request() keeps its HTTP client, auth, Azure deployment URLs and error
            # classes; three things it would do per call are skipped, all CPU on the broker's one
            # loop: create()'s walk over every message to check it against its TypedDicts (we
            # built the messages), building the request options from defaults (one prepared
            # set is copied with this body), and the pydantic ChatCompletion model (the body is
            # read with _parse_completion, which takes only what LMResponse holds).
            options = _CHAT_OPTIONS.model_copy(update={"json_data": body})
            response = await self._client.request(_RAW_RESPONSE, options)
        except openai.APIStatusError as exc:
            raise ProviderError.from_status(
                exc.status_code,
                _status_message(exc),
                retry_after=parse_retry_after(exc.response.headers),
            ) from exc
        except openai.APIConnectionError as exc:  # includes APITimeoutError
            if connection_refused(exc) and not self._answered:
                # Nothing listens there and nothing ever answered: a wrong address or a server
                # that is not running, which retrying for seconds would only hide. (Once the
                # server has answered, a refusal is a restart: retried as usual.)
                raise PermanentError(
                    f"cannot connect to {self.base_url or self._client.base_url}: connection "
                    "refused",
                    connection=True,
                    refused=True,
                ) from exc
            raise TransientError(_connection_message(exc), connection=True) from exc
        except openai.APIError as exc:
            raise PermanentError(f"{type(exc).__name__}: {exc.message}") from exc
        result = _parse_completion(response.content, self.model_name)
        self._answered = True
        return result

    async def _aclose(self) -> None:
        await self._client.close()


_RESERVED_OPTIONS = frozenset({"api_key", "base_url", "timeout", "max_retries"})
"""SDK constructor arguments that rlm sets itself (from backend_kwargs of the same name)."""


def _constructor_options(sdk_class: type) -> frozenset[str]:
    """The keyword arguments ``sdk_class.__init__`` accepts, less those rlm sets itself."""
    keyword = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = {
        name
        for name, parameter in inspect.signature(sdk_class).parameters.items()
        if parameter.kind in keyword and name != "self" and not name.startswith("_")
    }
    return frozenset(names - _RESERVED_OPTIONS)


def _http_client() -> Any:
    """The SDK's aiohttp transport (the ``openai[aiohttp]`` extra, a core dependency of rlm).

    A 64-wide batch of sub-calls spends its time in the HTTP client: per call, the aiohttp
    transport costs about half the CPU of the default httpx one on the broker's single loop.
    """
    try:
        return openai.DefaultAioHttpClient()
    except (AttributeError, RuntimeError, ImportError):  # older SDK or aiohttp missing
        return None


_SDK_HTTP = vars(_base_client)
_RAW_RESPONSE: Any = (_SDK_HTTP.get("httpx2") or _SDK_HTTP["httpx"]).Response
"""The response class of the SDK's HTTP layer (httpx2 from openai 3, httpx before): as ``cast_to``
it makes ``request()`` return the HTTP response itself, body read, with no model built."""

_CHAT_OPTIONS = FinalRequestOptions.construct(method="post", url="/chat/completions")
"""The request options of every chat completion but its body; each call copies it shallowly."""

_URLS_KEPT = 64
"""Request URLs one SDK client keeps: one per path (a path per Azure deployment, say)."""


def _keep_request_urls(client: Any) -> None:
    """Make ``client`` build the URL of a path once per base URL, not once per request.

    For every request the SDK parses the path and rebuilds it on top of ``base_url`` (two URL
    parses); the result depends on those two alone, so it is kept per path and built again when
    ``base_url`` is replaced. An SDK without this method is left as it is.
    """
    build = getattr(client, "_prepare_url", None)
    if build is None:
        return
    kept: dict[str, tuple[Any, Any]] = {}

    def prepare_url(url: str) -> Any:
        base = client.base_url
        entry = kept.get(url)
        if entry is not None and entry[0] is base:
            return entry[1]
        if len(kept) >= _URLS_KEPT:
            kept.clear()
        prepared = build(url)
        kept[url] = (base, prepared)
        return prepared

    client._prepare_url = prepare_url


_EXCERPT = 300
"""Characters of a malformed body quoted in an error message."""


def _parse_completion(content: bytes, asked_model: str) -> LMResponse:
    """An ``LMResponse`` from the JSON body of a chat completion (HTTP 200).

    ``TransientError`` for a body with no choices (OpenRouter answers 200 with an ``error`` object
    when the upstream provider fails); ``PermanentError`` for a body that is not a chat completion
    at all (not JSON, or a choice that is not an object).
    """
    try:
        data = json.loads(content)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
        raise _malformed("is not JSON", content) from None
    if not isinstance(data, dict):
        raise _malformed("is not a JSON object", content)
    choices = data.get("choices")
    if not choices:
        error = data.get("error")
        detail = _shorten(str(error)) if error else _excerpt(content)
        raise TransientError(f"the response had no choices: {detail}")
    choice = choices[0] if isinstance(choices, list) else None
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise _malformed("has a choice without a message object", content)
    text = message.get("content")
    if text is None:
        text = ""  # a reply of tool calls only
    elif not isinstance(text, str):
        raise _malformed("has a message content that is not a string", content)
    model = data.get("model")
    return LMResponse(
        text=text,
        model=model if isinstance(model, str) and model else asked_model,
        usage=_usage(data.get("usage")),
    )


def _usage(usage: Any) -> LMUsage:
    """Tokens and reported cost from a body's ``usage``; what is missing or not a count is 0."""
    if not isinstance(usage, dict):
        return LMUsage()
    return LMUsage(
        input_tokens=int(_amount(usage.get("prompt_tokens")) or 0),
        output_tokens=int(_amount(usage.get("completion_tokens")) or 0),
        cost=_amount(usage.get("cost"), strings=False),
    )


def _amount(value: Any, *, strings: bool = True) -> float | None:
    """``value`` as a finite number >= 0 (a numeric string too, if ``strings``), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and not strings:
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _excerpt(content: bytes) -> str:
    return _shorten(content[: _EXCERPT + 1].decode("utf-8", "replace"))


def _shorten(text: str) -> str:
    return text[:_EXCERPT] + "..." if len(text) > _EXCERPT else text


def _malformed(what: str, content: bytes) -> PermanentError:
    return PermanentError(
        f"malformed chat completion: the response body {what}: {_excerpt(content)!r}"
    )


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, Mapping):
        message = body.get("message")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body:
        return body
    return exc.message


def _connection_message(exc: openai.APIConnectionError) -> str:
    cause = exc.__cause__ or exc.__context__
    return f"{exc.message} ({type(cause).__name__}: {cause})" if cause else exc.message


class OpenRouterClient(OpenAIClient):
    """OpenRouter (https://openrouter.ai); reports each call's cost in ``usage.cost``."""

    backend: ClassVar[str] = "openrouter"
    key_env: ClassVar[str | None] = "OPENROUTER_API_KEY"
    default_base_url: ClassVar[str | None] = "https://openrouter.ai/api/v1"
    reports_cost = True
    extra_body: ClassVar[Mapping[str, Any] | None] = {"usage": {"include": True}}


class VLLMClient(OpenAIClient):
    """A vLLM server's OpenAI-compatible endpoint; ``base_url`` is required, the key optional."""

    backend: ClassVar[str] = "vllm"
    key_env: ClassVar[str | None] = "VLLM_API_KEY"
    key_required: ClassVar[bool] = False
    base_url_required: ClassVar[bool] = True


class OllamaClient(OpenAIClient):
    """A local Ollama server (default ``http://localhost:11434/v1``)."""

    backend: ClassVar[str] = "ollama"
    key_env: ClassVar[str | None] = None
    key_required: ClassVar[bool] = False
    default_base_url: ClassVar[str | None] = "http://localhost:11434/v1"


class LMStudioClient(OpenAIClient):
    """A local LM Studio server (default ``http://localhost:1234/v1``)."""

    backend: ClassVar[str] = "lmstudio"
    key_env: ClassVar[str | None] = None
    key_required: ClassVar[bool] = False
    default_base_url: ClassVar[str | None] = "http://localhost:1234/v1"


class VercelClient(OpenAIClient):
    """The Vercel AI Gateway (https://ai-gateway.vercel.sh/v1)."""

    backend: ClassVar[str] = "vercel"
    key_env: ClassVar[str | None] = "AI_GATEWAY_API_KEY"
    default_base_url: ClassVar[str | None] = "https://ai-gateway.vercel.sh/v1"


PORTKEY_BASE_URL = "https://api.portkey.ai/v1"


class PortkeyClient(OpenAIClient):
    """The Portkey AI gateway (default ``https://api.portkey.ai/v1``), OpenAI-compatible.

    The Portkey key (``api_key`` or ``PORTKEY_API_KEY``) goes in the ``x-portkey-api-key`` header;
    ``provider``, ``virtual_key`` and ``config`` become the matching ``x-portkey-*`` headers.
    """

    backend: ClassVar[str] = "portkey"
    key_env: ClassVar[str | None] = "PORTKEY_API_KEY"
    default_base_url: ClassVar[str | None] = PORTKEY_BASE_URL

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        provider: str | None = None,
        virtual_key: str | None = None,
        config: str | Mapping[str, Any] | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        api_key = api_key or os.environ.get("PORTKEY_API_KEY")
        if not api_key and not _is_local(base_url or PORTKEY_BASE_URL):
            raise ConfigurationError(
                "backend 'portkey' needs a Portkey API key: set the PORTKEY_API_KEY environment "
                "variable or backend_kwargs['api_key']"
            )
        portkey_headers = {
            "x-portkey-api-key": api_key,
            "x-portkey-provider": provider,
            "x-portkey-virtual-key": virtual_key,
            "x-portkey-config": json.dumps(dict(config)) if isinstance(config, Mapping) else config,
        }
        headers = {k: v for k, v in portkey_headers.items() if v}
        # The gateway reads the Portkey key from its own header. The bearer token is what the
        # gateway forwards to a provider named by ``provider``, so the Portkey key stays out of it.
        super().__init__(
            model_name,
            api_key="portkey",
            base_url=base_url,
            extra_headers={**headers, **(extra_headers or {})},
            **kwargs,
        )


class AzureOpenAIClient(OpenAIClient):
    """Azure OpenAI over ``openai.AsyncAzureOpenAI``.

    ``azure_endpoint`` (or ``AZURE_OPENAI_ENDPOINT``) or a full ``base_url``; ``api_version`` (or
    ``AZURE_OPENAI_API_VERSION``, then ``OPENAI_API_VERSION``, default ``2024-02-01``);
    ``azure_deployment`` (or ``AZURE_OPENAI_DEPLOYMENT``; without one the deployment is
    ``model_name``). The key comes from ``api_key``, ``AZURE_OPENAI_API_KEY``, or
    ``azure_ad_token``/``azure_ad_token_provider`` in ``client_options``.
    """

    backend: ClassVar[str] = "azure_openai"
    key_env: ClassVar[str | None] = "AZURE_OPENAI_API_KEY"
    default_api_version: ClassVar[str] = "2024-02-01"

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        azure_deployment: str | None = None,
        base_url: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        client_options: Mapping[str, Any] | None = None,
        **common: Any,
    ) -> None:
        LMClient.__init__(self, model_name, **common)
        options = dict(client_options or {})
        api_key = api_key or os.environ.get("AZURE_OPENAI_API_KEY")
        if not api_key and not (
            options.get("azure_ad_token")
            or options.get("azure_ad_token_provider")
            or os.environ.get("AZURE_OPENAI_AD_TOKEN")
        ):
            raise ConfigurationError(
                "backend 'azure_openai' needs an API key: set the AZURE_OPENAI_API_KEY environment "
                "variable or backend_kwargs['api_key'] (or pass 'azure_ad_token_provider')"
            )
        if base_url is None:
            azure_endpoint = azure_endpoint or os.environ.get("AZURE_OPENAI_ENDPOINT")
            if not azure_endpoint:
                raise ConfigurationError(
                    "backend 'azure_openai' needs backend_kwargs['azure_endpoint'] (e.g. "
                    "'https://NAME.openai.azure.com') or the AZURE_OPENAI_ENDPOINT environment "
                    "variable"
                )
        elif azure_endpoint is not None:
            raise ConfigurationError(
                "backend 'azure_openai' takes azure_endpoint or base_url, not both"
            )
        self.api_version = (
            api_version
            or os.environ.get("AZURE_OPENAI_API_VERSION")
            or os.environ.get("OPENAI_API_VERSION")
            or self.default_api_version
        )
        self.azure_deployment = azure_deployment or os.environ.get("AZURE_OPENAI_DEPLOYMENT")
        self.azure_endpoint = azure_endpoint
        arguments = self._sdk_arguments(extra_headers, options)
        if base_url is not None:
            self._client = openai.AsyncAzureOpenAI(
                api_key=api_key, api_version=self.api_version, base_url=base_url, **arguments
            )
        else:
            assert azure_endpoint is not None  # checked above
            self._client = openai.AsyncAzureOpenAI(
                api_key=api_key,
                azure_endpoint=azure_endpoint,
                api_version=self.api_version,
                azure_deployment=self.azure_deployment,
                **arguments,
            )
        _keep_request_urls(self._client)
        self.base_url = str(self._client.base_url)

    @classmethod
    def sdk_options(cls) -> frozenset[str]:
        """Keyword arguments of ``openai.AsyncAzureOpenAI`` that ``client_options`` may hold."""
        return _constructor_options(openai.AsyncAzureOpenAI) - {
            "azure_endpoint",
            "api_version",
            "azure_deployment",
        }
