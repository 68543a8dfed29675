"""LM clients, registered by backend name and imported only when asked for.

    client = create_client("openai", {"model_name": "gpt-4o-mini"})
    response = await client.acomplete([{"role": "user", "content": "hi"}])

``backend_kwargs`` use the reference ``rlms`` package's keys (``model_name``, ``api_key``,
``base_url``) plus ``timeout``, ``max_retries``, ``initial_backoff``, ``max_backoff``,
``extra_headers``, ``sampling`` (default sampling arguments) and ``price_per_million``
(``(input_usd, output_usd)``). Any other key that the backend's SDK client constructor accepts
(``default_headers``, ``default_query``, ``organization``, ``http_client``, ...) is passed on to
it, for backends whose class declares ``sdk_options()`` and takes ``client_options``. Importing
this package imports no provider SDK.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rlm.errors import ConfigurationError
from rlm.registry import load

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
    "portkey": (f"{_OPENAI}:PortkeyClient", None),
    "azure_openai": (f"{_OPENAI}:AzureOpenAIClient", None),
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


def _load(backend: str) -> type[LMClient]:
    return load("backend", backend, BACKENDS, ENTRY_POINT_GROUP)


def _accepted_kwargs(cls: type) -> tuple[list[str], bool]:
    """Keyword names a client accepts: its own, plus the common ones of ``LMClient`` that it
    passes on through ``**common``. The bool: it accepts anything (no common base to check)."""
    from rlm.broker.clients.base import LMClient

    accepted: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        accepted += [
            n
            for n, p in parameters.items()
            if n != "self"
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return list(dict.fromkeys(accepted)), False
        if klass is LMClient:
            break
    return list(dict.fromkeys(accepted)), not issubclass(cls, LMClient)


def _sdk_options(cls: type) -> frozenset[str]:
    """Constructor keywords of the backend's SDK client that ``client_options`` may carry."""
    declared = getattr(cls, "sdk_options", None)
    return frozenset(declared()) if callable(declared) else frozenset()


def create_client(backend: str, backend_kwargs: Mapping[str, Any] | None = None) -> LMClient:
    """Build the client for ``backend`` from ``backend_kwargs``.

    Keys the client does not take but its SDK constructor does go to ``client_options``; any
    other unknown key is a ``ConfigurationError``.
    """
    cls = _load(backend)
    kwargs = dict(backend_kwargs or {})
    accepted, takes_any = _accepted_kwargs(cls)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown and not takes_any:
        sdk_options = _sdk_options(cls)
        rejected = [key for key in unknown if key not in sdk_options]
        if rejected:
            sdk_note = f"; or any of its SDK client's: {', '.join(sorted(sdk_options))}"
            raise ConfigurationError(
                f"backend {backend!r} does not accept backend_kwargs {rejected}; "
                f"accepted: {', '.join(accepted)}{sdk_note if sdk_options else ''}"
            )
        kwargs["client_options"] = {
            **(kwargs.get("client_options") or {}),
            **{key: kwargs.pop(key) for key in unknown},
        }
    if "model_name" not in kwargs:
        raise ConfigurationError(f"backend {backend!r} needs backend_kwargs['model_name']")
    return cls(**kwargs)
