"""Result types of a completion, with the names and dict shapes of the reference ``rlms`` package.

``to_dict()`` gives plain JSON-ready dicts (the keys of the reference's log lines) and every class has
a ``from_dict()`` that reads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from rlm.broker.accounting import ModelUsage

ClientBackend = Literal[
    "openai",
    "portkey",
    "openrouter",
    "vercel",
    "vllm",
    "anthropic",
    "azure_openai",
    "gemini",
]
"""Backend names accepted by ``RLM(backend=...)`` under the reference's spelling."""

EnvironmentType = Literal["local", "ipython", "docker", "modal", "prime", "daytona", "e2b"]
"""Environment names accepted by ``RLM(environment=...)`` under the reference's spelling."""


def _serialize_value(value: Any) -> Any:
    """Turn ``value`` into something ``json.dumps`` accepts: scalars stay, containers recurse,
    modules and callables become a short ``<...>`` tag, anything else its ``repr``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, ModuleType):
        return f"<module '{value.__name__}'>"
    if isinstance(value, list | tuple):
        return [_serialize_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _serialize_value(item) for key, item in value.items()}
    if callable(value):
        name = getattr(value, "__name__", None) or repr(value)
        return f"<{type(value).__name__} '{name}'>"
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


serialize_value = _serialize_value

_COMPLETION_KEYS = frozenset(
    {"root_model", "prompt", "response", "usage_summary", "execution_time", "metadata", "error"}
)
_REPL_RESULT_KEYS = frozenset(
    {"stdout", "stderr", "locals", "execution_time", "rlm_calls", "final_answer"}
)
# "type", "iteration" and "timestamp" are the log line's own (RLMLogger adds them).
_ITERATION_KEYS = frozenset(
    {"prompt", "response", "code_blocks", "final_answer", "iteration_time"}
    | {"type", "iteration", "timestamp"}
)


def _extras(data: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """The keys of ``data`` that the reference's shape does not have."""
    return {k: v for k, v in data.items() if k not in known}


@dataclass
class ModelUsageSummary:
    """Calls, tokens and cost for one model."""

    total_calls: int
    total_input_tokens: int
    total_output_tokens: int
    total_cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The usage as a dict; ``total_cost`` only when known."""
        data: dict[str, Any] = {
            "total_calls": self.total_calls,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
        }
        if self.total_cost is not None:
            data["total_cost"] = self.total_cost
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelUsageSummary:
        """Read back a dict written by :meth:`to_dict`."""
        return cls(
            total_calls=data.get("total_calls"),  # type: ignore[arg-type]
            total_input_tokens=data.get("total_input_tokens"),  # type: ignore[arg-type]
            total_output_tokens=data.get("total_output_tokens"),  # type: ignore[arg-type]
            total_cost=data.get("total_cost"),
        )


@dataclass
class UsageSummary:
    """Per-model usage of a whole RLM tree (the root's calls and every child's)."""

    model_usage_summaries: dict[str, ModelUsageSummary] = field(default_factory=dict)

    @classmethod
    def from_ledger(cls, usage: dict[str, ModelUsage]) -> UsageSummary:
        """Build the summary from a broker ledger's per-model usage."""
        return cls(
            {
                model: ModelUsageSummary(u.calls, u.input_tokens, u.output_tokens, u.cost)
                for model, u in usage.items()
            }
        )

    @property
    def total_calls(self) -> int:
        """Calls over all models."""
        return sum(s.total_calls for s in self.model_usage_summaries.values())

    @property
    def total_input_tokens(self) -> int:
        """Input tokens over all models."""
        return sum(s.total_input_tokens for s in self.model_usage_summaries.values())

    @property
    def total_output_tokens(self) -> int:
        """Output tokens over all models."""
        return sum(s.total_output_tokens for s in self.model_usage_summaries.values())

    @property
    def total_cost(self) -> float | None:
        """Summed cost in USD over the models that report one; ``None`` when none does."""
        costs = [
            s.total_cost for s in self.model_usage_summaries.values() if s.total_cost is not None
        ]
        return sum(costs) if costs else None

    def to_dict(self) -> dict[str, Any]:
        """The summary as a dict; ``total_cost`` only when known."""
        data: dict[str, Any] = {
            "model_usage_summaries": {m: s.to_dict() for m, s in self.model_usage_summaries.items()}
        }
        if self.total_cost is not None:
            data["total_cost"] = self.total_cost
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> UsageSummary:
        """Read back a dict written by :meth:`to_dict` (``None`` gives an empty summary)."""
        per_model = (data or {}).get("model_usage_summaries") or {}
        return cls({m: ModelUsageSummary.from_dict(s) for m, s in per_model.items()})


