"""The price table and how a call's cost is decided."""

from __future__ import annotations

import pytest

from rlm.broker.clients.base import LMUsage
from rlm.broker.pricing import PRICES, cost_of, price_for


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", (2.50, 10.00)),
        ("gpt-4o-2024-08-06", (2.50, 10.00)),
        ("gpt-4o-mini", (0.15, 0.60)),
        ("gpt-4o-mini-2024-07-18", (0.15, 0.60)),
        ("openai/gpt-4.1-mini", (0.40, 1.60)),
        ("gpt-4.1-nano-2025-04-14", (0.10, 0.40)),
        ("gpt-5", (1.25, 10.00)),
        ("gpt-5-mini", (0.25, 2.00)),
        ("gpt-5-nano-2025-08-07", (0.05, 0.40)),
        ("o3", (2.00, 8.00)),
        ("o3-mini", (1.10, 4.40)),
        ("o4-mini-2025-04-16", (1.10, 4.40)),
        ("claude-opus-4-20250514", (15.00, 75.00)),
        ("claude-opus-4-1-20250805", (15.00, 75.00)),
        ("anthropic/claude-opus-4.5", (5.00, 25.00)),
        ("claude-sonnet-4-5-20250929", (3.00, 15.00)),
        ("anthropic/claude-sonnet-4", (3.00, 15.00)),
        ("claude-haiku-4-5", (1.00, 5.00)),
        ("claude-3-7-sonnet-20250219", (3.00, 15.00)),
        ("claude-3-5-haiku-latest", (0.80, 4.00)),
        ("gemini-2.5-pro", (1.25, 10.00)),
        ("models/gemini-2.5-flash", (0.30, 2.50)),
        ("google/gemini-2.5-flash-lite", (0.10, 0.40)),
        ("gemini-2.5-flash-preview-09-2025", (0.30, 2.50)),
        ("GPT-4o", (2.50, 10.00)),
        ("openai/gpt-4o-mini:free", (0.15, 0.60)),
    ],
)
def test_known_models_are_priced(model: str, expected: tuple[float, float]) -> None:
    assert price_for(model) == expected


@pytest.mark.parametrize(
    "model",
    [
        "llama-3.1-8b-instruct",
        "gpt-4",  # not in the table; must not borrow gpt-4o's or gpt-4.1's price
        "gpt-4oxyz",
        "claude-opus-4-6",  # an unknown newer version must not take claude-opus-4's price
        "gpt-5.1",
        "",
    ],
)
def test_unknown_models_are_not_priced(model: str) -> None:
    assert price_for(model) is None


def test_table_is_sane() -> None:
    for model, (input_usd, output_usd) in PRICES.items():
        assert model == model.lower() and "." not in model, model
        assert 0 < input_usd <= output_usd, model


def test_cost_prefers_reported_then_override_then_table() -> None:
    usage = LMUsage(input_tokens=2_000_000, output_tokens=1_000_000)
    assert cost_of("gpt-4o", usage) == pytest.approx(2 * 2.50 + 10.00)
    assert cost_of("gpt-4o", usage, (1.0, 1.0)) == pytest.approx(3.0)
    reported = LMUsage(input_tokens=2_000_000, output_tokens=1_000_000, cost=0.01)
    assert cost_of("gpt-4o", reported, (1.0, 1.0)) == 0.01
    assert cost_of("my-local-model", usage) is None
    assert cost_of("my-local-model", usage, (0.0, 0.0)) == 0.0
