"""Routes LM calls to the right client, bounds their concurrency and charges their usage."""

from __future__ import annotations

import asyncio
from typing import Any

from rlm.errors import ConfigurationError, TimeoutExceededError

from . import pricing
from .accounting import Ledger
from .clients.base import LMClient, LMResponse, Messages


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

    async def complete(
        self,
        messages: Messages,
        *,
        ledger: Ledger,
        depth: int,
        model: str | None = None,
        **sampling: Any,
    ) -> LMResponse:
        """One LM call, fail-closed: limits are checked before and charged after."""
        ledger.check()
        client = self.client_for(model, depth)
        if ledger.needs_cost() and not self._cost_known(client):
            raise ConfigurationError(
                f"max_budget is set but the price of model {client.model_name!r} is unknown; "
                "pass backend_kwargs={'price_per_million': (input_usd, output_usd)}"
            )
        remaining = ledger.remaining_seconds()
        async with self._semaphore:
            try:
                response = await asyncio.wait_for(client.acomplete(messages, **sampling), remaining)
            except TimeoutError:
                ledger.check()
                raise TimeoutExceededError("max_timeout reached during an LM call") from None
        cost = pricing.cost_of(
            client.model_name, response.usage, getattr(client, "price_per_million", None)
        )
        ledger.charge(
            client.model_name, response.usage.input_tokens, response.usage.output_tokens, cost
        )
        return response

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
