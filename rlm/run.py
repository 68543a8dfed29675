"""The RLM loop: one run (the root or a child) from context to answer."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from rlm import prompts
from rlm.broker.accounting import Ledger
from rlm.broker.clients.base import LMResponse
from rlm.broker.router import LMRouter
from rlm.broker.server import BrokerScope, BrokerServer
from rlm.environments import environment_class, environment_name
from rlm.environments.base import CellResult, Environment, ToolSpec, encode_value
from rlm.errors import (
    ConfigurationError,
    ErrorThresholdExceededError,
    LimitExceededError,
    RLMError,
)
from rlm.events import (
    CellExecuted,
    EventBus,
    EventData,
    IterationFinished,
    IterationStarted,
    LMResponded,
    RLMEvent,
    RunFinished,
    RunStarted,
    SubcallFinished,
    SubcallStarted,
)
from rlm.logger import RLMLogger, iteration_entry
from rlm.parsing import parse_reply
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.types import (
    CodeBlock,
    ModelUsageSummary,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
)

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
    """``custom_tools`` as ``Tool``s; a name the REPL defines itself is a ``ValueError``."""
    from rlm.environments.compat import validate_custom_tools

    validate_custom_tools(tools)
    return {name: Tool.parse(name, spec) for name, spec in (tools or {}).items()}


@dataclass
class TreeConfig:
    """What every run of one RLM tree shares."""

    router: LMRouter
    broker: BrokerServer | BrokerScope
    environment: str | type[Environment]
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
    max_concurrent_subcalls: int = 4
    tool_timeout: float = 300.0
    orchestrator: bool = True
    user_prologue: str | None = None
    backend: str = "openai"
    backend_kwargs: dict[str, Any] = field(default_factory=dict)
    other_backends: list[str] | None = None
    _subcall_slots: dict[int, asyncio.Semaphore] = field(default_factory=dict)

    def run_metadata(self, depth: int) -> dict[str, Any]:
        """The reference's ``RLMMetadata`` of a run at ``depth`` (no secrets in it)."""
        return RLMMetadata(
            root_model=self.router.client_for(None, depth).model_name,
            max_depth=self.max_depth,
            max_iterations=self.max_iterations,
            backend=self.backend,
            backend_kwargs=without_secrets(self.backend_kwargs),
            environment_type=environment_name(self.environment),
            environment_kwargs=without_secrets(self.environment_kwargs),
            other_backends=self.other_backends,
        ).to_dict()

    def subcall_slots(self, depth: int) -> asyncio.Semaphore:
        """Bounds concurrent child runs per depth (one pool per level, so children waiting for
        grandchildren can never hold every slot)."""
        if depth not in self._subcall_slots:
            self._subcall_slots[depth] = asyncio.Semaphore(self.max_concurrent_subcalls)
        return self._subcall_slots[depth]

    @property
    def max_output_chars(self) -> int:
        return int(self.environment_kwargs.get("max_output_chars", 20_000))


_SECRET_WORDS = ("key", "token", "secret", "password", "authorization", "credential")


