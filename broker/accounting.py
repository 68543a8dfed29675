"""Usage per call, rolled up from children to parents, and limits enforced fail-closed.

Each RLM run (the root and every child) owns a ``Ledger`` node linked to its parent. A call is
charged to its own node and to every ancestor, so a parent's totals always include its children's;
limits are checked on every node of the chain, so a grandchild cannot spend past the root's cap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rlm.errors import (
    BudgetExceededError,
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


@dataclass
class Limits:
    """The caps of one node (None: no cap at this node)."""

    max_budget: float | None = None
    max_tokens: int | None = None
    max_timeout: float | None = None


@dataclass
class Ledger:
    """One run's usage (its own and its descendants') and its limits."""

    limits: Limits = field(default_factory=Limits)
    parent: Ledger | None = None
    label: str = "root"
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    exhausted: LimitExceededError | None = None

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

    def charge(self, model: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
        """Records one call on every node of the chain, then enforces their caps."""
        for node in self.chain():
            node.usage.setdefault(model, ModelUsage()).add(input_tokens, output_tokens, cost)
        for node in self.chain():
            limits = node.limits
            if node.exhausted is not None:
                continue
            if limits.max_budget is not None and node.total_cost > limits.max_budget:
                node.exhausted = BudgetExceededError(
                    f"max_budget of ${limits.max_budget:.4f} exceeded at {node.label}: "
                    f"${node.total_cost:.4f} spent; raise max_budget or use a cheaper model"
                )
            elif limits.max_tokens is not None and node.total_tokens > limits.max_tokens:
                node.exhausted = TokenLimitExceededError(
                    f"max_tokens of {limits.max_tokens} exceeded at {node.label}: "
                    f"{node.total_tokens} tokens used; raise max_tokens"
                )
        self.check()
