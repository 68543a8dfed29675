"""``OpenAIClient``: OpenAI and every OpenAI-compatible server (vLLM, OpenRouter, Vercel, ...)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from rlm.clients.base_lm import BrokerLM

__all__ = ["DEFAULT_PRIME_INTELLECT_BASE_URL", "OpenAIClient"]

DEFAULT_PRIME_INTELLECT_BASE_URL = "https://api.pinference.ai/api/v1/"
"""Prime Intellect's inference API; its key is read from ``PRIME_API_KEY``."""

_BACKEND_BY_BASE_URL = {
    "https://api.openai.com/v1": "openai",
    "https://openrouter.ai/api/v1": "openrouter",
    "https://ai-gateway.vercel.sh/v1": "vercel",
}


def _same_url(a: str | None, b: str) -> bool:
    return a is not None and a.rstrip("/") == b.rstrip("/")


class OpenAIClient(BrokerLM):
    """An OpenAI chat-completions client; with ``base_url``, any OpenAI-compatible server.

    The key defaults to the environment variable of the service ``base_url`` names
    (``OPENAI_API_KEY``, ``OPENROUTER_API_KEY``, ``AI_GATEWAY_API_KEY``, ``PRIME_API_KEY``).
    Other keywords (``default_headers``, ``default_query``, ``organization``, ``max_retries``,
    ...) go to the broker's ``openai`` backend and from there to ``openai.AsyncOpenAI``.
    ``sampling_args["max_tokens"]`` is sent as ``max_completion_tokens``.
    """

    backend = "openai"

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        base_url: str | None = None,
        sampling_args: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        backend = kwargs.pop("backend", None) or next(
            (name for url, name in _BACKEND_BY_BASE_URL.items() if _same_url(base_url, url)),
            "openai",
        )
        self._prime = _same_url(base_url, DEFAULT_PRIME_INTELLECT_BASE_URL)
        if api_key is None and self._prime:
            api_key = os.environ.get("PRIME_API_KEY")
        if api_key is not None:
            kwargs["api_key"] = api_key
        if base_url is not None:
            kwargs["base_url"] = base_url
        self.base_url = base_url
        super().__init__(model_name, sampling_args=sampling_args, backend=backend, **kwargs)

    def _call_sampling(self) -> dict[str, Any]:
        sampling = super()._call_sampling()
        if "max_tokens" in sampling:
            sampling["max_completion_tokens"] = sampling.pop("max_tokens")
        if self._prime:  # Prime Intellect reports each call's cost when asked
            sampling["extra_body"] = {"usage": {"include": True}, **sampling.get("extra_body", {})}
        return sampling
