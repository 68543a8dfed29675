"""The limit and cancellation errors under the reference ``rlms`` module path.

These are rlm's own classes (:mod:`rlm.errors`): one class per error, so ``except`` clauses written
against either path catch the same exceptions.
"""

from rlm.errors import (
    BudgetExceededError,
    CancellationError,
    ErrorThresholdExceededError,
    LimitExceededError,
    RLMError,
    TimeoutExceededError,
    TokenLimitExceededError,
)

__all__ = [
    "BudgetExceededError",
    "CancellationError",
    "ErrorThresholdExceededError",
    "LimitExceededError",
    "RLMError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
]
