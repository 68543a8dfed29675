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
    │   └── CancellationError         the caller cancelled (reference name)
    ├── SandboxError              the sandbox is broken (terminal for the session)
    │   ├── SandboxStartError         it could not be started
    │   └── SandboxDiedError          the runner died or stopped answering
    ├── CellError                 the user's code raised (recoverable; shown to the model)
    └── BrokerError               the host-side broker refused or failed a call

``SandboxError`` and ``CellError`` are never mixed: a cell that raises is reported to the model and
the session goes on; a runner that dies or ignores an interrupt is restarted (up to
``max_restarts`` times, with a note to the model) before the session ends with ``SandboxDiedError``.
"""

from __future__ import annotations

from typing import Any


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
    _positional: tuple[str, ...] = ()
    """The reference ``rlms`` positional order (numbers first), used when the first argument is
    not a message string."""

    def __init__(self, *args: Any, partial_answer: str | None = None, **fields: Any) -> None:
        values = self._bind(args, partial_answer=partial_answer, **fields)
        message = values.pop("message")
        self.partial_answer: str | None = values.pop("partial_answer")
        for name, value in values.items():
            setattr(self, name, value)
        super().__init__(message or self._default_message())

    @classmethod
    def _bind(cls, args: tuple[Any, ...], **given: Any) -> dict[str, Any]:
        names = (*cls._positional, "partial_answer", "message")
        unknown = set(given) - set(names)
        if unknown:
            raise TypeError(
                f"{cls.__name__}() got unexpected keyword(s) {sorted(unknown)}; "
                f"accepted: {', '.join(names)}"
            )
        values: dict[str, Any] = dict.fromkeys(names)
        values.update({k: v for k, v in given.items() if v is not None})
        if args and (isinstance(args[0], str) or not cls._positional):
            order: tuple[str, ...] = ("message",)  # rlm form: Error("text", field=...)
        else:
            order = tuple(n for n in names if n != "partial_answer" or cls._takes_partial)
        if len(args) > len(order):
            raise TypeError(
                f"{cls.__name__}() takes at most {len(order)} positional argument(s) "
                f"({', '.join(order)}); pass the others by keyword"
            )
        for name, value in zip(order, args, strict=False):
            if given.get(name) is not None:
                raise TypeError(f"{cls.__name__}() got {name!r} both by position and by keyword")
            values[name] = value
        return values

    _takes_partial = True

    def _default_message(self) -> str:
        return f"{self.limit_name} reached"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_limit_error, (type(self), self.args, dict(self.__dict__)))


def _rebuild_limit_error(
    cls: type[LimitExceededError], args: tuple[Any, ...], state: dict[str, Any]
) -> LimitExceededError:
    """Unpickles a limit error without going through its (two-form) constructor."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class BudgetExceededError(LimitExceededError):
    """The whole tree spent more than ``max_budget`` US dollars (``spent`` of ``budget``).

    Built either as ``BudgetExceededError("message", spent=..., budget=...)`` or, like the
    reference package, ``BudgetExceededError(spent, budget, message=None)``.
    """

    limit_name = "max_budget"
    _positional = ("spent", "budget")
    _takes_partial = False
    spent: float | None
    budget: float | None

    def _default_message(self) -> str:
        if self.spent is None or self.budget is None:
            return "max_budget reached; raise max_budget or use a cheaper model"
        return (
            f"Budget exceeded: spent ${self.spent:.6f} of ${self.budget:.6f}; raise max_budget "
            "or use a cheaper model"
        )


class TokenLimitExceededError(LimitExceededError):
    """The whole tree used more than ``max_tokens`` tokens (``tokens_used`` of ``token_limit``).

    Built as ``TokenLimitExceededError("message", tokens_used=..., token_limit=...)`` or
    ``TokenLimitExceededError(tokens_used, token_limit, partial_answer=None, message=None)``.
    """

    limit_name = "max_tokens"
    _positional = ("tokens_used", "token_limit")
    tokens_used: int | None
    token_limit: int | None

    def _default_message(self) -> str:
        if self.tokens_used is None or self.token_limit is None:
            return "max_tokens reached; raise max_tokens"
        return (
            f"Token limit exceeded: {self.tokens_used:,} of {self.token_limit:,} tokens; "
            "raise max_tokens"
        )


