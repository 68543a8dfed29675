"""The LM client base class: one async call, with the project's single retry policy.

A provider file only says how to make one attempt (``_call``) and how to classify its SDK's
exceptions: it raises ``TransientError`` for failures worth retrying (HTTP 408/409/429/5xx,
timeouts, dropped connections) and ``PermanentError`` for the rest. ``LMClient.acomplete`` retries
transient failures with exponential backoff and full jitter, honours ``retry-after``, and turns the
final failure into ``LMError`` (``LMAuthenticationError`` for 401/403) with a hint on what to do.
The SDKs' own retries are switched off so these are the only ones.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rlm.errors import ConfigurationError, LMAuthenticationError, LMError

__all__ = [
    "LMClient",
    "LMResponse",
    "LMUsage",
    "Messages",
    "PermanentError",
    "ProviderError",
    "TransientError",
    "connection_refused",
    "is_transient_status",
    "parse_retry_after",
    "split_known_kwargs",
]

Messages = list[dict[str, Any]]
"""OpenAI-style messages: ``[{"role": "system" | "user" | "assistant", "content": str}]``."""

MAX_RETRY_AFTER = 60.0
"""The longest ``retry-after`` we honour, in seconds; a longer one is cut to this."""


@dataclass(frozen=True)
class LMUsage:
    """Tokens one call used, and its cost in USD when the provider reported one."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class LMResponse:
    """The text one call produced, the model that produced it, and that call's own usage."""

    text: str
    model: str
    usage: LMUsage


class ProviderError(Exception):
    """One failed attempt, classified by a client subclass (internal to the clients)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        connection: bool = False,
        refused: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.connection = connection
        self.refused = refused

    @classmethod
    def from_status(
        cls, status: int, message: str, *, retry_after: float | None = None
    ) -> ProviderError:
        """A ``TransientError`` or ``PermanentError`` depending on the HTTP status."""
        kind = TransientError if is_transient_status(status) else PermanentError
        return kind(message, status=status, retry_after=retry_after)


class TransientError(ProviderError):
    """An attempt failed in a way worth retrying (rate limit, overload, timeout, network)."""


class PermanentError(ProviderError):
    """An attempt failed in a way that retrying cannot fix (bad request, auth, unknown model)."""


def connection_refused(exc: BaseException) -> bool:
    """Whether ``exc`` was caused by a refused TCP connection (nothing listening there)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ConnectionRefusedError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def is_transient_status(status: int) -> bool:
    """Whether an HTTP status is worth retrying: 408, 409, 429 and every 5xx."""
    return status in (408, 409, 429) or status >= 500


