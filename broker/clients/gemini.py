"""Gemini API client over ``google.genai``'s async surface (extra: ``rlm[gemini]``)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.broker.clients.base import (
    LMClient,
    LMResponse,
    LMUsage,
    Messages,
    ProviderError,
    TransientError,
    parse_retry_after,
)
from rlm.errors import ConfigurationError

__all__ = ["GeminiClient", "to_gemini_contents"]

_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")

# OpenAI-style sampling names -> GenerateContentConfig fields, for code that switches backends.
_SAMPLING_ALIASES = {
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "stop": "stop_sequences",
    "n": "candidate_count",
}


def _import_genai() -> tuple[Any, Any, Any]:
    try:
        from google import genai
        from google.genai import errors, types
    except ImportError as exc:
        raise ConfigurationError(
            "the 'gemini' backend needs the Google Gen AI SDK: pip install 'rlm[gemini]'"
        ) from exc
    return genai, types, errors


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exception classes of whichever HTTP stack google-genai uses."""
    found: list[type[BaseException]] = [asyncio.TimeoutError, ConnectionError]
    for module, name in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("aiohttp", "ClientConnectionError"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(importlib.import_module(module), name))
    return tuple(found)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part if isinstance(part, str) else str(part.get("text", ""))
            for part in content
            if isinstance(part, str | dict)
        )
    return "" if content is None else str(content)


def to_gemini_contents(messages: Messages) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI-style messages into Gemini's ``system_instruction`` and ``contents``.

    ``assistant`` becomes ``model``; consecutive turns of one role are merged.
    """
    system_parts: list[str] = []
    contents: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = _text(message.get("content"))
        if role in ("system", "developer"):
            system_parts.append(text)
            continue
        if role not in ("user", "assistant"):
            raise ConfigurationError(f"Gemini messages cannot have role {role!r}")
        gemini_role = "model" if role == "assistant" else "user"
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].append({"text": text})
        else:
            contents.append({"role": gemini_role, "parts": [{"text": text}]})
    return ("\n\n".join(system_parts) if system_parts else None), contents


class GeminiClient(LMClient):
    """Gemini models over ``client.aio.models.generate_content``.

    The key comes from ``api_key``, ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``. OpenAI-style sampling
    names (``max_tokens``, ``stop``) are translated; other keys go to ``GenerateContentConfig``.
    """

    backend: ClassVar[str] = "gemini"
    key_env: ClassVar[str | None] = "GEMINI_API_KEY"

    def __init__(
        self,
        model_name: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(model_name, **common)
        genai, self._types, self._errors = _import_genai()
        api_key = api_key or next((os.environ[k] for k in _KEY_ENVS if os.environ.get(k)), None)
        if not api_key:
            raise ConfigurationError(
                "backend 'gemini' needs an API key: set the GEMINI_API_KEY (or GOOGLE_API_KEY) "
                "environment variable or backend_kwargs['api_key']"
            )
        self.base_url = base_url
        http_options = self._types.HttpOptions(
            base_url=base_url,
            headers=dict(extra_headers) if extra_headers else None,
            timeout=int(self.timeout * 1000),  # milliseconds
            retry_options=self._types.HttpRetryOptions(attempts=1),  # retries are LMClient's
        )
        self._client = genai.Client(api_key=api_key, http_options=http_options)
        self._connection_errors = _connection_errors()

    def _base_url_hint(self) -> str:
        return self.base_url or "https://generativelanguage.googleapis.com"

    def _config(self, system: str | None, sampling: dict[str, Any]) -> Any:
        fields = {_SAMPLING_ALIASES.get(k, k): v for k, v in sampling.items()}
        if isinstance(fields.get("stop_sequences"), str):
            fields["stop_sequences"] = [fields["stop_sequences"]]
        if system is not None:
            fields["system_instruction"] = system
        try:
            return self._types.GenerateContentConfig(**fields)
        except Exception as exc:  # pydantic's ValidationError; do not import pydantic for it
            raise ConfigurationError(f"bad Gemini sampling arguments {sampling!r}: {exc}") from exc

    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        system, contents = to_gemini_contents(messages)
        config = self._config(system, sampling)
        try:
            response = await self._client.aio.models.generate_content(
                model=self.model_name, contents=contents, config=config
            )
        except self._errors.APIError as exc:
            headers = getattr(getattr(exc, "response", None), "headers", None)
            raise ProviderError.from_status(
                int(exc.code or 500),
                exc.message or str(exc),
                retry_after=parse_retry_after(dict(headers) if headers else None),
            ) from exc
        except self._connection_errors as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}", connection=True) from exc
        text = "".join(
            part.text
            for candidate in (response.candidates or [])[:1]
            for part in ((candidate.content and candidate.content.parts) or [])
            if part.text and not getattr(part, "thought", False)
        )
        meta = response.usage_metadata
        usage = LMUsage()
        if meta is not None:
            usage = LMUsage(
                input_tokens=meta.prompt_token_count or 0,
                # thinking tokens are billed as output
                output_tokens=(meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
            )
        return LMResponse(text=text, model=response.model_version or self.model_name, usage=usage)

    async def _aclose(self) -> None:
        await self._client.aio.aclose()
