"""Usage per call, rolled up from children to parents, and limits enforced fail-closed.

Each RLM run (the root and every child) owns a ``Ledger`` node linked to its parent. A call is
charged to its own node and to every ancestor, so a parent's totals always include its children's;
limits are checked on every node of the chain, so a grandchild cannot spend past the root's cap.

Under concurrency the caps hold by *reservation*: before a call starts, its worst-case cost and
tokens are reserved on every node of the chain (``reserve``); a call whose worst case does not fit
beside what is already spent is refused and the node is marked exhausted; one that fits only once
calls in flight have settled waits for them. After the call, ``Reservation.settle`` replaces the
worst case with what the provider reported. A call that was cancelled or timed out after it was
sent may still be billed, so its worst case stays counted (``uncertain_cost``): fail-closed.
So does a call that came back with no cost anyone can tell (the model's price is unknown and
the endpoint did not report ``usage.cost``, though it was trusted to: ``reports_cost=True``):
its worst case, under a dollar cap everything that was left, is counted as spent.
All of this runs on the broker's one event loop, so a check and its reservation are atomic.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rlm.errors import (
    BudgetExceededError,
    ConfigurationError,
    LimitExceededError,
    TimeoutExceededError,
    TokenLimitExceededError,
)


@dataclass
class ModelUsage:
    """Totals for one model."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    def add(self, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        self.calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost


USD_TOLERANCE = 1e-9
"""Sums of float prices drift in the last digits; a call that fits to a nano-dollar fits."""


@dataclass
class Limits:
    """The caps of one node (None: no cap at this node). Each must be a finite number > 0."""

    max_budget: float | None = None
    max_tokens: int | None = None
    max_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_budget", "max_tokens", "max_timeout"):
            check_limit(name, getattr(self, name))


