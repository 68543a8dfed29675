"""Every event a run emits carries exactly what its kind's typed payload (``rlm.events.PAYLOADS``)
declares: the keys it requires, no undeclared key, and values of the declared types. A run that
exercises every kind (a plain sub-call that succeeds and one that fails, a child RLM, a cell, a
last iteration without an answer) is checked in-process with the scripted environment."""

from __future__ import annotations

import types
import typing
from typing import Any, NotRequired, Union, get_args, get_origin

import pytest

from rlm.events import EVENT_KINDS, PAYLOADS, RLMEvent
from rlm.testing import Cell, RecordedRequest, Reply, ScriptedEnvironment


def matches(value: Any, hint: Any) -> bool:
    """``value`` is of the type ``hint`` (plain classes, ``X | None``, ``dict[...]``)."""
    origin = get_origin(hint)
    if origin is NotRequired:
        return matches(value, get_args(hint)[0])
    if origin in (Union, types.UnionType):
        return any(matches(value, arg) for arg in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is Any:
        return True
    if origin is not None:
        return isinstance(value, origin)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def problems(event: RLMEvent) -> list[str]:
    payload = PAYLOADS.get(event.kind)
    if payload is None:
        return [f"{event.kind}: not a declared kind"]
    hints = typing.get_type_hints(payload, include_extras=True)
    found = [
        f"{event.kind}: lacks {key!r}" for key in payload.__required_keys__ - event.data.keys()
    ]
    for key, value in event.data.items():
        if key not in hints:
            found.append(f"{event.kind}: undeclared key {key!r}")
        elif not matches(value, hints[key]):
            found.append(f"{event.kind}.{key}: {value!r} is not {hints[key]}")
    return found


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def test_every_event_carries_what_its_payload_type_declares(make_rlm, lm_server):
    async def cell(cell: Cell) -> str | None:
        if "work" not in cell.code:
            return None
        sub = await cell.llm_query("SUB ok")
        try:
            await cell.llm_query("SUB fails")
        except Exception as error:  # the scripted server answers it with a 400
            sub += f" / failed: {type(error).__name__}"
        return sub + " / child: " + await cell.rlm_query("CHILD TASK")

    def script(request: RecordedRequest) -> Reply | str:
        text = str(request.messages[-1].get("content"))
        if text.startswith("SUB fails"):
            return Reply("", status=400)
        if text.startswith("SUB"):
            return "sub answer"
        if any("CHILD TASK" in str(m.get("content")) for m in request.messages):
            return repl('answer["content"] = "child done"\nanswer["ready"] = True')
        turns = sum(m.get("role") == "assistant" for m in request.messages)
        return repl("work()") if turns < 2 else "final words"

    lm_server.set_script(script)
    events: list[RLMEvent] = []
    rlm = make_rlm(
        environment=ScriptedEnvironment,
        environment_kwargs={"cells": cell},
        max_depth=2,
        max_iterations=2,
        on_event=events.append,
    )
    result = rlm.completion("ctx")
    assert result.response == "final words"
    assert {event.kind for event in events} == set(EVENT_KINDS)
    failed = [e for e in events if e.kind == "subcall_finished" and "error" in e.data]
    assert failed, "the failing sub-call emitted no event with an error"
    assert [p for event in events for p in problems(event)] == []


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (RLMEvent("iteration_started", "r", 0, data={}), "lacks 'iteration'"),
        (RLMEvent("iteration_started", "r", 0, data={"iteration": 1, "x": 2}), "undeclared"),
        (RLMEvent("iteration_started", "r", 0, data={"iteration": "1"}), "is not"),
        (RLMEvent("no_such_kind", "r", 0, data={}), "not a declared kind"),
    ],
)
def test_the_check_itself_catches_a_wrong_payload(event, problem):
    assert any(problem in p for p in problems(event))
