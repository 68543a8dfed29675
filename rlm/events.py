"""The one event model behind the logger, the live progress view and user callbacks."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

log = logging.getLogger("rlm")

# ---- what each kind of event carries (``RLMEvent.data``) -----------------------------------


class RunStarted(TypedDict):
    model: str
    environment: str
    context_chars: int | None
    root_prompt: str | None
    max_iterations: int


class IterationStarted(TypedDict):
    iteration: int


class LMResponded(TypedDict):
    iteration: int
    text: str
    seconds: float
    input_tokens: int
    output_tokens: int


class CellExecuted(TypedDict):
    iteration: int
    block: int
    code: str
    stdout: str
    stderr: str
    error: str | None
    seconds: float
    restarted: bool


class IterationFinished(TypedDict):
    iteration: int | None
    """The loop's iteration; ``None`` for a compaction step or the answer asked for after the
    last iteration."""
    seconds: float | None
    final_answer: str | None
    kind: str | None
    """``None`` for an iteration of the loop; other steps name themselves."""


class SubcallStarted(TypedDict):
    call_id: str
    call: str
    """``llm_query`` | ``llm_query_batched`` | ``rlm_query`` | ... (what the code called)."""
    prompt_preview: str
    model: NotRequired[str | None]
    child_run_id: NotRequired[str]


class SubcallFinished(TypedDict):
    call_id: str
    call: str
    model: str | None
    seconds: float
    error: NotRequired[str]
    """Set when the call failed; the token counts and the preview are then absent."""
    input_tokens: NotRequired[int]
    output_tokens: NotRequired[int]
    cost: NotRequired[float | None]
    response_preview: NotRequired[str]
    child_run_id: NotRequired[str]


class RunFinished(TypedDict):
    response: str | None
    finished_by: str | None
    seconds: float
    usage: dict[str, Any]
    error: str | None


EventData = (
    RunStarted
    | IterationStarted
    | LMResponded
    | CellExecuted
    | IterationFinished
    | SubcallStarted
    | SubcallFinished
    | RunFinished
)

#: Every kind of event, in the order a run emits them, with the type of its ``data``.
PAYLOADS: dict[str, type] = {
    "run_started": RunStarted,
    "iteration_started": IterationStarted,
    "lm_response": LMResponded,
    "cell_executed": CellExecuted,
    "subcall_started": SubcallStarted,
    "subcall_finished": SubcallFinished,
    "iteration_finished": IterationFinished,
    "run_finished": RunFinished,
}
EVENT_KINDS = tuple(PAYLOADS)


@dataclass(frozen=True)
class RLMEvent:
    """Something that happened in a run (root or child)."""

    kind: str
    """One of ``EVENT_KINDS``; ``data`` is then the ``PAYLOADS[kind]`` typed dict."""
    run_id: str
    depth: int
    parent_run_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "parent_run_id": self.parent_run_id,
            "depth": self.depth,
            "time": self.time,
            **self.data,
        }


EventListener = Callable[[RLMEvent], None]


class EventBus:
    """Fans events out to listeners; a failing listener is logged, never fatal."""

    def __init__(self, listeners: list[EventListener] | None = None) -> None:
        self.listeners = list(listeners or [])

    def emit(self, event: RLMEvent) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                log.exception("rlm event listener %r failed", listener)
