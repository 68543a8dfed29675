"""An in-process stand-in for a sandbox, for fast tests of the loop, the ledger and the router.

``RLM(environment=ScriptedEnvironment, environment_kwargs={"cells": answer})`` runs no code:
every cell the model writes is handed to ``answer(cell)``, which says what the cell printed (a
``str``) or returns a whole :class:`~rlm.environments.base.CellResult` (an error, an answer), or
``None`` for the default (:func:`answers_in_code`: a literal ``answer["content"] = "..."`` in
the code answers, anything else prints nothing). A
cell can make the sub-calls real code would (``await cell.llm_query(...)``,
``await cell.rlm_query(...)``): they go through the same session handler, router and ledger as a
sandbox's calls do, so budgets, usage and the trajectory are exercised for real. No process, no
container, no gRPC: a loop test takes milliseconds.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rlm.environments.base import CellResult, Environment, ToolSpec
from rlm.errors import SandboxError
from rlm.protos import rlm_sandbox_pb2 as pb

_ANSWER = re.compile(r"""answer\[["']content["']\]\s*=\s*(["'])(?P<text>.*?)\1""")


@dataclass
class Cell:
    """One cell handed to the script: its code and what the sandbox would give it."""

    code: str
    environment: ScriptedEnvironment
    number: int

    @property
    def variables(self) -> dict[str, Any]:
        """The sandbox's variables (``context``, ``history``, custom tool values...)."""
        return self.environment.variables

    async def llm_query(self, prompt: str, model: str | None = None) -> str:
        """A plain sub-LM call through the session's handler (router, ledger, trajectory)."""
        request = pb.CompleteRequest(prompt=prompt, model=model or "", cell_id=self.number)
        reply: pb.CompleteReply = await self.environment.handler.complete(request)
        return reply.text

    async def rlm_query(self, prompt: str, model: str | None = None) -> str:
        """A child RLM (a plain call at ``max_depth``) through the session's handler."""
        request = pb.SubcallRequest(prompt=prompt, model=model or "", cell_id=self.number)
        reply: pb.CompleteReply = await self.environment.handler.subcall(request)
        return reply.text

    def answer(self, text: str) -> CellResult:
        """The result of a cell that sets ``answer = {"content": text, "ready": True}``."""
        return CellResult(answer_ready=True, answer_content=text)


CellOutcome = CellResult | str | None
CellScript = Callable[[Cell], "CellOutcome | Awaitable[CellOutcome]"]


def answers_in_code(cell: Cell) -> CellResult | str:
    """The default script: a cell that assigns a literal ``answer["content"]`` answers with it
    (``ready`` taken as set); any other cell prints nothing."""
    match = _ANSWER.search(cell.code)
    return cell.answer(match.group("text")) if match else ""


class ScriptedEnvironment(Environment):
    """A sandbox whose cells are answered by ``cells`` (see the module docstring). Every instance
    an RLM opens (the root's, each child's) is appended to ``ScriptedEnvironment.opened``."""

    name: ClassVar[str] = "scripted"
    opened: ClassVar[list[ScriptedEnvironment]] = []

    def __init__(
        self,
        cells: CellScript = answers_in_code,
        *,
        broker: Any = None,
        handler: Any = None,
        label: str = "",
    ) -> None:
        self.cells = cells
        self.broker = broker
        self.handler = handler
        self.label = label
        self.variables: dict[str, Any] = {}
        self.tools: list[ToolSpec] = []
        self.executed: list[str] = []
        self.started = False
        self.closed = False
        ScriptedEnvironment.opened.append(self)

    async def start(self) -> None:
        self.started = True

    async def load_context(
        self, value: Any, *, name: str = "context", aliases: tuple[str, ...] = ()
    ) -> None:
        for variable in (name, *aliases):
            self.variables[variable] = value

    async def set_variables(self, values: dict[str, Any], tools: list[ToolSpec]) -> None:
        self.variables.update(values)
        self.tools.extend(tools)

    async def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        if self.closed:
            raise SandboxError("the scripted environment is closed")
        self.executed.append(code)
        outcome = self.cells(Cell(code, self, len(self.executed)))
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome is None:
            outcome = answers_in_code(Cell(code, self, len(self.executed)))
        return CellResult(stdout=outcome) if isinstance(outcome, str) else outcome

    async def aclose(self) -> None:
        self.closed = True