def check_limit(name: str, value: float | None) -> None:
    """Refuses a cap that would not cap anything: NaN compares false with every number, so a
    NaN budget would let every call through; infinities and values <= 0 are refused too."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"{name} must be a finite number greater than 0, got {value!r}; use None for no limit"
        )


@dataclass
class Reservation:
    """The worst case of one call in flight, held on every node of a chain until settled."""

    ledger: Ledger
    cost: float
    tokens: int
    done: bool = False

    def settle(self, model: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        """The call came back: its reported usage replaces the worst case. Without a cost under
        a dollar cap, the worst case stays counted (the call was billed, for an unknown sum)."""
        self._release(uncertain=False)
        if cost is None and self.ledger.needs_cost():
            for node in self.ledger.chain():
                node.uncertain_cost += self.cost
        self.ledger.charge(model, input_tokens, output_tokens, cost)

    def release(self, *, billed_maybe: bool) -> None:
        """The call failed. ``billed_maybe``: it may have been billed all the same (cancelled
        or timed out after it was sent), so its worst case stays counted against the caps."""
        self._release(uncertain=billed_maybe)

    def _release(self, *, uncertain: bool) -> None:
        if self.done:
            return
        self.done = True
        for node in self.ledger.chain():
            node.reserved_cost -= self.cost
            node.reserved_tokens -= self.tokens
            if uncertain:
                node.uncertain_cost += self.cost
                node.uncertain_tokens += self.tokens
        self.ledger.root().notify_settled()


@dataclass
class Ledger:
    """One run's usage (its own and its descendants') and its limits."""

    limits: Limits = field(default_factory=Limits)
    parent: Ledger | None = None
    label: str = "root"
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    exhausted: LimitExceededError | None = None
    reserved_cost: float = 0.0
    """Worst-case cost of the calls in flight under this node."""
    reserved_tokens: int = 0
    uncertain_cost: float = 0.0
    """Worst-case cost of calls that were cancelled after they were sent (maybe billed)."""
    uncertain_tokens: int = 0
    _settled: asyncio.Event | None = field(default=None, repr=False)

    def child(self, label: str, limits: Limits | None = None) -> Ledger:
        return Ledger(limits=limits or Limits(), parent=self, label=label)

    def chain(self) -> list[Ledger]:
        node: Ledger | None = self
        nodes = []
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes

    @property
    def total_cost(self) -> float:
        return sum(u.cost or 0.0 for u in self.usage.values())

    @property
    def total_tokens(self) -> int:
        return sum(u.input_tokens + u.output_tokens for u in self.usage.values())

    @property
    def total_calls(self) -> int:
        return sum(u.calls for u in self.usage.values())

    def root(self) -> Ledger:
        return self.chain()[-1]

    def spent_cost(self) -> float:
        """What counts against ``max_budget``: reported costs plus maybe-billed calls."""
        return self.total_cost + self.uncertain_cost

    def spent_tokens(self) -> int:
        return self.total_tokens + self.uncertain_tokens

    def needs_cost(self) -> bool:
        """True when some node of the chain has a dollar cap (so cost must be known)."""
        return any(node.limits.max_budget is not None for node in self.chain())

    def deadline(self) -> float | None:
        """The earliest wall-clock deadline (monotonic) over the chain."""
        deadlines = [
            node.started + node.limits.max_timeout
            for node in self.chain()
            if node.limits.max_timeout is not None
        ]
        return min(deadlines) if deadlines else None

    def remaining_seconds(self) -> float | None:
        deadline = self.deadline()
        return None if deadline is None else deadline - time.monotonic()

    def check(self) -> None:
        """Raises the limit error if this node or any ancestor is spent (fail-closed)."""
        for node in self.chain():
            if node.exhausted is not None:
                raise node.exhausted
            timeout = node.limits.max_timeout
            if timeout is not None and time.monotonic() - node.started > timeout:
                node.exhausted = TimeoutExceededError(
                    f"max_timeout of {timeout:g}s reached at {node.label}; raise max_timeout "
                    "or give the model a smaller task"
                )
                raise node.exhausted

    def needs_tokens(self) -> bool:
        """True when some node of the chain caps tokens."""
        return any(node.limits.max_tokens is not None for node in self.chain())

    def headroom(self) -> tuple[float | None, int | None]:
        """The smallest (budget, tokens) left over the chain, ignoring calls in flight; None
        where no node has that cap. What a single call may use at most right now."""
        budget: float | None = None
        tokens: int | None = None
        for node in self.chain():
            if node.limits.max_budget is not None:
                left = node.limits.max_budget - node.spent_cost()
                budget = left if budget is None else min(budget, left)
            if node.limits.max_tokens is not None:
                left_tokens = node.limits.max_tokens - node.spent_tokens()
                tokens = left_tokens if tokens is None else min(tokens, left_tokens)
        return budget, tokens

    def _overrun(self, cost: float, tokens: int, *, in_flight: bool) -> tuple[bool, bool]:
        """Whether a call of this worst case would pass this node's (budget, token) cap, counting
        the calls in flight or not. A spent cap refuses even a call of no known cost."""
        limits = self.limits
        cost_base = self.spent_cost() + (self.reserved_cost if in_flight else 0.0)
        token_base = self.spent_tokens() + (self.reserved_tokens if in_flight else 0)
        over_budget = limits.max_budget is not None and (
            cost_base + cost > limits.max_budget + USD_TOLERANCE
            or self.spent_cost() >= limits.max_budget - USD_TOLERANCE
        )
        over_tokens = limits.max_tokens is not None and (
            token_base + tokens > limits.max_tokens or self.spent_tokens() >= limits.max_tokens
        )
        return over_budget, over_tokens

    def _refusal(self, cost: float, tokens: int) -> LimitExceededError | None:
        """The error for a call whose worst case cannot fit even once every call in flight has
        settled (spending only grows), or None. The nodes it cannot fit are marked exhausted."""
        error: LimitExceededError | None = None
        for node in self.chain():
            over_budget, over_tokens = node._overrun(cost, tokens, in_flight=False)
            if not (over_budget or over_tokens):
                continue
            limits = node.limits
            if over_budget:
                assert limits.max_budget is not None
                refused: LimitExceededError = BudgetExceededError(
                    f"max_budget of ${limits.max_budget:.4f} reached at {node.label}: "
                    f"${node.total_cost:.4f} spent{node._uncertain_note()}, and the next call "
                    f"may cost up to ${cost:.4f}; raise max_budget or use a cheaper model",
                    spent=node.spent_cost(),
                    budget=limits.max_budget,
                )
            else:
                assert limits.max_tokens is not None
                refused = TokenLimitExceededError(
                    f"max_tokens of {limits.max_tokens} reached at {node.label}: "
                    f"{node.total_tokens} tokens used, and the next call may use up to {tokens}; "
                    "raise max_tokens",
                    tokens_used=node.spent_tokens(),
                    token_limit=limits.max_tokens,
                )
            if node.exhausted is None:
                node.exhausted = refused
            error = error or refused
        return error

    def _uncertain_note(self) -> str:
        if not self.uncertain_cost:
            return ""
        return (
            f" (plus up to ${self.uncertain_cost:.4f} for calls whose cost is unknown: cancelled "
            "after they were sent, or answered without a usage.cost)"
        )

    async def reserve(self, worst_case: Callable[[], tuple[float, int]]) -> Reservation:
        """Holds a call's worst case (``worst_case()`` -> cost, tokens; asked again after each
        wait, since what is left changes) on every node of the chain, waiting for calls in
        flight to settle if needed; raises the limit error (and marks the node exhausted) when
        the call cannot fit at all. Bound the wait by the caller's deadline."""
        while True:
            self.check()
            cost, tokens = worst_case()
            refused = self._refusal(cost, tokens)
            if refused is not None:
                raise refused
            if not any(any(node._overrun(cost, tokens, in_flight=True)) for node in self.chain()):
                for node in self.chain():
                    node.reserved_cost += cost
                    node.reserved_tokens += tokens
                return Reservation(self, cost, tokens)
            root = self.root()
            if root._settled is None:
                root._settled = asyncio.Event()
            await root._settled.wait()

    def notify_settled(self) -> None:
        """Wakes every call waiting for room (called on the root)."""
        event, self._settled = self._settled, None
        if event is not None:
            event.set()

    def charge(self, model: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        """Records one call on every node of the chain, then enforces their caps."""
        for node in self.chain():
            node.usage.setdefault(model, ModelUsage()).add(input_tokens, output_tokens, cost)
        for node in self.chain():
            limits = node.limits
            if node.exhausted is not None:
                continue
            if limits.max_budget is not None and node.spent_cost() > limits.max_budget:
                node.exhausted = BudgetExceededError(
                    f"max_budget of ${limits.max_budget:.4f} exceeded at {node.label}: "
                    f"${node.total_cost:.4f} spent{node._uncertain_note()}; raise max_budget "
                    "or use a cheaper model",
                    spent=node.spent_cost(),
                    budget=limits.max_budget,
                )
            elif limits.max_tokens is not None and node.spent_tokens() > limits.max_tokens:
                node.exhausted = TokenLimitExceededError(
                    f"max_tokens of {limits.max_tokens} exceeded at {node.label}: "
                    f"{node.total_tokens} tokens used; raise max_tokens",
                    tokens_used=node.spent_tokens(),
                    token_limit=limits.max_tokens,
                )
        self.check()
