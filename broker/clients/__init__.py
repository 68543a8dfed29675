"""LM clients, registered by backend name and imported only when asked for.

    client = create_client("openai", {"model_name": "gpt-4o-mini"})
    response = await client.acomplete([{"role": "user", "content": "hi"}])

``backend_kwargs`` use the reference ``rlms`` package's keys (``model_name``, ``api_key``,
``base_url``) plus ``timeout``, ``max_retries``, ``initial_backoff``, ``max_backoff``,
``extra_headers``, ``sampling`` (default sampling arguments) and ``price_per_million``
(``(input_usd, output_usd)``). Importing this package imports no provider SDK.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlm.errors import ConfigurationError

if TYPE_CHECKING:
    from rlm.broker.clients.base import LMClient

__all__ = ["BACKENDS", "ENTRY_POINT_GROUP", "create_client", "register_backend"]

_OPENAI = "rlm.broker.clients.openai_compat"

BACKENDS: dict[str, tuple[str, str | None]] = {
    "openai": (f"{_OPENAI}:OpenAIClient", None),
    "openrouter": (f"{_OPENAI}:OpenRouterClient", None),
    "vllm": (f"{_OPENAI}:VLLMClient", None),
    "ollama": (f"{_OPENAI}:OllamaClient", None),
    "lmstudio": (f"{_OPENAI}:LMStudioClient", None),
    "vercel": (f"{_OPENAI}:VercelClient", None),
    "anthropic": ("rlm.broker.clients.anthropic:AnthropicClient", "anthropic"),
    "gemini": ("rlm.broker.clients.gemini:GeminiClient", "gemini"),
    "local": ("rlm.broker.clients.local_llama:LocalLlamaClient", "local"),
}
"""Backend name -> ("module:Class", the ``rlm[extra]`` that installs its SDK, or None)."""


def register_backend(name: str, target: str, extra: str | None = None) -> None:
    """Add (or replace) a backend: ``target`` is ``"package.module:ClientClass"``."""
    if ":" not in target:
        raise ConfigurationError(f"backend target must look like 'module:Class', got {target!r}")
    BACKENDS[name] = (target, extra)


ENTRY_POINT_GROUP = "rlm.backends"
"""Third-party packages add a backend with an entry point ``name = "module:Class"`` here."""


def _from_entry_points(backend: str) -> tuple[str, str | None] | None:
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name == backend:
            return entry_point.value, None
    return None


def _load(backend: str) -> type[LMClient]:
    found = BACKENDS.get(backend) or _from_entry_points(backend)
    if found is None:
        known = ", ".join(sorted(BACKENDS))
        raise ConfigurationError(f"unknown backend {backend!r}; known backends: {known}")
    target, extra = found
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f": pip install 'rlm[{extra}]'" if extra else ""
        raise ConfigurationError(
            f"backend {backend!r} could not be imported ({exc}){hint}"
        ) from exc
    return getattr(module, class_name)


def create_client(backend: str, backend_kwargs: Mapping[str, Any] | None = None) -> LMClient:
    """Build the client for ``backend`` from ``backend_kwargs``; unknown keys are an error."""
    cls = _load(backend)
    kwargs = dict(backend_kwargs or {})
    parameters = inspect.signature(cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = [n for n in parameters if n != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        raise ConfigurationError(
            f"backend {backend!r} does not accept backend_kwargs {unknown}; "
            f"accepted: {', '.join(accepted)}"
        )
    if "model_name" not in kwargs:
        raise ConfigurationError(f"backend {backend!r} needs backend_kwargs['model_name']")
    return cls(**kwargs)
