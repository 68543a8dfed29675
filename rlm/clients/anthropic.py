"""``AnthropicClient``: Claude models over the Anthropic Messages API."""

from __future__ import annotations

from typing import Any

from rlm.clients.base_lm import BrokerLM

__all__ = ["AnthropicClient"]


class AnthropicClient(BrokerLM):
    """An Anthropic client; the key defaults to ``ANTHROPIC_API_KEY``.

    ``max_tokens`` is sent with every call unless ``sampling_args`` sets it; system messages of
    a message-list prompt become the request's ``system`` text.
    """

    backend = "anthropic"

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        max_tokens: int = 32768,
        **kwargs: Any,
    ) -> None:
        if api_key is not None:
            kwargs["api_key"] = api_key
        self.max_tokens = max_tokens
        super().__init__(model_name, **kwargs)

    def _call_sampling(self) -> dict[str, Any]:
        sampling = super()._call_sampling()
        if "max_tokens" not in (self._backend_kwargs.get("sampling") or {}):
            sampling.setdefault("max_tokens", self.max_tokens)
        return sampling
