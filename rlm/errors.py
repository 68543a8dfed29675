"""Every exception ``rlm`` raises, in one place.

    RLMError                      base class; catch this to catch everything below
    ├── ConfigurationError        a bad argument, a missing extra, an unknown backend/environment
    ├── LMError                   an LM provider call failed after all retries
    │   └── LMAuthenticationError the key is missing or refused (not retried)
    ├── LimitExceededError        a limit stopped the run; carries ``partial_answer``
    │   ├── BudgetExceededError       max_budget (USD)
    │   ├── TokenLimitExceededError   max_tokens (input + output, whole tree)
    │   ├── TimeoutExceededError      max_timeout (wall clock, whole tree)
    │   ├── ErrorThresholdExceededError  max_errors consecutive failing cells
    │   └── CancelledError            the caller cancelled (Ctrl-C)
    ├── SandboxError              the sandbox is broken (terminal for the session)
    │   ├── SandboxStartError         it could not be started
    │   └── SandboxDiedError          the runner died or stopped answering
    ├── CellError                 the user's code raised (recoverable; shown to the model)
    └── BrokerError               the host-side broker refused or failed a call

``SandboxError`` and ``CellError`` are never mixed: a cell that raises is reported to the model and
the session goes on; a sandbox that breaks ends the session (after one restart attempt for timeouts).
"""

from __future__ import annotations


class RLMError(Exception):
    """Base class of all errors raised by rlm."""


class ConfigurationError(RLMError, ValueError):
    """An argument, environment variable or installed extra is wrong or missing."""


class LMError(RLMError):
    """An LM provider call failed (after retries where the failure was transient)."""

    def __init__(self, message: str, *, model: str | None = None, status: int | None = None):
        super().__init__(message)
        self.model = model
        self.status = status


class LMAuthenticationError(LMError):
    """The provider refused the credentials (HTTP 401/403) or none were given."""


class LimitExceededError(RLMError):
    """A configured limit stopped the run. ``partial_answer`` is the best answer seen so far."""

    limit_name = "limit"

    def __init__(self, message: str, *, partial_answer: str | None = None):
        super().__init__(message)
        self.partial_answer = partial_answer


class BudgetExceededError(LimitExceededError):
    """The whole tree spent more than ``max_budget`` US dollars."""

    limit_name = "max_budget"


class TokenLimitExceededError(LimitExceededError):
    """The whole tree used more than ``max_tokens`` tokens (input + output)."""

    limit_name = "max_tokens"


class TimeoutExceededError(LimitExceededError):
    """The run took longer than ``max_timeout`` seconds."""

    limit_name = "max_timeout"


class ErrorThresholdExceededError(LimitExceededError):
    """``max_errors`` consecutive iterations ended with an error."""

    limit_name = "max_errors"


class CancelledError(LimitExceededError):
    """The caller cancelled the run (for example with Ctrl-C)."""

    limit_name = "cancelled"


class SandboxError(RLMError):
    """The sandbox is unusable: the session cannot go on."""


class SandboxStartError(SandboxError):
    """The sandbox or the runner inside it could not be started."""


class SandboxDiedError(SandboxError):
    """The runner process died or stopped answering."""


class CellError(RLMError):
    """The generated code raised; the traceback is shown to the model and the session goes on."""


class BrokerError(RLMError):
    """The broker refused a call (bad token, closed session) or is gone."""


__all__ = [
    "BrokerError",
    "BudgetExceededError",
    "CancelledError",
    "CellError",
    "ConfigurationError",
    "ErrorThresholdExceededError",
    "LMAuthenticationError",
    "LMError",
    "LimitExceededError",
    "RLMError",
    "SandboxDiedError",
    "SandboxError",
    "SandboxStartError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
]
