"""The reference's request/response helpers for an ``LMHandler``, by name.

In the reference these frame JSON over a TCP socket to the handler. Here a handler's ``address``
names a live handler of this process (no socket is opened, nothing listens on a port), and the
helpers call it directly: same types, same results, one error path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlm.types import RLMChatCompletion

__all__ = ["LMRequest", "LMResponse", "send_lm_request", "send_lm_request_batched"]


@dataclass
class LMRequest:
    """One prompt (``prompt``) or several (``prompts``) for the handler's client at ``depth``."""

    prompt: str | dict[str, Any] | list[Any] | None = None
    prompts: list[Any] | None = None
    model: str | None = None
    depth: int = 0

    @property
    def is_batched(self) -> bool:
        return bool(self.prompts)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"depth": self.depth}
        for name in ("prompt", "prompts", "model"):
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMRequest:
        return cls(
            prompt=data.get("prompt"),
            prompts=data.get("prompts"),
            model=data.get("model"),
            depth=data.get("depth", 0),
        )


@dataclass
class LMResponse:
    """A completion (``chat_completion``), several (``chat_completions``) or an ``error``."""

    error: str | None = None
    chat_completion: RLMChatCompletion | None = None
    chat_completions: list[RLMChatCompletion] | None = None

    @property
    def success(self) -> bool:
        return self.error is None

    @property
    def is_batched(self) -> bool:
        return self.chat_completions is not None

    def to_dict(self) -> dict[str, Any]:
        if self.error is None and self.chat_completion is None and self.chat_completions is None:
            return LMResponse.error_response("No chat completion or error provided.").to_dict()
        return {
            "error": self.error,
            "chat_completion": None
            if self.error is not None or self.chat_completion is None
            else self.chat_completion.to_dict(),
            "chat_completions": None
            if self.error is not None or self.chat_completions is None
            else [c.to_dict() for c in self.chat_completions],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMResponse:
        single = data.get("chat_completion")
        many = data.get("chat_completions")
        return cls(
            error=data.get("error"),
            chat_completion=RLMChatCompletion.from_dict(single) if single else None,
            chat_completions=[RLMChatCompletion.from_dict(c) for c in many] if many else None,
        )

    @classmethod
    def success_response(cls, chat_completion: RLMChatCompletion) -> LMResponse:
        return cls(chat_completion=chat_completion)

    @classmethod
    def batched_success_response(cls, chat_completions: list[RLMChatCompletion]) -> LMResponse:
        return cls(chat_completions=chat_completions)

    @classmethod
    def error_response(cls, error: str) -> LMResponse:
        return cls(error=error)


def _handler(address: Any) -> Any:
    from rlm.core.lm_handler import lookup_handler

    handler = lookup_handler(address)
    if handler is None:
        raise ConnectionError(f"no running LMHandler at {address!r} (stopped, or never started)")
    return handler


def _one(completion: RLMChatCompletion) -> LMResponse:
    if completion.error is not None:
        return LMResponse.error_response(completion.error)
    return LMResponse.success_response(completion)


def send_lm_request(
    address: Any, request: LMRequest, timeout: int = 300, depth: int | None = None
) -> LMResponse:
    """Sends ``request`` to the handler at ``address``; failures come back as ``error``."""
    try:
        if depth is not None:
            request.depth = depth
        handler = _handler(address)
        if request.is_batched:
            completions = handler.complete_batch(request.prompts, request.model, request.depth)
            return LMResponse.batched_success_response(completions)
        (completion,) = handler.complete_batch([request.prompt], request.model, request.depth)
        return _one(completion)
    except Exception as error:
        return LMResponse.error_response(f"Request failed: {error}")


def send_lm_request_batched(
    address: Any,
    prompts: list[Any],
    model: str | None = None,
    timeout: int = 300,
    depth: int = 0,
) -> list[LMResponse]:
    """One response per prompt, in order; a failed prompt does not fail the others."""
    try:
        completions = _handler(address).complete_batch(prompts, model, depth)
    except Exception as error:
        return [LMResponse.error_response(f"Request failed: {error}")] * len(prompts)
    return [_one(c) for c in completions]
