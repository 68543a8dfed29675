"""The limit and cancellation errors under the reference ``rlms`` module path.

These are rlm's own classes (:mod:`rlm.errors`): one class per error, so ``except`` clauses written
against either path catch the same exceptions.
"""

from rlm.errors import (
    BudgetExceededError,
    CancellationError,
    CancelledError,
    ErrorThresholdExceededError,
    LimitExceededError,
    RLMError,
    TimeoutExceededError,
    TokenLimitExceededError,
)

__all__ = [
    "BudgetExceededError",
    "CancellationError",
    "CancelledError",
    "ErrorThresholdExceededError",
    "LimitExceededError",
    "RLMError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
]