@dataclass
class RLMChatCompletion:
    """The answer of ``RLM.completion`` (or of one sub-call) with its usage, timing and trajectory.

    ``metadata`` holds the trajectory (``run_metadata`` + ``iterations``) when a logger captured
    it; ``error`` is set when this one call failed and ``response`` is then empty.
    """

    root_model: str
    prompt: Any
    response: str
    usage_summary: UsageSummary
    execution_time: float
    metadata: dict[str, Any] | None = None
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """Fields of ours that ride along in ``to_dict`` (the reference's readers ignore them):
    for a sub-call ``kind`` (llm_query, rlm_query, tool), ``cost``, ``prompt_tokens``, ..."""

    def to_dict(self) -> dict[str, Any]:
        """The completion as a dict; the prompt is kept as given (text, dict or message list)."""
        data: dict[str, Any] = {
            "root_model": self.root_model,
            "prompt": self.prompt,
            "response": self.response,
            "usage_summary": self.usage_summary.to_dict(),
            "execution_time": self.execution_time,
        }
        if self.metadata is not None:
            data["metadata"] = self.metadata
        if self.error is not None:
            data["error"] = self.error
        return {**self.extras, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMChatCompletion:
        """Read back a dict written by :meth:`to_dict`."""
        return cls(
            root_model=data.get("root_model"),  # type: ignore[arg-type]
            prompt=data.get("prompt"),
            response=data.get("response"),  # type: ignore[arg-type]
            usage_summary=UsageSummary.from_dict(data.get("usage_summary")),
            execution_time=data.get("execution_time"),  # type: ignore[arg-type]
            metadata=data.get("metadata"),
            error=data.get("error"),
            extras=_extras(data, _COMPLETION_KEYS),
        )


class REPLResult:
    """What one code cell produced: its output, the namespace after it, its sub-calls and answer."""

    def __init__(
        self,
        stdout: str,
        stderr: str,
        locals: dict[str, Any],
        execution_time: float | None = None,
        rlm_calls: list[RLMChatCompletion] | None = None,
        final_answer: str | None = None,
        extras: dict[str, Any] | None = None,
    ) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.locals = locals
        self.execution_time = execution_time
        self.rlm_calls: list[RLMChatCompletion] = list(rlm_calls or [])
        self.final_answer = final_answer
        self.extras: dict[str, Any] = dict(extras or {})
        """Fields of ours (``error``, ``restarted``, ``stdout_dropped``) that ride along."""

    @property
    def llm_calls(self) -> list[RLMChatCompletion]:
        """Alias of ``rlm_calls``."""
        return self.rlm_calls

    @llm_calls.setter
    def llm_calls(self, calls: list[RLMChatCompletion]) -> None:
        self.rlm_calls = list(calls)

    def __str__(self) -> str:
        return (
            f"REPLResult(stdout={self.stdout}, stderr={self.stderr}, locals={self.locals}, "
            f"execution_time={self.execution_time}, rlm_calls={len(self.rlm_calls)})"
        )

    def __repr__(self) -> str:
        return (
            f"REPLResult(stdout={self.stdout!r}, stderr={self.stderr!r}, "
            f"locals={sorted(self.locals)!r}, execution_time={self.execution_time!r}, "
            f"rlm_calls={len(self.rlm_calls)}, final_answer={self.final_answer!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, REPLResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """The result as a dict; locals are passed through :func:`_serialize_value`."""
        return {
            "stdout": self.stdout,
            "stderr": self.stderr,
            "locals": {k: _serialize_value(v) for k, v in self.locals.items()},
            "execution_time": self.execution_time,
            "rlm_calls": [call.to_dict() for call in self.rlm_calls],
            "final_answer": self.final_answer,
        } | {k: v for k, v in self.extras.items() if k not in _REPL_RESULT_KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> REPLResult:
        """Read back a dict written by :meth:`to_dict` (locals stay in their serialised form)."""
        return cls(
            stdout=data.get("stdout", ""),
            stderr=data.get("stderr", ""),
            locals=dict(data.get("locals") or {}),
            execution_time=data.get("execution_time"),
            rlm_calls=[RLMChatCompletion.from_dict(c) for c in data.get("rlm_calls") or []],
            final_answer=data.get("final_answer"),
            extras=_extras(data, _REPL_RESULT_KEYS),
        )


@dataclass
class CodeBlock:
    """One code block the model wrote and the result of running it."""

    code: str
    result: REPLResult

    def to_dict(self) -> dict[str, Any]:
        """The block as ``{"code", "result"}``."""
        return {"code": self.code, "result": self.result.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodeBlock:
        """Read back a dict written by :meth:`to_dict`."""
        return cls(code=data.get("code", ""), result=REPLResult.from_dict(data.get("result") or {}))


@dataclass
class RLMIteration:
    """One turn of the loop: the prompt sent, the model's reply, its code blocks and any answer."""

    prompt: Any
    response: str
    code_blocks: list[CodeBlock]
    final_answer: str | None = None
    iteration_time: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    """Fields of ours that ride along: ``kind`` (iteration, compaction, final), ``run_id``,
    ``depth``, the root call's ``input_tokens``/``output_tokens``/``lm_seconds``, ..."""

    def to_dict(self) -> dict[str, Any]:
        """The iteration as a dict; the prompt is kept as given."""
        return {
            **self.extras,
            "prompt": self.prompt,
            "response": self.response,
            "code_blocks": [block.to_dict() for block in self.code_blocks],
            "final_answer": self.final_answer,
            "iteration_time": self.iteration_time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMIteration:
        """Read back a dict written by :meth:`to_dict`."""
        return cls(
            prompt=data.get("prompt"),
            response=data.get("response", ""),
            code_blocks=[CodeBlock.from_dict(b) for b in data.get("code_blocks") or []],
            final_answer=data.get("final_answer"),
            iteration_time=data.get("iteration_time"),
            extras=_extras(data, _ITERATION_KEYS),
        )


@dataclass
class RLMMetadata:
    """The configuration of a run, as logged before its first iteration."""

    root_model: str
    max_depth: int
    max_iterations: int
    backend: str
    backend_kwargs: dict[str, Any]
    environment_type: str
    environment_kwargs: dict[str, Any]
    other_backends: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a dict; keyword dicts are passed through :func:`_serialize_value`."""
        return {
            "root_model": self.root_model,
            "max_depth": self.max_depth,
            "max_iterations": self.max_iterations,
            "backend": self.backend,
            "backend_kwargs": {k: _serialize_value(v) for k, v in self.backend_kwargs.items()},
            "environment_type": self.environment_type,
            "environment_kwargs": {
                k: _serialize_value(v) for k, v in self.environment_kwargs.items()
            },
            "other_backends": self.other_backends,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RLMMetadata:
        """Read back a dict written by :meth:`to_dict`."""
        return cls(
            root_model=data.get("root_model"),  # type: ignore[arg-type]
            max_depth=data.get("max_depth"),  # type: ignore[arg-type]
            max_iterations=data.get("max_iterations"),  # type: ignore[arg-type]
            backend=data.get("backend"),  # type: ignore[arg-type]
            backend_kwargs=dict(data.get("backend_kwargs") or {}),
            environment_type=data.get("environment_type"),  # type: ignore[arg-type]
            environment_kwargs=dict(data.get("environment_kwargs") or {}),
            other_backends=data.get("other_backends"),
        )


def _json_length(chunk: Any) -> int:
    try:
        return len(json.dumps(chunk, default=str))
    except (TypeError, ValueError):
        return len(repr(chunk))


class QueryMetadata:
    """Sizes of a prompt/context: the length of each chunk, their total and the container type."""

    context_lengths: list[int]
    context_total_length: int
    context_type: str

    def __init__(self, prompt: str | list[Any] | dict[Any, Any]) -> None:
        if isinstance(prompt, str):
            self.context_type = "str"
            self.context_lengths = [len(prompt)]
        elif isinstance(prompt, dict):
            self.context_type = "dict"
            self.context_lengths = [
                len(v) if isinstance(v, str) else _json_length(v) for v in prompt.values()
            ]
        elif isinstance(prompt, list):
            self.context_type = "list"
            if not prompt:
                self.context_lengths = [0]
            elif isinstance(prompt[0], dict):
                if "content" in prompt[0]:
                    self.context_lengths = [len(str(m.get("content", ""))) for m in prompt]
                else:
                    self.context_lengths = [_json_length(m) for m in prompt]
            else:
                self.context_lengths = [len(chunk) for chunk in prompt]
        else:
            raise ValueError(
                f"Invalid prompt type: {type(prompt).__name__}; pass a str, a dict or a list."
            )
        self.context_total_length = sum(self.context_lengths)

    def __repr__(self) -> str:
        return (
            f"QueryMetadata(context_type={self.context_type!r}, "
            f"context_total_length={self.context_total_length}, "
            f"context_lengths={self.context_lengths!r})"
        )


__all__ = [
    "ClientBackend",
    "CodeBlock",
    "EnvironmentType",
    "ModelUsageSummary",
    "QueryMetadata",
    "REPLResult",
    "RLMChatCompletion",
    "RLMIteration",
    "RLMMetadata",
    "UsageSummary",
    "serialize_value",
]