def without_secrets(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for a log: values under names that look like secrets are replaced."""
    return {
        name: "<hidden>" if any(word in name.lower() for word in _SECRET_WORDS) else value
        for name, value in kwargs.items()
    }


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
    # Every environment is built as cls(broker=, handler=, label=, **environment_kwargs).
    cls: Callable[..., Environment] = environment_class(config.environment)
    kwargs = dict(config.environment_kwargs)
    setup_code = kwargs.pop("setup_code", None)
    try:
        env = cls(broker=config.broker, handler=dispatch, label=label, **kwargs)
    except TypeError as error:
        raise ConfigurationError(
            f"bad environment_kwargs for {environment_name(config.environment)!r}: {error}"
        ) from error
    await env.start()
    if setup_code:
        # As in the reference: code run once in the fresh REPL before the model's first cell.
        result = await env.execute(setup_code)
        if result.error:
            await env.aclose()
            raise ConfigurationError(
                f"environment_kwargs['setup_code'] raised in the sandbox:\n{result.error}"
            )
    return env


@dataclass
class _Cells:
    """What the code blocks of one reply did."""

    blocks: list[CodeBlock] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # as the model reads them next
    last_error: str = ""  # the last failing cell's error or stderr; "" when none failed
    final: str | None = None  # the ready answer, when a cell set one


class RLMRun:
    """One completion at one depth. Its trajectory (``RLMIteration``s with code blocks, their
    results and every sub-call, children's trajectories nested) is built as it goes: it is the
    completion's ``metadata``, what ``RLMLogger`` writes and what ``rlm view`` renders."""

    def __init__(
        self,
        config: TreeConfig,
        *,
        depth: int,
        ledger: Ledger,
        parent_run_id: str | None = None,
        tools: dict[str, Tool] | None = None,
        logger: RLMLogger | None = None,
        kept_text: KeptText | None = None,
    ) -> None:
        self.config = config
        self.depth = depth
        self.ledger = ledger
        #: The sub-call text this run's tree keeps (shared with its children, like the ledger).
        self.kept_text = kept_text if kept_text is not None else KeptText()
        self.parent_run_id = parent_run_id
        self.run_id = uuid.uuid4().hex[:12]
        self.tools = config.tools if tools is None else tools
        self.logger = logger
        self.iterations: list[dict[str, Any]] = []
        """The log entries of this run's iterations (``RLMIteration`` dicts)."""
        self.messages: list[dict[str, Any]] = []
        """The conversation with the root model, as last sent."""
        self._calls: list[RLMChatCompletion] | None = None
        self._tool_calls: list[dict[str, Any]] | None = None
        self._call_ids = itertools.count(1)
        self._partial = ""
        self._finished_by: str | None = None
        self._history: list[dict[str, Any]] = []
        """What the REPL's ``history`` holds under compaction: segments and summaries."""

    # ---- events ----------------------------------------------------------------------------

    def emit(self, event_kind: str, data: EventData, /) -> None:
        """Emits ``data`` (the ``PAYLOADS[event_kind]`` typed dict) as an event of this run."""
        self.config.events.emit(
            RLMEvent(
                event_kind,
                self.run_id,
                self.depth,
                self.parent_run_id,
                cast("dict[str, Any]", data),
            )
        )

    def _record_call(self, call: RLMChatCompletion) -> None:
        if self._calls is not None:
            self._calls.append(call)

    # ---- call-backs from the sandbox ------------------------------------------------------

    async def _plain_call(
        self, request: Any, kind: str, messages: list[dict[str, Any]]
    ) -> pb.CompleteReply:
        call_id = f"{self.run_id}:{next(self._call_ids)}"
        prompt: Any = messages if request_is_chat(request) else messages[-1]["content"]
        preview = prompt_preview(prompt)
        self.emit(
            "subcall_started",
            SubcallStarted(call_id=call_id, call=kind, prompt_preview=preview),
        )
        started = time.perf_counter()
        client = self.config.router.client_for(request.model or None, self.depth + 1)
        try:
            response = await self.config.router.complete(
                messages, ledger=self.ledger, depth=self.depth + 1, model=request.model or None
            )
        except BaseException as error:
            seconds = time.perf_counter() - started
            message = f"{type(error).__name__}: {error}"
            self._record_call(
                RLMChatCompletion(
                    root_model=client.model_name,
                    prompt=self.kept_text.keep(prompt),
                    response="",
                    usage_summary=UsageSummary(),
                    execution_time=seconds,
                    error=message,
                    extras={
                        "kind": kind,
                        "call_id": call_id,
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                        "cost": None,
                    },
                )
            )
            self.emit(
                "subcall_finished",
                SubcallFinished(
                    call_id=call_id,
                    call=kind,
                    model=client.model_name,
                    seconds=seconds,
                    error=message,
                ),
            )
            raise
        seconds = time.perf_counter() - started
        usage = response.usage
        cost = client.cost_of(response)
        self._record_call(
            RLMChatCompletion(
                root_model=response.model,
                prompt=self.kept_text.keep(prompt),
                response=self.kept_text.keep(response.text),
                usage_summary=UsageSummary(
                    {
                        response.model: ModelUsageSummary(
                            1, usage.input_tokens, usage.output_tokens, cost
                        )
                    }
                ),
                execution_time=seconds,
                extras={
                    "kind": kind,
                    "call_id": call_id,
                    "prompt_tokens": usage.input_tokens,
                    "completion_tokens": usage.output_tokens,
                    "cost": cost,
                },
            )
        )
        self.emit(
            "subcall_finished",
            SubcallFinished(
                call_id=call_id,
                call=kind,
                model=response.model,
                seconds=seconds,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost=cost,
                response_preview=response.text[:PREVIEW_CHARS],
            ),
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
            kept_text=self.kept_text,
        )
        call_id = f"{self.run_id}:{next(self._call_ids)}"
        model = self.config.router.client_for(None, child.depth).model_name
        self.emit(
            "subcall_started",
            SubcallStarted(
                call_id=call_id,
                call="rlm_query",
                model=model,
                prompt_preview=request.prompt[:PREVIEW_CHARS],
                child_run_id=child.run_id,
            ),
        )
        started = time.perf_counter()
        extras = {"kind": "rlm_query", "call_id": call_id, "child_run_id": child.run_id}
        try:
            async with self.config.subcall_slots(child.depth):
                result = await child.run(request.prompt, None)
        except BaseException as error:
            seconds = time.perf_counter() - started
            message = f"{type(error).__name__}: {error}"
            usage = UsageSummary.from_ledger(child.ledger.usage)
            self._record_call(
                RLMChatCompletion(
                    root_model=model,
                    prompt=self.kept_text.keep(request.prompt),
                    response="",
                    usage_summary=usage,
                    execution_time=seconds,
                    metadata=child.trajectory(),
                    error=message,
                    extras={**extras, **usage_extras(usage)},
                )
            )
            self.emit(
                "subcall_finished",
                SubcallFinished(
                    call_id=call_id,
                    call="rlm_query",
                    model=model,
                    seconds=seconds,
                    error=message,
                    child_run_id=child.run_id,
                ),
            )
            raise
        seconds = time.perf_counter() - started
        usage = result.usage_summary
        result.prompt = self.kept_text.keep(result.prompt)
        result.extras = {**extras, **usage_extras(usage)}
        self._record_call(result)
        self.emit(
            "subcall_finished",
            SubcallFinished(
                call_id=call_id,
                call="rlm_query",
                model=model,
                seconds=seconds,
                input_tokens=usage.total_input_tokens,
                output_tokens=usage.total_output_tokens,
                cost=usage.total_cost,
                response_preview=result.response[:PREVIEW_CHARS],
                child_run_id=child.run_id,
            ),
        )
        return pb.CompleteReply(text=result.response)

    async def on_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        tool = self.tools.get(request.name)
        if tool is None or not callable(tool.value):
            raise ConfigurationError(f"no host-side tool named {request.name!r}")
        payload = json.loads(request.args_json or b"{}")
        started = time.perf_counter()
        record: dict[str, Any] = {"name": request.name}
        try:
            value = await asyncio.wait_for(
                asyncio.to_thread(
                    tool.value, *payload.get("args", []), **payload.get("kwargs", {})
                ),
                self.config.tool_timeout,
            )
            as_json, as_pickle = encode_value(value)
        except TypeError as error:
            record["error"] = str(error)
            raise ConfigurationError(f"tool {request.name!r}: {error}") from error
        finally:
            record["seconds"] = time.perf_counter() - started
            if self._tool_calls is not None:
                self._tool_calls.append(record)
        return pb.ToolReply(result_json=as_json, result_pickle=as_pickle)

    # ---- the trajectory --------------------------------------------------------------------

    def trajectory(self) -> dict[str, Any]:
        """The reference's ``{"run_metadata", "iterations"}``, plus this run's id, depth and
        how it finished."""
        return {
            "run_metadata": self.config.run_metadata(self.depth),
            "iterations": list(self.iterations),
            "run_id": self.run_id,
            "depth": self.depth,
            "finished_by": self._finished_by,
        }

    def _record_iteration(self, iteration: RLMIteration, number: int | None = None) -> None:
        """Logs an entry; ``number`` is the loop's iteration (None for a compaction or the
        final answer after the last iteration)."""
        if self.logger is not None:
            self.iterations.append(self.logger.log(iteration))
        else:
            self.iterations.append(iteration_entry(len(self.iterations) + 1, iteration))
        self.emit(
            "iteration_finished",
            IterationFinished(
                iteration=number,
                seconds=iteration.iteration_time,
                final_answer=iteration.final_answer,
                kind=iteration.extras.get("kind"),
            ),
        )

    # ---- the loop --------------------------------------------------------------------------

    async def _setup_sandbox(
        self, env: Environment, context: Any, context_name: str, aliases: tuple[str, ...]
    ) -> None:
        await env.load_context(context, name=context_name, aliases=aliases)
        values = {n: t.value for n, t in self.tools.items() if not callable(t.value)}
        if self.config.compaction and context_name in ("context", "context_0"):
            values.setdefault("history", [])
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
        aliases: tuple[str, ...] = ("context_0",),
        turn: int = 0,
    ) -> RLMChatCompletion:
        """Runs the loop; opens (and closes) its own sandbox unless one is handed in.
        ``turn`` is the completion's index in a persistent session (0 otherwise)."""
        started = time.perf_counter()
        router = self.config.router
        root_model = router.client_for(None, self.depth).model_name
        if self.logger is not None:
            self.logger.log_metadata(RLMMetadata.from_dict(self.config.run_metadata(self.depth)))
            self.logger.clear_iterations()
        self.emit(
            "run_started",
            RunStarted(
                model=root_model,
                environment=environment_name(self.config.environment),
                context_chars=len(context) if isinstance(context, (str, list, dict)) else None,
                root_prompt=root_prompt,
                max_iterations=self.config.max_iterations,
            ),
        )
        owned = environment is None
        env = environment
        response = ""
        error_text: str | None = None
        try:
            self.ledger.check()
            if env is None:
                env = await open_environment(
                    self.config, SessionDispatch(self), f"{self.run_id} (depth {self.depth})"
                )
            elif dispatch is not None:
                dispatch.run = self
            await self._setup_sandbox(env, context, context_name, aliases)
            response, self._finished_by = await self._loop(env, context, root_prompt, turn)
            return RLMChatCompletion(
                root_model=root_model,
                prompt=context,
                response=response,
                usage_summary=UsageSummary.from_ledger(self.ledger.usage),
                execution_time=time.perf_counter() - started,
                metadata=self.trajectory(),
            )
        except BaseException as error:
            self._finished_by = "error"
            error_text = f"{type(error).__name__}: {error}"
            if isinstance(error, LimitExceededError) and error.partial_answer is None:
                error.partial_answer = self._partial or None
            raise
        finally:
            if owned and env is not None:
                await env.aclose()
            self.emit(
                "run_finished",
                RunFinished(
                    response=response,
                    finished_by=self._finished_by,
                    seconds=time.perf_counter() - started,
                    usage=UsageSummary.from_ledger(self.ledger.usage).to_dict(),
                    error=error_text,
                ),
            )

    def _first_messages(self, context: Any, root_prompt: str | None, turn: int) -> list[dict]:
        config = self.config
        if config.custom_system_prompt:
            system = config.custom_system_prompt
        else:
            system = prompts.system_prompt(
                context_value=context,
                max_output_chars=config.max_output_chars,
                depth=self.depth,
                max_depth=config.max_depth,
                tools={n: t.description for n, t in self.tools.items()},
                orchestrator=config.orchestrator,
                compaction=config.compaction,
            )
        messages = [
            {"role": "system", "content": system},
            {
                "role": "user",
                "content": prompts.first_user_message(context, root_prompt, turn=turn),
            },
        ]
        if config.user_prologue:
            messages.append({"role": "user", "content": config.user_prologue})
        return messages

    async def _loop(
        self, env: Environment, context: Any, root_prompt: str | None, turn: int
    ) -> tuple[str, str]:
        """Iterates (ask the model, run its cells, record, feed the output back) until a cell
        sets a ready answer or the iterations run out; returns (answer, how it finished)."""
        config = self.config
        messages = self.messages = self._first_messages(context, root_prompt, turn)
        consecutive_errors = 0
        compactions = 0
        for iteration in range(1, config.max_iterations + 1):
            self.ledger.check()
            if config.compaction:
                compacted = await self._maybe_compact(env, messages, compactions + 1)
                if compacted is not None:
                    compactions += 1
                    messages = self.messages = compacted
            self.emit("iteration_started", IterationStarted(iteration=iteration))
            started = time.perf_counter()
            prompt_snapshot = list(messages)
            reply, lm_seconds = await self._ask_model(messages, iteration)
            parsed = parse_reply(reply.text)
            cells = await self._run_cells(env, iteration, parsed.blocks)
            self._record_iteration(
                RLMIteration(
                    prompt=prompt_snapshot,
                    response=reply.text,
                    code_blocks=cells.blocks,
                    final_answer=cells.final,
                    iteration_time=time.perf_counter() - started,
                    extras={
                        "kind": "iteration",
                        "run_id": self.run_id,
                        "depth": self.depth,
                        **self._lm_extras(reply, lm_seconds),
                        **({"reply_problem": parsed.problem} if parsed.problem else {}),
                        **({"finished_by": "answer"} if cells.final is not None else {}),
                    },
                ),
                iteration,
            )
            messages.append({"role": "assistant", "content": reply.text})
            if cells.final is not None:
                return cells.final, "answer"
            if parsed.problem:
                cells.outputs.append(f"Problem with your reply: {parsed.problem}")
            # As the reference counts: an iteration whose code wrote to stderr or raised.
            consecutive_errors = consecutive_errors + 1 if cells.last_error else 0
            self._check_error_threshold(consecutive_errors, cells.last_error)
            messages.append(self._next_user_message(cells.outputs, iteration))
            if config.compaction:
                await self._append_history(env, messages[-2:])
        return await self._final_reply(messages), "max_iterations"

    async def _ask_model(self, messages: list[dict], iteration: int) -> tuple[LMResponse, float]:
        """One call of this run's model on ``messages``; returns the reply and its seconds."""
        started = time.perf_counter()
        reply = await self.config.router.complete(messages, ledger=self.ledger, depth=self.depth)
        seconds = time.perf_counter() - started
        self.emit(
            "lm_response",
            LMResponded(
                iteration=iteration,
                text=reply.text,
                seconds=seconds,
                input_tokens=reply.usage.input_tokens,
                output_tokens=reply.usage.output_tokens,
            ),
        )
        return reply, seconds

    async def _run_cells(self, env: Environment, iteration: int, codes: list[str]) -> _Cells:
        """Runs the reply's code blocks in order, up to the first that sets a ready answer."""
        cells = _Cells()
        for index, code in enumerate(codes, start=1):
            self._calls, self._tool_calls = [], []
            try:
                result = await env.execute(code, timeout=self._cell_timeout())
            finally:
                calls, tools = self._calls, self._tool_calls
                self._calls = self._tool_calls = None
            cells.blocks.append(CodeBlock(code, repl_result(result, calls, tools)))
            self.emit(
                "cell_executed",
                CellExecuted(
                    iteration=iteration,
                    block=index,
                    code=code,
                    stdout=result.stdout,
                    stderr=result.stderr,
                    error=result.error,
                    seconds=result.seconds,
                    restarted=result.restarted,
                ),
            )
            cells.outputs.append(prompts.format_cell(index, code, result))
            if result.answer_content:
                self._partial = result.answer_content
            if result.fatal:
                self.ledger.check()
            if result.error or result.stderr:
                cells.last_error = (result.error or result.stderr).strip() or "(blank stderr)"
            if result.answer_ready:
                cells.final = result.answer_content
                cells.blocks[-1].result.final_answer = cells.final
                break
        return cells

    def _check_error_threshold(self, consecutive_errors: int, last_error: str) -> None:
        limit = self.config.max_errors
        if limit is not None and consecutive_errors >= limit:
            raise ErrorThresholdExceededError(
                f"{consecutive_errors} consecutive iterations ended in an error "
                f"(max_errors={limit}); the last one: {last_error[-500:]}",
                error_count=consecutive_errors,
                threshold=limit,
                last_error=last_error,
                partial_answer=self._partial or None,
            )

    def _next_user_message(self, outputs: list[str], iteration: int) -> dict[str, str]:
        """What the model reads after an iteration: its cells' output and where it stands."""
        return {
            "role": "user",
            "content": prompts.NEXT_USER_MESSAGE.format(
                outputs="\n\n".join(outputs) or "(no code block in your reply)",
                iteration=iteration + 1,
                max_iterations=self.config.max_iterations,
            ),
        }

    async def _final_reply(self, messages: list[dict]) -> str:
        """Out of iterations: asks the model for its best answer as plain text."""
        messages.append({"role": "user", "content": prompts.OUT_OF_ITERATIONS})
        started = time.perf_counter()
        reply = await self.config.router.complete(messages, ledger=self.ledger, depth=self.depth)
        answer = reply.text.strip()
        messages.append({"role": "assistant", "content": reply.text})
        self._record_iteration(
            RLMIteration(
                prompt=list(messages[:-1]),
                response=reply.text,
                code_blocks=[],
                final_answer=answer,
                iteration_time=time.perf_counter() - started,
                extras={
                    "kind": "final",
                    "run_id": self.run_id,
                    "depth": self.depth,
                    **self._lm_extras(reply, time.perf_counter() - started),
                    "finished_by": "max_iterations",
                },
            )
        )
        return answer

    def _lm_extras(self, reply: LMResponse, seconds: float) -> dict[str, Any]:
        """What the root model's call of an entry took: time, tokens and cost."""
        client = self.config.router.client_for(None, self.depth)
        return {
            "lm_seconds": seconds,
            "input_tokens": reply.usage.input_tokens,
            "output_tokens": reply.usage.output_tokens,
            "cost": client.cost_of(reply),
        }

    async def _append_history(self, env: Environment, entry: Any) -> None:
        """Adds one iteration's messages to the REPL's ``history`` (as the reference does under
        compaction) with a hidden cell that carries only the new entry."""
        self._history.append(entry)
        literal = json.dumps(json.dumps(entry))
        await env.execute(f"history.append(__import__('json').loads({literal}))")

    def _cell_timeout(self) -> float | None:
        remaining = self.ledger.remaining_seconds()
        return None if remaining is None else max(0.5, remaining)

    async def _maybe_compact(
        self, env: Environment, messages: list[dict[str, Any]], count: int
    ) -> list[dict[str, Any]] | None:
        """Past the threshold: the model summarises, the summary joins the REPL's ``history``
        (which already holds every iteration's messages) and the conversation restarts from it."""
        size = sum(len(str(m.get("content", ""))) for m in messages)
        if size <= self.config.compaction_threshold_chars or len(messages) <= 3:
            return None
        started = time.perf_counter()
        request = [*messages, {"role": "user", "content": prompts.COMPACTION_REQUEST}]
        summary = await self.config.router.complete(request, ledger=self.ledger, depth=self.depth)
        # The whole history again (not one more entry): it is also what a restarted runner gets.
        self._history.append({"type": "summary", "content": summary.text})
        await env.set_variables({"history": self._history}, [])
        self._record_iteration(
            RLMIteration(
                prompt=request,
                response=summary.text,
                code_blocks=[],
                iteration_time=time.perf_counter() - started,
                extras={
                    "kind": "compaction",
                    "run_id": self.run_id,
                    "depth": self.depth,
                    **self._lm_extras(summary, time.perf_counter() - started),
                },
            )
        )
        return [
            messages[0],
            messages[1],
            {"role": "assistant", "content": summary.text},
            {"role": "user", "content": prompts.AFTER_COMPACTION.format(count=count)},
        ]


TRAJECTORY_TEXT_CHARS = 200_000
"""Prompts and replies of sub-calls are kept in the trajectory up to this many characters each
(with a note of what was cut), so a wide fan-out cannot make the host hold every chunk twice."""

TRAJECTORY_TREE_CHARS = 64 * 1024 * 1024
"""Sub-call text one tree keeps in its trajectory in all (memory, ``metadata``, the log); past
it each prompt and reply is kept as a ``PREVIEW_CHARS`` preview with a note."""


class KeptText:
    """The sub-call text a tree keeps: each text cut to ``TRAJECTORY_TEXT_CHARS``, all of them
    together to ``budget`` characters. (One tree runs on one event loop: no lock needed.)"""

    def __init__(self, budget: int | None = None) -> None:
        self.left = TRAJECTORY_TREE_CHARS if budget is None else budget

    def keep(self, value: Any) -> Any:
        """``value`` (a str, or chat messages) as the trajectory keeps it."""
        if isinstance(value, list):
            return [
                {**m, "content": self.keep(m.get("content"))} if isinstance(m, dict) else m
                for m in value
            ]
        if not isinstance(value, str):
            return value
        room = min(TRAJECTORY_TEXT_CHARS, max(self.left, PREVIEW_CHARS))
        kept = value[:room]
        self.left -= len(kept)
        if len(kept) == len(value):
            return value
        why = "" if room == TRAJECTORY_TEXT_CHARS else "; the tree's trajectory text cap is spent"
        return f"{kept}[... {len(value) - len(kept):,} more characters not kept{why}]"


def usage_extras(usage: UsageSummary) -> dict[str, Any]:
    """A sub-call's tokens and cost under the names the reference's visualizer reads."""
    return {
        "prompt_tokens": usage.total_input_tokens,
        "completion_tokens": usage.total_output_tokens,
        "cost": usage.total_cost,
    }


def request_is_chat(request: Any) -> bool:
    return bool(getattr(request, "messages_json", b""))


def prompt_preview(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt[:PREVIEW_CHARS]
    return json.dumps(prompt, ensure_ascii=False)[:PREVIEW_CHARS]


SANDBOX_VALUE = "<in the sandbox>"
"""What a variable's value shows in a result's ``locals``: values are not copied out of the
sandbox (only their names), so nothing the code made is unpickled or evaluated on the host."""


def repl_result(
    result: CellResult,
    calls: list[RLMChatCompletion] | None,
    tools: list[dict[str, Any]] | None,
) -> REPLResult:
    """A cell's outcome in the reference's shape; the traceback is part of ``stderr`` there."""
    stderr = "\n".join(part for part in (result.stderr.rstrip("\n"), result.error) if part)
    extras: dict[str, Any] = {}
    if result.error:
        extras["error"] = result.error
    if result.restarted:
        extras["restarted"] = True
    if result.stdout_dropped:
        extras["stdout_dropped"] = result.stdout_dropped
    if result.stderr_dropped:
        extras["stderr_dropped"] = result.stderr_dropped
    if tools:
        extras["tool_calls"] = tools
    return REPLResult(
        stdout=result.stdout,
        stderr=stderr,
        locals=dict.fromkeys(result.variables, SANDBOX_VALUE),
        execution_time=result.seconds,
        rlm_calls=calls or [],
        extras=extras,
    )


__all__ = ["RLMError", "RLMRun", "SessionDispatch", "Tool", "TreeConfig", "parse_tools"]
