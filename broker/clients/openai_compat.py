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
import os
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlparse

import openai
from openai.types.chat import ChatCompletion

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
            # The SDK's low-level post() keeps its HTTP client, errors and response model but
            # skips the per-call walk over every message that create() does to check the
            # request against its TypedDicts: that walk costs milliseconds per root iteration
            # and grows with the conversation. The messages are plain dicts we built ourselves.
            completion = await self._client.post(
                "/chat/completions", body=body, cast_to=ChatCompletion
            )
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
        except openai.APIError as exc:  # e.g. a response that does not parse
            raise PermanentError(f"{type(exc).__name__}: {exc.message}") from exc
        choices = getattr(completion, "choices", None)
        if not choices:
            # OpenRouter can answer 200 with an "error" object when the upstream provider fails.
            error = (getattr(completion, "model_extra", None) or {}).get("error")
            raise TransientError(f"the response had no choices: {error or completion!r}")
        text = choices[0].message.content or ""
        self._answered = True
        return LMResponse(
            text=text, model=completion.model or self.model_name, usage=_usage(completion)
        )

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


def _usage(completion: Any) -> LMUsage:
    usage = getattr(completion, "usage", None)
    if usage is None:
        return LMUsage()
    cost = getattr(usage, "cost", None)
    return LMUsage(
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        cost=float(cost) if isinstance(cost, int | float) else None,
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
        self.base_url = str(self._client.base_url)

    @classmethod
    def sdk_options(cls) -> frozenset[str]:
        """Keyword arguments of ``openai.AsyncAzureOpenAI`` that ``client_options`` may hold."""
        return _constructor_options(openai.AsyncAzureOpenAI) - {
            "azure_endpoint",
            "api_version",
            "azure_deployment",
        }
