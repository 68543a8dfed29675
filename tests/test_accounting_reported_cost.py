"""The rule for a call whose cost nobody can tell under a dollar cap (broker/accounting.py)."""

from __future__ import annotations

import asyncio

from rlm.broker.accounting import Ledger, Limits


def settle(ledger: Ledger, worst_cost: float, cost: float | None) -> None:
    async def call() -> None:
        reservation = await ledger.reserve(lambda: (worst_cost, 100))
        reservation.settle("m", 10, 10, cost)

    asyncio.run(call())


def test_a_reported_cost_replaces_the_worst_case():
    ledger = Ledger(Limits(max_budget=1.0))
    settle(ledger, 0.5, 0.01)
    assert abs(ledger.spent_cost() - 0.01) < 1e-12


def test_no_cost_under_a_budget_keeps_the_worst_case_counted():
    ledger = Ledger(Limits(max_budget=1.0))
    settle(ledger, 0.5, None)
    assert abs(ledger.spent_cost() - 0.5) < 1e-12


def test_no_cost_without_a_budget_counts_nothing():
    ledger = Ledger(Limits(max_tokens=1000))
    settle(ledger, 0.0, None)
    assert ledger.spent_cost() == 0.0
