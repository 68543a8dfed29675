"""LM clients with the interface of the reference ``rlms`` package: ``get_client`` and ``BaseLM``.

    client = get_client("openai", {"model_name": "gpt-4o-mini"})
    text = client.completion("hi")
    client.get_usage_summary()

Each class adapts a backend of ``rlm.broker.clients`` (the project's only LM client code), so
``backend_kwargs`` may also use that backend's keys (``max_retries``, ``extra_headers``,
``price_per_million``, ...). Importing this package imports no provider SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Any

from rlm.clients.base_lm import DEFAULT_TIMEOUT, BaseLM, BrokerLM
from rlm.errors import ConfigurationError
from rlm.types import ClientBackend

if TYPE_CHECKING:
    from rlm.clients.anthropic import AnthropicClient
    from rlm.clients.azure_openai import AzureOpenAIClient
    from rlm.clients.gemini import GeminiClient
    from rlm.clients.openai import OpenAIClient
    from rlm.clients.portkey import PortkeyClient

__all__ = [
    "DEFAULT_TIMEOUT",
    "AnthropicClient",
    "AzureOpenAIClient",
    "BaseLM",
    "BrokerLM",
    "ClientBackend",
    "GeminiClient",
    "OpenAIClient",
    "PortkeyClient",
    "get_client",
]

# ClientBackend: the reference's backend names (get_client also takes every broker backend).

_CLASSES: dict[str, str] = {
    "OpenAIClient": "rlm.clients.openai",
    "PortkeyClient": "rlm.clients.portkey",
    "AnthropicClient": "rlm.clients.anthropic",
    "GeminiClient": "rlm.clients.gemini",
    "AzureOpenAIClient": "rlm.clients.azure_openai",
}

_CLASS_BY_BACKEND: dict[str, str] = {
    "openai": "OpenAIClient",
    "vllm": "OpenAIClient",
    "openrouter": "OpenAIClient",
    "vercel": "OpenAIClient",
    "portkey": "PortkeyClient",
    "anthropic": "AnthropicClient",
    "gemini": "GeminiClient",
    "azure_openai": "AzureOpenAIClient",
}


def __getattr__(name: str) -> Any:
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


def _is_broker_backend(backend: str) -> bool:
    from importlib.metadata import entry_points

    from rlm.broker.clients import BACKENDS, ENTRY_POINT_GROUP

    return backend in BACKENDS or any(
        ep.name == backend for ep in entry_points(group=ENTRY_POINT_GROUP)
    )


def get_client(backend: str, backend_kwargs: Mapping[str, Any] | None = None) -> BaseLM:
    """The ``BaseLM`` for ``backend`` built from ``backend_kwargs`` (which is not modified)."""
    kwargs = dict(backend_kwargs or {})
    class_name = _CLASS_BY_BACKEND.get(backend)
    if class_name is not None:
        cls = getattr(import_module(_CLASSES[class_name]), class_name)
        if backend == "vllm" and not kwargs.get("base_url"):
            raise ConfigurationError(
                "backend 'vllm' needs backend_kwargs['base_url'], the vLLM server's address "
                "(e.g. 'http://localhost:8000/v1')"
            )
        if backend in ("vllm", "openrouter", "vercel"):
            kwargs["backend"] = backend  # "openai" itself picks the backend from base_url
        return cls(**kwargs)
    if _is_broker_backend(backend):
        return BrokerLM(backend=backend, **kwargs)
    from rlm.broker.clients import BACKENDS

    known = ", ".join(sorted(set(_CLASS_BY_BACKEND) | set(BACKENDS)))
    raise ConfigurationError(f"unknown backend {backend!r}; choose one of: {known}")
