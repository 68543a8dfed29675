"""Recursive Language Models: long contexts live in a sandboxed REPL that the model programs."""

from rlm.core import RLM
from rlm.errors import (
    BrokerError,
    BudgetExceededError,
    CancellationError,
    CellError,
    ConfigurationError,
    ErrorThresholdExceededError,
    LimitExceededError,
    LMAuthenticationError,
    LMError,
    RLMError,
    SandboxDiedError,
    SandboxError,
    SandboxStartError,
    SandboxThrottledError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.events import RLMEvent
from rlm.logger import RLMLogger
from rlm.sandbox import AsyncSandbox, Sandbox, SandboxPool
from rlm.types import ModelUsageSummary, RLMChatCompletion, UsageSummary

__version__ = "0.1.0"

__all__ = [
    "RLM",
    "AsyncSandbox",
    "BrokerError",
    "BudgetExceededError",
    "CancellationError",
    "CellError",
    "ConfigurationError",
    "ErrorThresholdExceededError",
    "LMAuthenticationError",
    "LMError",
    "LimitExceededError",
    "ModelUsageSummary",
    "RLMChatCompletion",
    "RLMError",
    "RLMEvent",
    "RLMLogger",
    "Sandbox",
    "SandboxDiedError",
    "SandboxError",
    "SandboxPool",
    "SandboxStartError",
    "SandboxThrottledError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
    "UsageSummary",
    "__version__",
]
