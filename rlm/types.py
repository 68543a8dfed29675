"""Result types of a completion (compatible with the reference ``rlms`` package's names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlm.broker.accounting import ModelUsage


@dataclass
class ModelUsageSummary:
    """Calls, tokens and cost for one model."""

    total_calls: int
    total_input_tokens: int
    total_output_tokens: int
    total_cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "total_calls": self.total_calls,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
        }
        if self.total_cost is not None:
            data["total_cost"] = self.total_cost
        return data


@dataclass
class UsageSummary:
    """Per-model usage of a whole RLM tree (the root's calls and every child's)."""

    model_usage_summaries: dict[str, ModelUsageSummary] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, usage: dict[str, ModelUsage]) -> UsageSummary:
        return cls(
            {
                model: ModelUsageSummary(u.calls, u.input_tokens, u.output_tokens, u.cost)
                for model, u in usage.items()
            }
        )

    @property
    def total_calls(self) -> int:
        return sum(s.total_calls for s in self.model_usage_summaries.values())

    @property
    def total_input_tokens(self) -> int:
        return sum(s.total_input_tokens for s in self.model_usage_summaries.values())

    @property
    def total_output_tokens(self) -> int:
        return sum(s.total_output_tokens for s in self.model_usage_summaries.values())

    @property
    def total_cost(self) -> float | None:
        costs = [
            s.total_cost for s in self.model_usage_summaries.values() if s.total_cost is not None
        ]
        return sum(costs) if costs else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model_usage_summaries": {m: s.to_dict() for m, s in self.model_usage_summaries.items()}
        }
        if self.total_cost is not None:
            data["total_cost"] = self.total_cost
        return data


@dataclass
class RLMChatCompletion:
    """The answer of ``RLM.completion`` with its usage, timing and trajectory."""

    root_model: str
    prompt: Any
    response: str
    usage_summary: UsageSummary
    execution_time: float
    metadata: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "root_model": self.root_model,
            "prompt": self.prompt if isinstance(self.prompt, str) else "<non-text prompt>",
            "response": self.response,
            "usage_summary": self.usage_summary.to_dict(),
            "execution_time": self.execution_time,
        }
        if self.metadata is not None:
            data["metadata"] = self.metadata
        if self.error is not None:
            data["error"] = self.error
        return data
