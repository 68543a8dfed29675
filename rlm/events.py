"""The one event model behind the logger, the live progress view and user callbacks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("rlm")

#: Every kind of event, in the order a run emits them.
EVENT_KINDS = (
    "run_started",  # data: model, environment, context_chars, root_prompt, max_iterations
    "iteration_started",  # data: iteration
    "lm_response",  # data: iteration, text, seconds, input_tokens, output_tokens
    "cell_executed",  # data: iteration, block, code, stdout, stderr, error, seconds, restarted
    "subcall_started",  # data: call_id, call (llm_query | rlm_query | tool), prompt_preview
    "subcall_finished",  # data: call_id, call, seconds, error, input_tokens, output_tokens, child_run_id
    "run_finished",  # data: response, finished_by, seconds, usage, error
)


@dataclass(frozen=True)
class RLMEvent:
    """Something that happened in a run (root or child)."""

    kind: str
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
