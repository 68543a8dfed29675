"""Token counts and model context sizes (reference names).

``count_tokens`` uses ``tiktoken`` when it is installed and its encoding is available (it is never
required); otherwise it estimates :data:`CHARS_PER_TOKEN_ESTIMATE` characters per token.
"""

from __future__ import annotations

from functools import cache
from typing import Any

DEFAULT_CONTEXT_LIMIT = 128_000
"""Context size in tokens assumed for a model that is not in :data:`MODEL_CONTEXT_LIMITS`."""

CHARS_PER_TOKEN_ESTIMATE = 4
"""Characters per token used when no tokenizer is available."""

MODEL_CONTEXT_LIMITS: dict[str, int] = {
    # OpenAI
    "gpt-5": 272_000,
    "gpt-5-mini": 272_000,
    "gpt-5-nano": 272_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    # Anthropic
    "claude-2": 100_000,
    "claude-2.1": 200_000,
    "claude-3": 200_000,
    "claude-3-5": 200_000,
    "claude-sonnet-4": 200_000,
    "claude-opus-4": 200_000,
    # Google
    "gemini-1.0-pro": 30_720,
    "gemini-1.5": 1_000_000,
    "gemini-2.0": 1_000_000,
    "gemini-2.5": 1_000_000,
    # Open-weight families
    "qwen3": 128_000,
    "qwen3-8b": 32_768,
    "qwen3-max": 256_000,
    "kimi": 128_000,
    "kimi-k2-thinking": 256_000,
    "kimi-k2-0905": 256_000,
    "kimi-k2.5": 262_000,
    "glm": 128_000,
    "glm-4.6": 200_000,
}
"""Input context sizes in tokens. A key matches any model name containing it (so ``"gpt-4o"``
matches ``"openai/gpt-4o-2024-08-06"``); the longest matching key wins."""


def get_context_limit(model_name: str) -> int:
    """The context size in tokens of ``model_name`` (:data:`DEFAULT_CONTEXT_LIMIT` if unknown)."""
    if not model_name or model_name == "unknown":
        return DEFAULT_CONTEXT_LIMIT
    if model_name in MODEL_CONTEXT_LIMITS:
        return MODEL_CONTEXT_LIMITS[model_name]
    matches = [key for key in MODEL_CONTEXT_LIMITS if key in model_name]
    if not matches:
        return DEFAULT_CONTEXT_LIMIT
    return MODEL_CONTEXT_LIMITS[max(matches, key=len)]


@cache
def _encoding(model_name: str) -> Any | None:
    """The tiktoken encoding for ``model_name``, or None when tiktoken or its data is missing
    (the answer is remembered, so a missing download is tried once per model)."""
    try:
        import tiktoken
    except ImportError:
        return None
    try:
        return tiktoken.encoding_for_model(model_name)
    except Exception:
        try:
            return tiktoken.get_encoding("cl100k_base")
        except Exception:
            return None


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return str(content)


def count_tokens(messages: list[dict[str, Any]], model_name: str) -> int:
    """Tokens in a chat ``messages`` list: exact with tiktoken (plus the usual per-message
    overhead), else ``ceil(characters / CHARS_PER_TOKEN_ESTIMATE)`` over the contents."""
    if not messages:
        return 0
    encoding = _encoding(model_name) if model_name and model_name != "unknown" else None
    if encoding is not None:
        total = 0
        for message in messages:
            total += 3 + len(encoding.encode(_text_of(message.get("content"))))
            if message.get("name"):
                total += 1
        return total
    characters = 0
    for message in messages:
        content = message.get("content") or ""
        characters += len(content if isinstance(content, str) else str(content))
    return -(-characters // CHARS_PER_TOKEN_ESTIMATE)


__all__ = [
    "CHARS_PER_TOKEN_ESTIMATE",
    "DEFAULT_CONTEXT_LIMIT",
    "MODEL_CONTEXT_LIMITS",
    "count_tokens",
    "get_context_limit",
]
