"""Throttling: every cloud adapter waits out a provider that answers "too many requests" (HTTP 429
with Retry-After, gRPC RESOURCE_EXHAUSTED with a retry policy), within bounds, and says so with
:class:`rlm.errors.SandboxThrottledError` when the provider keeps refusing.

The stand-ins throttle the way each service does (``Shaping(throttle_every=N)``, see
:mod:`rlm_standins._shaping`); the parametrised tests run for each provider whose SDK is
installed here (e2b and prime in their own venvs: ``test_isolated_sdks.py``).
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import pytest
from conftest import CLOUD_PROVIDERS, start_environment, usable_cloud_fixture
from rlm_standins._shaping import Shaping

from rlm.broker.loop import run_sync
from rlm.environments import environment_class
from rlm.environments.throttling import (
    RetryPolicy,
    Throttled,
    call_with_retries,
    parse_retry_after,
    retry_after_from_headers,
)
from rlm.errors import SandboxThrottledError


class Refused(Exception):
    pass


def _run(call: Any, throttled: Any, policy: RetryPolicy) -> tuple[Any, list[float]]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    async def go() -> Any:
        return await call_with_retries(
            call,
            throttled,
            provider="Acme",
            action="creating the sandbox",
            policy=policy,
            sleep=sleep,
        )

    return asyncio.run(go()), waits


def test_a_throttled_call_is_tried_again_after_the_wait_the_provider_named():
    answers: list[Any] = [Refused(2.5), Refused(None), "sandbox"]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Refused):
            raise answer
        return answer

    def throttled(error: BaseException) -> Throttled | None:
        return Throttled(error.args[0]) if isinstance(error, Refused) else None

    result, waits = _run(call, throttled, RetryPolicy(base_delay=0.5))
    assert result == "sandbox"
    # The named wait exactly; without one, a jittered backoff from base_delay * 2 ** 1.
    assert waits[0] == 2.5
    assert 0.5 <= waits[1] <= 1.0


def test_a_provider_that_keeps_throttling_gives_a_typed_error_within_bounds():
    calls = 0

    async def call() -> None:
        nonlocal calls
        calls += 1
        raise Refused(1.0)

    with pytest.raises(SandboxThrottledError) as caught:
        _run(call, lambda e: Throttled(1.0), RetryPolicy(attempts=4, budget=100))
    error = caught.value
    assert calls == 4 and (error.attempts, error.waited, error.retry_after) == (4, 3.0, 1.0)
    assert error.provider == "Acme" and error.action == "creating the sandbox"
    assert "Acme kept throttling creating the sandbox: 4 attempts over 3.0 s" in str(error)
    assert isinstance(error.__cause__, Refused)

    # A wait longer than the budget left is not sat through: it gives up at once.
    with pytest.raises(SandboxThrottledError) as caught:
        _run(call, lambda e: Throttled(500.0), RetryPolicy(attempts=10, budget=60))
    assert caught.value.attempts == 1 and caught.value.waited == 0


def test_other_errors_are_not_retried():
    async def call() -> None:
        raise ValueError("bad request")

    with pytest.raises(ValueError, match="bad request"):
        _run(call, lambda e: None, RetryPolicy())


def test_retry_after_in_seconds_or_as_a_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31  # type: ignore[operator]
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert parse_retry_after("-4") == 0.0
    assert retry_after_from_headers({"retry-after": "7"}) == 7.0
    assert retry_after_from_headers({"Content-Type": "x"}) is None


def test_the_shaping_names_its_retry_after_in_whole_seconds():
    assert Shaping.parse("throttle=3,retry_after=1.5") == Shaping(throttle_every=3, retry_after=1.5)
    assert Shaping(retry_after=1.5).retry_after_header == "2"
    assert Shaping(retry_after=0).retry_after_header == "0"


def _throttled_count(server: Any) -> int:
    count = server.throttled_calls
    return count if isinstance(count, int) else len(count)


@pytest.mark.parametrize("name", CLOUD_PROVIDERS)
def test_a_throttling_provider_is_waited_out(name, broker, handler):
    """Every other throttleable request is refused (429 + Retry-After, or RESOURCE_EXHAUSTED with
    a retry policy): the sandbox still starts, takes a context in parts and answers."""
    module = usable_cloud_fixture(name)
    shaping = Shaping(throttle_every=2, retry_after=0.3)
    with module.running_standin(shaping=shaping) as (server, kwargs):
        env = start_environment(name, broker, handler, **kwargs)
        try:
            size = environment_class(name).part_bytes() * 2 + 10
            run_sync(env.load_context("t" * (size - 3) + "END"))
            result = run_sync(env.execute("print(len(context), context[-3:])"))
            assert result.stdout == f"{size} END\n", result
        finally:
            run_sync(env.aclose())
            run_sync(broker.aclose_resources())  # the tree's sandbox goes with the tree
        assert _throttled_count(server) >= 2, "the stand-in throttled nothing"
        assert server.live_sandboxes() == []


@pytest.mark.parametrize("name", CLOUD_PROVIDERS)
def test_a_provider_that_keeps_throttling_fails_with_a_typed_error(name, broker, handler):
    module = usable_cloud_fixture(name)
    with module.running_standin(shaping=Shaping(throttle_every=1, retry_after=0)) as (
        server,
        kwargs,
    ):
        # Modal's SDK waits out throttling for as long as MODAL_MAX_THROTTLE_WAIT allows (by
        # default for ever); the adapter's retries take over once it gives up.
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MODAL_MAX_THROTTLE_WAIT", "1")
            cls = environment_class(name)
            env = cls(broker=broker, handler=handler, label="test", **kwargs)
            env.throttle_policy = RetryPolicy(attempts=3, base_delay=0.01, budget=30)
            try:
                with pytest.raises(SandboxThrottledError) as caught:
                    run_sync(env.start())
            finally:
                run_sync(env.aclose())
                run_sync(broker.aclose_resources())
        error = caught.value
        assert error.provider == cls.provider and error.attempts == 3, error
        assert "kept throttling" in str(error) and "higher rate limit" in str(error)
        assert _throttled_count(server) >= 3
        assert server.live_sandboxes() == []
