"""``GeminiClient``: Google Gemini models over the google-genai SDK."""

from __future__ import annotations

from typing import Any

from rlm.clients.base_lm import BrokerLM

__all__ = ["GeminiClient"]


class GeminiClient(BrokerLM):
    """A Gemini client; the key defaults to ``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``).

    System messages of a message-list prompt become the system instruction and ``assistant``
    turns are sent with Gemini's ``model`` role.
    """

    backend = "gemini"

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = "gemini-2.5-flash",
        **kwargs: Any,
    ) -> None:
        if api_key is not None:
            kwargs["api_key"] = api_key
        super().__init__(model_name, **kwargs)
