"""The RLM loop: one run (the root or a child) from context to answer."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from rlm import prompts
from rlm.broker.accounting import Ledger
from rlm.broker.router import LMRouter
from rlm.broker.server import BrokerServer
from rlm.environments import environment_class
from rlm.environments.base import CellResult, Environment, ToolSpec
from rlm.errors import (
    ConfigurationError,
    ErrorThresholdExceededError,
    LimitExceededError,
    RLMError,
)
from rlm.events import EventBus, RLMEvent
from rlm.parsing import parse_reply
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.types import RLMChatCompletion, UsageSummary

PREVIEW_CHARS = 300


@dataclass
class Tool:
    """A custom tool: a plain value (copied into the sandbox) or a host-side callable."""

    value: Any
    description: str = ""

    @classmethod
    def parse(cls, name: str, spec: Any) -> Tool:
        if isinstance(spec, dict) and "tool" in spec:
            return cls(spec["tool"], spec.get("description", ""))
        if not name.isidentifier():
            raise ConfigurationError(f"custom tool name {name!r} is not a Python identifier")
        return cls(spec, (inspect.getdoc(spec) or "").split("\n")[0] if callable(spec) else "")


def parse_tools(tools: dict[str, Any] | None) -> dict[str, Tool]:
    return {name: Tool.parse(name, spec) for name, spec in (tools or {}).items()}


@dataclass
class TreeConfig:
    """What every run of one RLM tree shares."""

    router: LMRouter
    broker: BrokerServer
    environment: str
    environment_kwargs: dict[str, Any]
    events: EventBus
    max_depth: int = 1
    max_iterations: int = 30
    max_errors: int | None = None
    custom_system_prompt: str | None = None
    tools: dict[str, Tool] = field(default_factory=dict)
    sub_tools: dict[str, Tool] = field(default_factory=dict)
    compaction: bool = False
    compaction_threshold_chars: int = 400_000
    max_concurrent_subcalls: int = 8
    tool_timeout: float = 300.0
    _subcall_slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)

    def subcall_slots(self, depth: int) -> asyncio.Semaphore:
        """Bounds concurrent child runs per depth (one pool per level, so children waiting for
        grandchildren can never hold every slot)."""
        if depth not in self._subcall_slots:
            self._subcall_slots[depth] = asyncio.Semaphore(self.max_concurrent_subcalls)
        return self._subcall_slots[depth]

    @property
    def max_output_chars(self) -> int:
        return int(self.environment_kwargs.get("max_output_chars", 20_000))


class SessionDispatch:
    """The broker-side handler of one sandbox; forwards to whichever run uses it now
    (a persistent sandbox serves several runs in turn)."""

    def __init__(self, run: RLMRun) -> None:
        self.run = run

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        return await self.run.on_complete(request)

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        return await self.run.on_subcall(request)

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        return await self.run.on_tool(request)


async def open_environment(
    config: TreeConfig, dispatch: SessionDispatch, label: str
) -> Environment:
    cls = environment_class(config.environment)
    try:
        env = cls(broker=config.broker, handler=dispatch, label=label, **config.environment_kwargs)
    except TypeError as error:
        raise ConfigurationError(
            f"bad environment_kwargs for {config.environment!r}: {error}"
        ) from error
    await env.start()
    return env


class RLMRun:
    """One completion at one depth."""

    def __init__(
        self,
        config: TreeConfig,
        *,
        depth: int,
        ledger: Ledger,
        parent_run_id: str | None = None,
        tools: dict[str, Tool] | None = None,
    ) -> None:
        self.config = config
        self.depth = depth
        self.ledger = ledger
        self.parent_run_id = parent_run_id
        self.run_id = uuid.uuid4().hex[:12]
        self.tools = config.tools if tools is None else tools
        self.iterations: list[dict[str, Any]] = []
        self._current_block: dict[str, Any] | None = None
        self._call_ids = itertools.count(1)
        self._partial = ""

    # ---- events ----------------------------------------------------------------------------

    def emit(self, event_kind: str, /, **data: Any) -> None:
        self.config.events.emit(
            RLMEvent(event_kind, self.run_id, self.depth, self.parent_run_id, data)
        )

    def _record_subcall(self, record: dict[str, Any]) -> None:
        if self._current_block is not None:
            self._current_block["subcalls"].append(record)

    # ---- call-backs from the sandbox ------------------------------------------------------

    async def _plain_call(
        self, request: Any, kind: str, messages: list[dict[str, Any]]
    ) -> pb.CompleteReply:
        call_id = f"{self.run_id}:{next(self._call_ids)}"
        preview = (
            request.prompt or request.messages_json if kind == "llm_query" else request.prompt
        )[:PREVIEW_CHARS]
        self.emit("subcall_started", call_id=call_id, call=kind, prompt_preview=preview)
        started = time.perf_counter()
        record: dict[str, Any] = {"kind": kind, "prompt_preview": preview}
        try:
            response = await self.config.router.complete(
                messages, ledger=self.ledger, depth=self.depth + 1, model=request.model or None
            )
        except BaseException as error:
            record.update(
                error=f"{type(error).__name__}: {error}", seconds=time.perf_counter() - started
            )
            self._record_subcall(record)
            self.emit(
                "subcall_finished",
                call_id=call_id,
                call=kind,
                seconds=record["seconds"],
                error=record["error"],
            )
            raise
        seconds = time.perf_counter() - started
        usage = response.usage
        record.update(
            model=response.model,
            response_preview=response.text[:PREVIEW_CHARS],
            seconds=seconds,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        self._record_subcall(record)
        self.emit(
            "subcall_finished",
            call_id=call_id,
            call=kind,
            seconds=seconds,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        return pb.CompleteReply(
            text=response.text,
            model=response.model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cost=usage.cost or 0.0,
        )

    async def on_complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        if request.messages_json:
            messages = json.loads(request.messages_json)
        else:
            messages = [{"role": "user", "content": request.prompt}]
        return await self._plain_call(request, "llm_query", messages)

    async def on_subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        if self.depth + 1 >= self.config.max_depth:
            messages = [{"role": "user", "content": request.prompt}]
            return await self._plain_call(request, "rlm_query", messages)
        child = RLMRun(
            self.config,
            depth=self.depth + 1,
            ledger=self.ledger.child(f"depth {self.depth + 1}"),
            parent_run_id=self.run_id,
            tools=self.config.sub_tools,
        )
        call_id = f"{self.run_id}:{next(self._call_ids)}"
        self.emit(
            "subcall_started",
            call_id=call_id,
            call="rlm_query",
            prompt_preview=request.prompt[:PREVIEW_CHARS],
            child_run_id=child.run_id,
        )
        record: dict[str, Any] = {
            "kind": "rlm_query",
            "prompt_preview": request.prompt[:PREVIEW_CHARS],
        }
        self._record_subcall(record)
        started = time.perf_counter()
        error_text = None
        try:
            async with self.config.subcall_slots(child.depth):
                result = await child.run(request.prompt, None)
        except BaseException as error:
            error_text = f"{type(error).__name__}: {error}"
            record.update(error=error_text, child=child.trajectory())
            raise
        finally:
            record["seconds"] = time.perf_counter() - started
            self.emit(
                "subcall_finished",
                call_id=call_id,
                call="rlm_query",
                seconds=record["seconds"],
                error=error_text,
                child_run_id=child.run_id,
            )
        record.update(response_preview=result.response[:PREVIEW_CHARS], child=result.metadata)
        return pb.CompleteReply(text=result.response)

    async def on_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        tool = self.tools.get(request.name)
        if tool is None or not callable(tool.value):
            raise ConfigurationError(f"no host-side tool named {request.name!r}")
        payload = json.loads(request.args_json or b"{}")
        started = time.perf_counter()
        record: dict[str, Any] = {"kind": "tool", "name": request.name}
        try:
            value = await asyncio.wait_for(
                asyncio.to_thread(
                    tool.value, *payload.get("args", []), **payload.get("kwargs", {})
                ),
                self.config.tool_timeout,
            )
            encoded = json.dumps(value).encode()
        except TypeError as error:
            record["error"] = str(error)
            raise ConfigurationError(f"tool {request.name!r}: {error}") from error
        finally:
            record["seconds"] = time.perf_counter() - started
            self._record_subcall(record)
        return pb.ToolReply(result_json=encoded)

    # ---- the loop --------------------------------------------------------------------------

    def trajectory(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "depth": self.depth,
            "iterations": self.iterations,
        }

    async def _setup_sandbox(
        self, env: Environment, context: Any, context_name: str, aliases: tuple[str, ...]
    ) -> None:
        await env.load_context(context, name=context_name, aliases=aliases)
        values = {n: t.value for n, t in self.tools.items() if not callable(t.value)}
        specs = [ToolSpec(n, t.description) for n, t in self.tools.items() if callable(t.value)]
        if values or specs:
            await env.set_variables(values, specs)

    async def run(
        self,
        context: Any,
        root_prompt: str | None,
        *,
        environment: Environment | None = None,
        dispatch: SessionDispatch | None = None,
        context_name: str = "context",
        aliases: tuple[str, ...] = (),
    ) -> RLMChatCompletion:
        """Runs the loop; opens (and closes) its own sandbox unless one is handed in."""
        started = time.perf_counter()
        router = self.config.router
        root_model = router.client_for(None, self.depth).model_name
        self.emit(
            "run_started",
            model=root_model,
            environment=self.config.environment,
            context_chars=len(context) if isinstance(context, (str, list, dict)) else None,
            root_prompt=root_prompt,
            max_iterations=self.config.max_iterations,
        )
        owned = environment is None
        env = environment
        finished_by = "error"
        response = ""
        try:
            self.ledger.check()
            if env is None:
                env = await open_environment(
                    self.config, SessionDispatch(self), f"{self.run_id} (depth {self.depth})"
                )
            elif dispatch is not None:
                dispatch.run = self
            await self._setup_sandbox(env, context, context_name, aliases)
            response, finished_by = await self._loop(env, context, root_prompt)
            return RLMChatCompletion(
                root_model=root_model,
                prompt=context,
                response=response,
                usage_summary=UsageSummary.from_ledger(self.ledger.usage),
                execution_time=time.perf_counter() - started,
                metadata={**self.trajectory(), "finished_by": finished_by},
            )
        except LimitExceededError as error:
            if error.partial_answer is None:
                error.partial_answer = self._partial or None
            raise
        finally:
            if owned and env is not None:
                await env.aclose()
            self.emit(
                "run_finished",
                response=response,
                finished_by=finished_by,
                seconds=time.perf_counter() - started,
                usage=UsageSummary.from_ledger(self.ledger.usage).to_dict(),
            )

    def _system_message(self, context: Any) -> str:
        if self.config.custom_system_prompt:
            return self.config.custom_system_prompt
        return prompts.system_prompt(
            context_value=context,
            max_output_chars=self.config.max_output_chars,
            depth=self.depth,
            max_depth=self.config.max_depth,
            tools={n: t.description for n, t in self.tools.items()},
        )

    async def _loop(
        self, env: Environment, context: Any, root_prompt: str | None
    ) -> tuple[str, str]:
        config = self.config
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self._system_message(context)},
            {"role": "user", "content": prompts.first_user_message(context, root_prompt)},
        ]
        consecutive_errors = 0
        for iteration in range(1, config.max_iterations + 1):
            self.ledger.check()
            if config.compaction:
                messages = await self._maybe_compact(messages)
            self.emit("iteration_started", iteration=iteration)
            lm_started = time.perf_counter()
            reply = await config.router.complete(messages, ledger=self.ledger, depth=self.depth)
            self.emit(
                "lm_response",
                iteration=iteration,
                text=reply.text,
                seconds=time.perf_counter() - lm_started,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
            )
            record: dict[str, Any] = {
                "iteration": iteration,
                "response": reply.text,
                "code_blocks": [],
            }
            self.iterations.append(record)
            parsed = parse_reply(reply.text)
            outputs: list[str] = []
            had_error = bool(parsed.problem)
            final: str | None = None
            for index, code in enumerate(parsed.blocks, start=1):
                block: dict[str, Any] = {"code": code, "subcalls": []}
                record["code_blocks"].append(block)
                self._current_block = block
                try:
                    timeout = self._cell_timeout()
                    result = await env.execute(code, timeout=timeout)
                finally:
                    self._current_block = None
                self._note_result(block, result)
                self.emit(
                    "cell_executed",
                    iteration=iteration,
                    block=index,
                    code=code,
                    stdout=result.stdout,
                    stderr=result.stderr,
                    error=result.error,
                    seconds=result.seconds,
                    restarted=result.restarted,
                )
                outputs.append(prompts.format_cell(index, code, result))
                if result.answer_content:
                    self._partial = result.answer_content
                if result.fatal:
                    self.ledger.check()
                if result.error:
                    had_error = True
                if result.answer_ready:
                    final = result.answer_content
                    break
            if final is not None:
                return final, "answer"
            if parsed.problem:
                outputs.append(f"Problem with your reply: {parsed.problem}")
            consecutive_errors = consecutive_errors + 1 if had_error else 0
            if config.max_errors is not None and consecutive_errors >= config.max_errors:
                raise ErrorThresholdExceededError(
                    f"{consecutive_errors} consecutive iterations ended in an error "
                    f"(max_errors={config.max_errors}); the last one: {outputs[-1][-500:]}",
                    partial_answer=self._partial or None,
                )
            messages.append({"role": "assistant", "content": reply.text})
            messages.append(
                {
                    "role": "user",
                    "content": prompts.NEXT_USER_MESSAGE.format(
                        outputs="\n\n".join(outputs),
                        iteration=iteration + 1,
                        max_iterations=config.max_iterations,
                    ),
                }
            )
        messages.append({"role": "user", "content": prompts.OUT_OF_ITERATIONS})
        reply = await config.router.complete(messages, ledger=self.ledger, depth=self.depth)
        self.iterations.append({"iteration": "final", "response": reply.text, "code_blocks": []})
        return reply.text.strip(), "max_iterations"

    def _cell_timeout(self) -> float | None:
        remaining = self.ledger.remaining_seconds()
        return None if remaining is None else max(0.5, remaining)

    @staticmethod
    def _note_result(block: dict[str, Any], result: CellResult) -> None:
        block.update(
            stdout=result.stdout,
            stderr=result.stderr,
            error=result.error,
            seconds=result.seconds,
            restarted=result.restarted,
            stdout_dropped=result.stdout_dropped,
        )

    async def _maybe_compact(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        size = sum(len(str(m.get("content", ""))) for m in messages)
        if size <= self.config.compaction_threshold_chars or len(messages) <= 3:
            return messages
        summary = await self.config.router.complete(
            [*messages, {"role": "user", "content": prompts.COMPACTION_REQUEST}],
            ledger=self.ledger,
            depth=self.depth,
        )
        self.iterations.append(
            {"iteration": "compaction", "response": summary.text, "code_blocks": []}
        )
        return [
            messages[0],
            messages[1],
            {"role": "assistant", "content": summary.text},
            {"role": "user", "content": "Continue from your summary; the REPL state is unchanged."},
        ]


__all__ = ["RLMError", "RLMRun", "SessionDispatch", "Tool", "TreeConfig", "parse_tools"]
