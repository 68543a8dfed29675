"""Routes LM calls to the right client, bounds their concurrency and charges their usage."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from rlm.errors import ConfigurationError, LMError, TimeoutExceededError

from . import pricing
from .accounting import Ledger, Reservation
from .clients.base import LMClient, LMResponse, Messages

DEFAULT_OUTPUT_CAP = 8192
"""Output tokens a call may produce when a budget or token cap is set and the call names no
``max_tokens`` of its own: the cap is sent to the provider, so it bounds the worst case."""
MIN_OUTPUT_TOKENS = 16
"""A call is refused, not started, when fewer output tokens than this fit in what is left."""
TOKENS_PER_MESSAGE = 16
"""Chat-template overhead per message, an upper bound over the providers' formats."""


def input_token_bound(messages: Messages) -> int:
    """An upper bound on the input tokens of ``messages``: every tokenizer the providers use
    maps at least one byte to a token, so the UTF-8 size of the text bounds it."""
    total = TOKENS_PER_MESSAGE
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        total += (len(text) if text.isascii() else len(text.encode("utf-8"))) + TOKENS_PER_MESSAGE
    return total


class LMRouter:
    """Holds the clients of one RLM tree.

    Root calls (depth 0) go to the main backend; sub-calls go to the first of ``other_backends``
    when there is one, else to the main backend; ``model=`` picks a client by its model name.
    """

    def __init__(
        self, root: LMClient, others: list[LMClient] | None = None, *, max_concurrency: int = 64
    ) -> None:
        if max_concurrency < 1:
            raise ConfigurationError("max_concurrent_lm_calls must be at least 1")
        self.root = root
        self.others = list(others or [])
        self._semaphore = asyncio.Semaphore(max_concurrency)

    @property
    def clients(self) -> list[LMClient]:
        return [self.root, *self.others]

    def client_for(self, model: str | None, depth: int) -> LMClient:
        if model:
            for client in self.clients:
                if client.model_name == model:
                    return client
            known = ", ".join(repr(c.model_name) for c in self.clients)
            raise ConfigurationError(
                f"no backend serves model {model!r}; known models: {known}. Add it with "
                "other_backends=[...] and other_backend_kwargs=[{'model_name': ...}]"
            )
        if depth > 0 and self.others:
            return self.others[0]
        return self.root

    @staticmethod
    def _cost_known(client: LMClient) -> bool:
        return (
            getattr(client, "price_per_million", None) is not None
            or getattr(client, "reports_cost", False)
            or pricing.price_for(client.model_name) is not None
        )

    @staticmethod
    def _worst_case(
        client: LMClient, messages: Messages, sampling: dict[str, Any], ledger: Ledger
    ) -> tuple[dict[str, Any], float, int]:
        """The sampling arguments to send (with an output cap) and the call's worst-case cost
        and tokens. Without a cap of the caller's own, the output is capped at what is left."""
        prices = client.price_per_million or pricing.price_for(client.model_name)
        input_tokens = input_token_bound(messages)
        merged = {**client.sampling, **sampling}
        explicit = merged.get("max_tokens") or merged.get("max_completion_tokens")
        budget_left, tokens_left = ledger.headroom()
        if explicit:
            output_cap = int(explicit)
        else:
            output_cap = DEFAULT_OUTPUT_CAP
            if tokens_left is not None:
                output_cap = min(output_cap, tokens_left - input_tokens)
            if budget_left is not None and prices is not None and prices[1] > 0:
                affordable = (budget_left * 1_000_000 - input_tokens * prices[0]) / prices[1]
                output_cap = min(output_cap, math.floor(affordable + 1e-6))
            # Too little left: reserve() refuses the call with the limit's error.
            output_cap = max(output_cap, MIN_OUTPUT_TOKENS)
            sampling = {**sampling, client.output_cap_param(): output_cap}
        tokens = input_tokens + output_cap
        if prices is not None:
            cost = (input_tokens * prices[0] + output_cap * prices[1]) / 1_000_000
        elif budget_left is not None:
            # Only the provider's report will tell (usage.cost): the call holds all that is
            # left, so such calls run one at a time and the budget still cannot be overrun.
            cost = max(budget_left, 0.0)
        else:
            cost = 0.0
        return sampling, cost, tokens

    async def complete(
        self,
        messages: Messages,
        *,
        ledger: Ledger,
        depth: int,
        model: str | None = None,
        **sampling: Any,
    ) -> LMResponse:
        """One LM call, fail-closed under any concurrency: its worst case is reserved on the
        ledger before it starts, and settled with the reported usage after."""
        ledger.check()
        client = self.client_for(model, depth)
        if ledger.needs_cost() and not self._cost_known(client):
            raise ConfigurationError(
                f"max_budget is set but the price of model {client.model_name!r} is unknown; "
                "pass backend_kwargs={'price_per_million': (input_usd, output_usd)}"
            )
        reservation: Reservation | None = None
        sent = False
        try:
            async with asyncio.timeout(ledger.remaining_seconds()):
                if ledger.needs_cost() or ledger.needs_tokens():
                    requested = sampling

                    def worst_case() -> tuple[float, int]:
                        nonlocal sampling
                        sampling, cost, tokens = self._worst_case(
                            client, messages, requested, ledger
                        )
                        return cost, tokens

                    reservation = await ledger.reserve(worst_case)
                async with self._semaphore:
                    sent = True
                    response = await client.acomplete(messages, **sampling)
        except BaseException as error:
            if reservation is not None:
                # An answered error is not billed; a call cut off after it was sent may be.
                answered = isinstance(error, LMError) and error.status is not None
                reservation.release(billed_maybe=sent and not answered)
            if isinstance(error, TimeoutError):
                ledger.check()
                raise TimeoutExceededError("max_timeout reached during an LM call") from None
            raise
        cost = pricing.cost_of(
            client.model_name, response.usage, getattr(client, "price_per_million", None)
        )
        usage = response.usage
        if reservation is not None:
            reservation.settle(client.model_name, usage.input_tokens, usage.output_tokens, cost)
        else:
            ledger.charge(client.model_name, usage.input_tokens, usage.output_tokens, cost)
        return response

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