class TimeoutExceededError(LimitExceededError):
    """The run took longer than ``max_timeout`` seconds (``elapsed`` of ``timeout``).

    Built as ``TimeoutExceededError("message", elapsed=..., timeout=...)`` or
    ``TimeoutExceededError(elapsed, timeout, partial_answer=None, message=None)``.
    """

    limit_name = "max_timeout"
    _positional = ("elapsed", "timeout")
    elapsed: float | None
    timeout: float | None

    def _default_message(self) -> str:
        if self.elapsed is None or self.timeout is None:
            return "max_timeout reached; raise max_timeout or give the model a smaller task"
        return (
            f"Timeout exceeded: {self.elapsed:.1f}s of a {self.timeout:.1f}s limit; raise "
            "max_timeout or give the model a smaller task"
        )


class ErrorThresholdExceededError(LimitExceededError):
    """``max_errors`` consecutive iterations ended with an error (``error_count`` of
    ``threshold``; ``last_error`` is the last one's text).

    Built as ``ErrorThresholdExceededError("message", error_count=..., threshold=...)`` or
    ``ErrorThresholdExceededError(error_count, threshold, last_error=None, partial_answer=None,
    message=None)``.
    """

    limit_name = "max_errors"
    _positional = ("error_count", "threshold", "last_error")
    error_count: int | None
    threshold: int | None
    last_error: str | None

    def _default_message(self) -> str:
        if self.error_count is None or self.threshold is None:
            return "max_errors reached; raise max_errors or check the sandbox's stderr"
        return (
            f"Error threshold exceeded: {self.error_count} consecutive errors (limit "
            f"{self.threshold}); raise max_errors or check the sandbox's stderr"
        )


class CancellationError(LimitExceededError):
    """The run was cancelled by its caller; ``partial_answer`` is the best answer so far.

    Constructed like the reference package: ``CancellationError(partial_answer=None,
    message=None)``. An ``Exception`` (not a ``KeyboardInterrupt``), as there.
    """

    limit_name = "cancelled"

    def __init__(self, partial_answer: str | None = None, message: str | None = None) -> None:
        super().__init__(message, partial_answer=partial_answer)

    def _default_message(self) -> str:
        return "Execution cancelled by the caller; run it again to get a full answer"


class SandboxError(RLMError):
    """The sandbox is unusable: the session cannot go on."""


class SandboxStartError(SandboxError):
    """The sandbox or the runner inside it could not be started."""


class SandboxDiedError(SandboxError):
    """The runner process died or stopped answering."""


class SandboxThrottledError(SandboxError):
    """The provider kept throttling a call (HTTP 429, gRPC RESOURCE_EXHAUSTED) past the retry
    budget; ``provider``, ``action``, ``attempts``, ``waited`` (seconds) and ``retry_after``
    (the last wait the provider asked for, if it named one) say what happened."""

    def __init__(
        self,
        provider: str,
        action: str,
        *,
        attempts: int,
        waited: float,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        self.provider = provider
        self.action = action
        self.attempts = attempts
        self.waited = waited
        self.retry_after = retry_after
        asked = f"; it last asked to wait {retry_after:g} s" if retry_after is not None else ""
        why = f" ({reason})" if reason else ""
        super().__init__(
            f"{provider} kept throttling {action}: {attempts} attempts over {waited:.1f} s{asked}"
            f"{why}. Try again later, run fewer sandboxes or sub-calls at once, or ask "
            f"{provider} for a higher rate limit"
        )


class CellError(RLMError):
    """The generated code raised; the traceback is shown to the model and the session goes on."""


class BrokerError(RLMError):
    """The broker refused a call (bad token, closed session) or is gone."""


__all__ = [
    "BrokerError",
    "BudgetExceededError",
    "CancellationError",
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
    "SandboxThrottledError",
    "TimeoutExceededError",
    "TokenLimitExceededError",
]
