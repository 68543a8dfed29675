"""USD prices per million tokens for well-known models, so ``max_budget`` works without a
provider-reported cost.

A call's cost is, in order: the cost the provider reported (OpenRouter does), else the user's
``backend_kwargs["price_per_million"] = (input_usd, output_usd)``, else this table, else unknown.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rlm.broker.clients.base import LMUsage

__all__ = ["PRICES", "cost_of", "price_for"]

# (input, output) USD per 1M tokens, standard (non-batch, non-cached) tier, as published on the
# providers' pricing pages in 2025; table written 2026-11-24. Prices change: users override
# them with backend_kwargs["price_per_million"]. Keys use "-" where model ids use "." (4.1, 2.5).
PRICES: dict[str, tuple[float, float]] = {
    # OpenAI
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4-1": (2.00, 8.00),
    "gpt-4-1-mini": (0.40, 1.60),
    "gpt-4-1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-pro": (15.00, 120.00),
    "o3": (2.00, 8.00),
    "o3-mini": (1.10, 4.40),
    "o3-pro": (20.00, 80.00),
    "o4-mini": (1.10, 4.40),
    # Anthropic
    "claude-opus-4": (15.00, 75.00),
    "claude-opus-4-1": (15.00, 75.00),
    "claude-opus-4-5": (5.00, 25.00),
    "claude-sonnet-4": (3.00, 15.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-3-7-sonnet": (3.00, 15.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    # Google (Gemini 2.5 Pro: the <= 200k-token prompt tier)
    "gemini-2-5-pro": (1.25, 10.00),
    "gemini-2-5-flash": (0.30, 2.50),
    "gemini-2-5-flash-lite": (0.10, 0.40),
}

# After a known prefix, "-6" or "-1" names another version ("claude-opus-4-6", "gpt-5-1"), whose
# price we do not know; a date ("-20250514"), a tag ("-preview", ":free") or nothing is the same
# model.
_OTHER_VERSION = re.compile(r"^-\d{1,2}(?!\d)")


def _normalise(model: str) -> str:
    name = model.strip().lower().rsplit("/", 1)[-1]  # "openai/gpt-4o", "models/gemini-2.5-pro"
    return name.replace(".", "-")


@functools.lru_cache(maxsize=1024)
def price_for(model: str) -> tuple[float, float] | None:
    """``(input_usd, output_usd)`` per million tokens for ``model``, or None if unknown.

    Matched by the longest known prefix after dropping a provider prefix such as "anthropic/".
    Remembered per model name (the table is fixed; each call charged looks it up).
    """
    name = _normalise(model)
    best: str | None = None
    for key in PRICES:
        if not name.startswith(key) or (best is not None and len(key) <= len(best)):
            continue
        rest = name[len(key) :]
        if rest and (rest[0] not in "-:@_" or _OTHER_VERSION.match(rest)):
            continue
        best = key
    return PRICES[best] if best is not None else None


def cost_of(
    model: str, usage: LMUsage, override: tuple[float, float] | None = None
) -> float | None:
    """USD cost of one call: reported cost, else ``override``, else the table, else None."""
    if usage.cost is not None:
        return usage.cost
    prices = override if override is not None else price_for(model)
    if prices is None:
        return None
    input_usd, output_usd = prices
    return (usage.input_tokens * input_usd + usage.output_tokens * output_usd) / 1_000_000
