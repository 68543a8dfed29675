"""Retrying a provider call that the provider throttled.

Every provider answers too many requests the same way in spirit: HTTP 429 with a ``Retry-After``
header (E2B, Daytona, Prime) or gRPC ``RESOURCE_EXHAUSTED`` with a retry policy (Modal). An
adapter tells :func:`call_with_retries` how to recognise a throttled call of its SDK (a
:class:`Throttled`, with the wait the provider asked for when it named one); the call is then
tried again after that wait (or an exponential backoff with jitter when it named none), a
bounded number of times within a bounded wait, and :class:`rlm.errors.SandboxThrottledError`
says so when the provider keeps refusing. Only calls the provider refused are repeated: a
throttled request was not carried out, so a repeat creates nothing twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from rlm.errors import SandboxThrottledError

T = TypeVar("T")


@dataclass(frozen=True)
class Throttled:
    """A call the provider throttled; ``retry_after`` is the wait it asked for, in seconds."""

    retry_after: float | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """How long a throttled call keeps being tried."""

    #: tries in all, the first included
    attempts: int = 8
    #: the first backoff when the provider names no wait; doubled after each try
    base_delay: float = 0.5
    #: the longest backoff (a ``Retry-After`` is waited in full unless it overruns the budget)
    max_delay: float = 30.0
    #: seconds of waiting in all before giving up
    budget: float = 120.0


DEFAULT_POLICY = RetryPolicy()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` value: delta-seconds (RFC 9110 10.2.3; a decimal
    fraction is accepted too) or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None


def retry_after_from_headers(headers: Mapping[str, Any] | None) -> float | None:
    """The ``Retry-After`` of a response's headers (any capitalisation), in seconds."""
    for name, value in (headers or {}).items():
        if str(name).lower() == "retry-after":
            return parse_retry_after(str(value))
    return None


def backoff(attempt: int, policy: RetryPolicy = DEFAULT_POLICY) -> float:
    """The wait before try ``attempt + 1`` when the provider named none (with jitter)."""
    delay = min(policy.base_delay * 2**attempt, policy.max_delay)
    return delay * random.uniform(0.5, 1.0)


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    throttled: Callable[[BaseException], Throttled | None],
    *,
    provider: str,
    action: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> T:
    """``await call()``, tried again while ``throttled(error)`` says the provider throttled it;
    raises :class:`SandboxThrottledError` once the policy's tries or wait are spent. Any other
    error propagates unchanged."""
    waited = 0.0
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as error:
            throttle = throttled(error)
            if throttle is None:
                raise
            delay = throttle.retry_after
            if delay is None:
                delay = backoff(attempt - 1, policy)
            if attempt >= policy.attempts or waited + delay > policy.budget:
                raise SandboxThrottledError(
                    provider,
                    action,
                    attempts=attempt,
                    waited=waited,
                    retry_after=throttle.retry_after,
                    reason=f"{type(error).__name__}: {error}".splitlines()[0][:200],
                ) from error
            await sleep(delay)
            waited += delay


__all__ = [
    "DEFAULT_POLICY",
    "RetryPolicy",
    "Throttled",
    "backoff",
    "call_with_retries",
    "parse_retry_after",
    "retry_after_from_headers",
]