def split_known_kwargs(function: Callable[..., Any], sampling: Mapping[str, Any]) -> dict[str, Any]:
    """Keep the keyword arguments ``function`` accepts; move the rest into ``extra_body``.

    Sampling arguments a server understands but the SDK does not declare (vLLM's ``top_k``,
    ``temperature`` on SDKs that dropped it) then still reach the server instead of raising.
    """
    parameters = inspect.signature(function).parameters
    known = {k: v for k, v in sampling.items() if k in parameters}
    unknown = {k: v for k, v in sampling.items() if k not in parameters}
    if unknown:
        known["extra_body"] = {**unknown, **(known.get("extra_body") or {})}
    return known


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class LMClient(ABC):
    """An async LM client held by the broker: ``await client.acomplete(messages)``.

    Subclasses implement ``_call`` (one attempt) and set ``backend`` and ``key_env`` (the
    environment variable an auth error should point at). ``sampling`` holds default sampling
    arguments (``temperature``, ``max_tokens``, ...) that per-call arguments override.
    ``price_per_million`` = ``(input_usd, output_usd)`` prices a model the price table lacks.
    """

    backend: ClassVar[str] = ""
    key_env: ClassVar[str | None] = None
    reports_cost: bool = False
    """True where the provider reports each call's USD cost (so no price is needed)."""

    def __init__(
        self,
        model_name: str,
        *,
        timeout: float = 300.0,
        max_retries: int = 4,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        sampling: Mapping[str, Any] | None = None,
        price_per_million: tuple[float, float] | None = None,
    ) -> None:
        if not isinstance(model_name, str) or not model_name:
            raise ConfigurationError(
                f"backend {self.backend!r} needs backend_kwargs['model_name'] (a model id string)"
            )
        if max_retries < 0 or initial_backoff < 0 or max_backoff < 0 or timeout <= 0:
            raise ConfigurationError(
                "max_retries, initial_backoff and max_backoff must be >= 0 and timeout > 0"
            )
        if price_per_million is not None:
            try:
                price_per_million = (float(price_per_million[0]), float(price_per_million[1]))
            except (TypeError, ValueError, IndexError):
                raise ConfigurationError(
                    "price_per_million must be (input_usd, output_usd) per million tokens, "
                    f"got {price_per_million!r}"
                ) from None
        self.model_name = model_name
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.initial_backoff = float(initial_backoff)
        self.max_backoff = float(max_backoff)
        self.sampling: dict[str, Any] = dict(sampling or {})
        self.price_per_million = price_per_million
        # Held and closed at interpreter exit if nobody closed it, even when the caller dropped
        # it: scripts that never call close() (every example of the reference package) leave
        # no "Unclosed client session" behind.
        from rlm.broker import cleanup

        cleanup.track(self, until_closed=True)

    close_order = 100
    """Closed after the sandboxes and brokers that may still be using it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_name={self.model_name!r})"

    def output_cap_param(self) -> str:
        """The sampling argument that caps a call's output tokens at the provider."""
        return "max_tokens"

    async def acomplete(self, messages: Messages, **sampling: Any) -> LMResponse:
        """Complete ``messages``, retrying transient failures; raise ``LMError`` on the last."""
        merged = {**self.sampling, **sampling}
        attempt = 0
        while True:
            try:
                return await self._call(messages, **merged)
            except TransientError as exc:
                if attempt >= self.max_retries:
                    raise self._final_error(exc, attempt + 1) from exc
                await asyncio.sleep(self._backoff(attempt, exc.retry_after))
                attempt += 1
            except PermanentError as exc:
                raise self._final_error(exc, attempt + 1) from exc

    @abstractmethod
    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        """Make one attempt; raise ``TransientError`` or ``PermanentError`` when it fails."""

    async def aclose(self) -> None:
        """Release the client's connections."""
        from rlm.broker import cleanup

        cleanup.untrack(self)
        await self._aclose()

    async def _aclose(self) -> None:  # noqa: B027 - a no-op default subclasses may override
        """Close what the provider's SDK holds (its HTTP session)."""

    async def __aenter__(self) -> LMClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def cost_of(self, response: LMResponse) -> float | None:
        """USD cost of ``response``: reported, else ``price_per_million``, else the price table."""
        from rlm.broker.pricing import cost_of

        return cost_of(response.model, response.usage, self.price_per_million)

    # -- retry policy --------------------------------------------------------------------------

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry ``attempt + 1``: ``retry-after`` or full jitter."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        ceiling = min(self.max_backoff, self.initial_backoff * (2**attempt))
        return random.uniform(0, ceiling)

    def _base_url_hint(self) -> str:
        """Where the client connects, for error messages (overridden by HTTP clients)."""
        return ""

    def _final_error(self, exc: ProviderError, attempts: int) -> LMError:
        where = f"{self.backend} model {self.model_name!r}"
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        status = f"HTTP {exc.status}" if exc.status is not None else "no HTTP response"
        text = f"{where} failed{tries} ({status}): {exc.message}"
        if exc.status in (401, 403):
            fix = f"set the {self.key_env} environment variable or " if self.key_env else "set "
            return LMAuthenticationError(
                f"{text}. The API key was refused: {fix}backend_kwargs['api_key'].",
                model=self.model_name,
                status=exc.status,
            )
        return LMError(f"{text}. {self._hint(exc)}", model=self.model_name, status=exc.status)

    def _hint(self, exc: ProviderError) -> str:
        base_url = self._base_url_hint()
        at = f" ({base_url})" if base_url else ""
        if exc.connection and exc.refused:
            return (
                f"Nothing is listening at {base_url or 'the server'}: start the server, or "
                "check base_url in backend_kwargs (host and port)."
            )
        if exc.connection or exc.status is None:
            return (
                f"Could not reach the server{at}: check base_url in backend_kwargs and that the "
                "server is running, or raise 'timeout' if it is slow."
            )
        if exc.status == 404:
            return f"Check backend_kwargs['model_name'] and base_url{at}."
        if exc.status == 429:
            return "Rate limited: lower the concurrency or raise backend_kwargs['max_retries']."
        if exc.status >= 500 or is_transient_status(exc.status):
            return "The provider kept failing; raise backend_kwargs['max_retries'] or retry later."
        return "Check the messages and sampling arguments sent to the model."
