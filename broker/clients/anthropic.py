"""Anthropic Messages API client over ``anthropic.AsyncAnthropic`` (extra: ``rlm[anthropic]``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from rlm.broker.clients.base import (
    LMClient,
    LMResponse,
    LMUsage,
    Messages,
    PermanentError,
    ProviderError,
    TransientError,
    parse_retry_after,
    split_known_kwargs,
)
from rlm.errors import ConfigurationError

__all__ = ["AnthropicClient", "to_anthropic_messages"]

DEFAULT_MAX_TOKENS = 4096


def _import_anthropic() -> Any:
    try:
        import anthropic
    except ImportError as exc:
        raise ConfigurationError(
            "the 'anthropic' backend needs the Anthropic SDK: pip install 'rlm[anthropic]'"
        ) from exc
    return anthropic


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


def to_anthropic_messages(messages: Messages) -> tuple[str | None, list[dict[str, Any]]]:
    """Split OpenAI-style messages into Anthropic's ``system`` text and ``messages``.

    System messages (wherever they are) are joined into ``system``; consecutive messages of the
    same role are merged, since the API expects user and assistant turns to alternate.
    """
    system_parts: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        text = _text(message.get("content"))
        if role in ("system", "developer"):
            system_parts.append(text)
            continue
        if role not in ("user", "assistant"):
            raise ConfigurationError(f"Anthropic messages cannot have role {role!r}")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    return ("\n\n".join(system_parts) if system_parts else None), turns


class AnthropicClient(LMClient):
    """Claude models over the Anthropic Messages API.

    System messages go to ``system=``; ``max_tokens`` defaults to 4096 (the API requires one).
    The key comes from ``api_key`` or ``ANTHROPIC_API_KEY``.
    """

    backend: ClassVar[str] = "anthropic"
    key_env: ClassVar[str | None] = "ANTHROPIC_API_KEY"

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
        self._sdk = _import_anthropic()
        api_key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not api_key:
            raise ConfigurationError(
                "backend 'anthropic' needs an API key: set the ANTHROPIC_API_KEY environment "
                "variable or backend_kwargs['api_key']"
            )
        self.base_url = base_url
        self._client = self._sdk.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=self.timeout,
            max_retries=0,  # retries are LMClient's
            default_headers=dict(extra_headers) if extra_headers else None,
        )

    def _base_url_hint(self) -> str:
        return str(self._client.base_url)

    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        sdk = self._sdk
        system, turns = to_anthropic_messages(messages)
        if system is not None:
            sampling["system"] = system
        sampling.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
        if "stop" in sampling:  # the OpenAI name, for code that switches backends
            stop = sampling.pop("stop")
            sampling["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        try:
            create = self._client.messages.create
            message = await create(
                model=self.model_name, messages=turns, **split_known_kwargs(create, sampling)
            )
        except sdk.APIStatusError as exc:
            raise ProviderError.from_status(
                exc.status_code,
                getattr(exc, "api_message", None) or exc.message,
                retry_after=parse_retry_after(exc.response.headers),
            ) from exc
        except sdk.APIConnectionError as exc:  # includes APITimeoutError
            raise TransientError(exc.message, connection=True) from exc
        except sdk.APIError as exc:  # e.g. a response that does not parse
            raise PermanentError(f"{type(exc).__name__}: {exc.message}") from exc
        text = "".join(
            block.text for block in message.content if getattr(block, "type", None) == "text"
        )
        usage = message.usage
        input_tokens = (
            (usage.input_tokens or 0)
            + (getattr(usage, "cache_creation_input_tokens", None) or 0)
            + (getattr(usage, "cache_read_input_tokens", None) or 0)
        )
        return LMResponse(
            text=text,
            model=message.model or self.model_name,
            usage=LMUsage(input_tokens=input_tokens, output_tokens=usage.output_tokens or 0),
        )

    async def _aclose(self) -> None:
        await self._client.close()
