"""The reference ``rlms`` environment API (``LocalREPL``, ``DockerREPL``, ``get_environment``...)
over rlm's own sandboxes.

A REPL here is a synchronous front for one of rlm's environments (``environment_class(name)``):
the code runs in that environment's runner (for ``local``, a separate process with a scrubbed
environment; for ``docker``, a locked-down container), never in the host interpreter. Each REPL
is an :class:`rlm.sandbox.AsyncSandbox` (its own broker and session) whose handler
(:class:`_REPLDispatch`) answers ``llm_query`` through the :class:`rlm.core.lm_handler.LMHandler`
named by ``lm_handler_address``, ``rlm_query`` through ``subcall_fn``, and custom tools on the
host.

What differs from an in-process REPL follows from the isolation: ``REPLResult.locals`` and
``.locals`` are a serialised snapshot of the sandbox's namespace (JSON values stay values; modules,
callables and other objects become the strings ``_serialize_value`` gives), and custom tool
callables run on the host with JSON arguments and results.
"""

from __future__ import annotations

import asyncio
import copy
import json
import sys
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from rlm.broker.loop import on_loop_thread, run_sync, submit
from rlm.environments.base import CellResult, Environment, ToolSpec
from rlm.errors import ConfigurationError, SandboxError
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.types import REPLResult, RLMChatCompletion

if TYPE_CHECKING:
    from rlm.sandbox import AsyncSandbox

# =============================================================================================
# Custom tools
# =============================================================================================

RESERVED_TOOL_NAMES: frozenset[str] = frozenset(
    {
        "llm_query",
        "llm_query_batched",
        "rlm_query",
        "rlm_query_batched",
        "SHOW_VARS",
        "answer",
        "context",
        "history",
    }
)
"""Names the REPL defines itself; a custom tool may not take them."""


@dataclass
class ToolInfo:
    """One custom tool: its name, its value (a callable or data) and an optional description."""

    name: str
    value: Any
    description: str | None = None

    @property
    def is_callable(self) -> bool:
        """Whether the tool is a function (else it is data)."""
        return callable(self.value)


def parse_tool_entry(name: str, entry: Any) -> ToolInfo:
    """Read one ``custom_tools`` entry: a plain value, or ``{"tool": value, "description": str}``."""
    if isinstance(entry, dict) and "tool" in entry:
        description = entry.get("description")
        return ToolInfo(name, entry["tool"], description if isinstance(description, str) else None)
    return ToolInfo(name, entry, None)


def parse_custom_tools(custom_tools: dict[str, Any] | None) -> list[ToolInfo]:
    """Every entry of ``custom_tools`` as a :class:`ToolInfo` (``[]`` for None)."""
    return [parse_tool_entry(name, entry) for name, entry in (custom_tools or {}).items()]


def extract_tool_value(entry: Any) -> Any:
    """The value of a ``custom_tools`` entry (unwrapping ``{"tool": ..., "description": ...}``)."""
    if isinstance(entry, dict) and "tool" in entry:
        return entry["tool"]
    return entry


def format_tools_for_prompt(custom_tools: dict[str, Any] | None) -> str | None:
    """One ``- `name`: description`` line per tool for the system prompt; None without tools."""
    lines = []
    for tool in parse_custom_tools(custom_tools):
        if tool.description:
            text = tool.description
        elif tool.is_callable:
            text = "A custom function"
        else:
            text = f"A custom {type(tool.value).__name__} value"
        lines.append(f"- `{tool.name}`: {text}")
    return "\n".join(lines) or None


def _is_code(value: Any) -> bool:
    """A ``custom_tools`` string that the reference's out-of-process REPLs run as code (a
    ``def``, ``class`` or ``lambda``, or several lines) instead of passing it as a string."""
    if not isinstance(value, str):
        return False
    stripped = value.strip()
    return stripped.startswith(("def ", "class ", "lambda")) or "\n" in value


def validate_custom_tools(custom_tools: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` when a tool name is one of :data:`RESERVED_TOOL_NAMES`."""
    clashes = sorted(set(custom_tools or {}) & RESERVED_TOOL_NAMES)
    if clashes:
        raise ValueError(
            f"Custom tools cannot override reserved REPL functions: {clashes}. Rename them; "
            f"reserved names: {sorted(RESERVED_TOOL_NAMES)}"
        )


# =============================================================================================
# Protocols and base classes
# =============================================================================================


@runtime_checkable
class SupportsCustomTools(Protocol):
    """An environment that injects ``custom_tools`` (functions and data) into its REPL."""

    custom_tools: dict[str, Any]


@runtime_checkable
class SupportsPersistence(Protocol):
    """An environment that keeps its state across completions: numbered ``context_N`` and
    ``history_N`` variables (``context``/``history`` name the first ones)."""

    def update_handler_address(self, address: tuple[str, int]) -> None:
        """Send later ``llm_query`` calls to the handler at ``address``."""
        ...

    def add_context(
        self, context_payload: dict | list | str, context_index: int | None = None
    ) -> int:
        """Bind ``context_payload`` to ``context_N`` (next free N by default); returns N."""
        ...

    def get_context_count(self) -> int:
        """How many contexts were added."""
        ...

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        """Bind a copy of ``message_history`` to ``history_N`` (next free N by default)."""
        ...

    def get_history_count(self) -> int:
        """How many histories were added."""
        ...


class BaseEnv(ABC):
    """A REPL the model's code runs in: ``setup``, ``load_context``, ``execute_code``."""

    def __init__(
        self,
        persistent: bool = False,
        depth: int = 1,
        max_concurrent_subcalls: int = 4,
        **kwargs: Any,
    ) -> None:
        self.persistent = persistent
        self.depth = depth
        self.max_concurrent_subcalls = max_concurrent_subcalls
        self.kwargs = kwargs

    @abstractmethod
    def setup(self) -> None:
        """Create the REPL's state (and, here, its sandbox)."""

    @abstractmethod
    def load_context(self, context_payload: dict | list | str) -> None:
        """Bind the context as ``context`` / ``context_0``."""

    @abstractmethod
    def execute_code(self, code: str) -> REPLResult:
        """Run one cell and report what it did."""


class IsolatedEnv(BaseEnv, ABC):
    """An environment on another machine than the LM client (Modal, E2B, Daytona, Prime)."""


class NonIsolatedEnv(BaseEnv, ABC):
    """An environment on the LM client's machine (a local process, a container)."""


# =============================================================================================
# The sandbox side: installed by a hidden cell, read back by another after every user cell
# =============================================================================================

_PRELUDE = r"""
def _rlm_compat_install(config):
    import json as _json
    import sys as _sys
    import types as _types

    ns = globals()
    events = []
    helper_names = ("llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched", "SHOW_VARS")
    tool_names = set(config["tools"])
    compaction_history = list(config["history"])

    def errors_as_text(function):
        def call(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except Exception as error:
                if type(error).__name__ == "SubcallError":
                    return f"Error: {error}"
                raise

        call.__name__ = function.__name__
        call.__doc__ = function.__doc__
        return call

    helpers = {name: ns[name] for name in helper_names if name in ns}
    for name in ("llm_query", "rlm_query"):
        if name in helpers:
            helpers[name] = errors_as_text(helpers[name])

    def show_vars():
        names = {
            name: type(value).__name__
            for name, value in ns.items()
            if not name.startswith("_")
            and name not in helpers
            and name not in tool_names
            and name != "answer"
        }
        if not names:
            return "No variables yet: define some in a ```repl block."
        return f"Available variables: {names}"

    show_vars.__doc__ = "The REPL's variables and their types (helpers and answer left out)."
    helpers["SHOW_VARS"] = show_vars

    class AnswerDict(dict):
        def __setitem__(self, key, value):
            dict.__setitem__(self, key, value)
            if key == "ready" and value:
                events.append(str(self.get("content", "")))

    def wrap(value):
        fresh = AnswerDict(content="", ready=False)
        if isinstance(value, dict):
            dict.update(fresh, value)
        return fresh

    def restore():
        ns.update(helpers)
        if "context_0" in ns:
            ns["context"] = ns["context_0"]
        if config["compaction"]:
            ns["history"] = compaction_history
        elif "history_0" in ns:
            ns["history"] = ns["history_0"]
        current = ns.get("answer")
        if not isinstance(current, AnswerDict):
            if isinstance(current, dict) and current.get("ready") and not events:
                events.append(str(current.get("content", "")))
            ns["answer"] = wrap(current)

    def serialise(value):
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, _types.ModuleType):
            return f"<module '{value.__name__}'>"
        if isinstance(value, (list, tuple)):
            return [serialise(item) for item in value]
        if isinstance(value, dict):
            return {str(key): serialise(item) for key, item in value.items()}
        if callable(value):
            return f"<{type(value).__name__} '{getattr(value, '__name__', None) or repr(value)}'>"
        try:
            return repr(value)
        except Exception:
            return f"<{type(value).__name__}>"

    def snapshot(limit):
        restore()
        final = events[-1] if events else None
        events.clear()
        out = {}
        for name, value in list(ns.items()):
            if name.startswith("_") or name in helpers or name in tool_names:
                continue
            try:
                item = serialise(value)
                size = len(_json.dumps(item))
            except (RecursionError, ValueError, TypeError):
                item, size = f"<{type(value).__name__}>", 0
            if size > limit:
                item = f"<{type(value).__name__}: {size} characters, too large to copy to the host>"
            out[name] = item
        _sys.stdout.write(_json.dumps({"final_answer": final, "locals": out}))

    def reset_answer():
        ns["answer"] = wrap(None)
        events.clear()

    ns["_rlm_compat_snapshot"] = snapshot
    ns["_rlm_compat_reset_answer"] = reset_answer
    ns["_rlm_compat_history"] = compaction_history
    ns["answer"] = wrap(ns.get("answer"))
    restore()
"""

#: serialised size above which one variable is not copied into a locals snapshot
SNAPSHOT_VALUE_LIMIT = 8 * 1024 * 1024
#: output cap of the snapshot cell (the runner's message limit is 64 MiB)
SNAPSHOT_OUTPUT_LIMIT = 48 * 1024 * 1024
#: how long a hidden bookkeeping cell may take
HIDDEN_CELL_TIMEOUT = 120.0

#: ``.repl`` is the REPL whose subcall_fn or tool the current thread is running, if any
_inside = threading.local()


class _REPLDispatch:
    """The broker-side handler of a REPL's sandbox: LM calls go to the REPL's ``LMHandler``,
    ``rlm_query`` to its ``subcall_fn``, tool calls to its custom tools on the host."""

    def __init__(self, repl: SandboxREPL) -> None:
        self.repl = repl

    def _handler(self) -> Any:
        from rlm.core.lm_handler import lookup_handler

        address = self.repl.lm_handler_address
        if address is None:
            raise ConfigurationError(
                "No LM handler configured: create the REPL with "
                "lm_handler_address=LMHandler(client).start()"
            )
        handler = lookup_handler(address)
        if handler is None:
            raise ConfigurationError(
                f"no LM handler is running at {address!r}: start it (LMHandler.start() or "
                "'with LMHandler(...)') before running code that calls llm_query"
            )
        return handler

    def _slot(self) -> int:
        """Reserves the call's place in ``rlm_calls`` in the order the calls arrived (the order
        the code issued them), whatever order they finish in."""
        self.repl._pending_calls.append(None)
        return len(self.repl._pending_calls) - 1

    def _fill(self, slot: int, completion: RLMChatCompletion) -> None:
        if slot < len(self.repl._pending_calls):
            self.repl._pending_calls[slot] = completion

    async def _llm(self, prompt: Any, model: str | None) -> RLMChatCompletion:
        slot = self._slot()
        completion = await self._handler().acomplete(prompt, model, depth=self.repl.depth)
        self._fill(slot, completion)
        return completion

    def _on_host_thread(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Runs a user callable (``subcall_fn``, a tool) marked as running inside this REPL, so
        that it cannot call back into the REPL's own ``execute_code`` and deadlock."""
        _inside.repl = self.repl
        try:
            return function(*args, **kwargs)
        finally:
            _inside.repl = None

    @staticmethod
    def _reply(completion: RLMChatCompletion) -> pb.CompleteReply:
        usage = next(iter(completion.usage_summary.model_usage_summaries.values()), None)
        return pb.CompleteReply(
            text=completion.response,
            model=completion.root_model,
            input_tokens=usage.total_input_tokens if usage else 0,
            output_tokens=usage.total_output_tokens if usage else 0,
            cost=(usage.total_cost or 0.0) if usage else 0.0,
        )

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        prompt: Any = json.loads(request.messages_json) if request.messages_json else request.prompt
        return self._reply(await self._llm(prompt, request.model or None))

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        subcall_fn = self.repl.subcall_fn
        if subcall_fn is None:
            return self._reply(await self._llm(request.prompt, request.model or None))
        slot = self._slot()
        async with self.repl._subcall_slots():
            completion = await asyncio.to_thread(
                self._on_host_thread, subcall_fn, request.prompt, request.model or None
            )
        if not isinstance(getattr(completion, "response", None), str):
            raise ConfigurationError(
                f"subcall_fn returned {type(completion).__name__}; it must return an "
                "RLMChatCompletion (its .response is what rlm_query gives the code)"
            )
        self._fill(slot, completion)
        return pb.CompleteReply(
            text=completion.response, model=str(getattr(completion, "root_model", "") or "")
        )

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        entry = self.repl.custom_tools.get(request.name)
        function = extract_tool_value(entry)
        if entry is None or not callable(function):
            raise ConfigurationError(f"no host-side tool named {request.name!r}")
        payload = json.loads(request.args_json or b"{}")
        value = await asyncio.to_thread(
            self._on_host_thread, function, *payload.get("args", []), **payload.get("kwargs", {})
        )
        try:
            return pb.ToolReply(result_json=json.dumps(value).encode())
        except TypeError as error:
            raise ConfigurationError(
                f"tool {request.name!r} returned a value that is not JSON-serialisable: {error}"
            ) from error


@dataclass
class _Snapshot:
    final_answer: str | None
    locals: dict[str, Any]


class SandboxREPL(BaseEnv):
    """A reference-style REPL over the rlm environment named :attr:`environment_name`.

    Keywords the REPL does not use itself go to that environment's constructor (for ``local``:
    ``cell_timeout``, ``memory_mb``, ``max_output_chars``, ``env``, ``workdir``...).
    """

    environment_name: ClassVar[str] = "local"
    runs_code_strings: ClassVar[bool] = False
    """As the reference's out-of-process REPLs: a ``custom_tools`` string that looks like code
    (``def``/``class``/``lambda``/several lines) is run in the REPL to define the tool."""

    def __init__(
        self,
        lm_handler_address: Any = None,
        context_payload: dict | list | str | None = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        subcall_fn: Any = None,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        compaction: bool = False,
        max_concurrent_subcalls: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            persistent=persistent,
            depth=depth,
            max_concurrent_subcalls=max_concurrent_subcalls,
            **kwargs,
        )
        self.lm_handler_address = lm_handler_address
        self.subcall_fn = subcall_fn
        self.compaction = compaction
        self.custom_tools: dict[str, Any] = dict(custom_tools or {})
        self.custom_sub_tools = (
            custom_sub_tools if custom_sub_tools is not None else self.custom_tools
        )
        validate_custom_tools(self.custom_tools)
        self.environment_kwargs = self._environment_kwargs(dict(kwargs))
        self._lock = threading.RLock()
        self._pending_calls: list[RLMChatCompletion | None] = []
        self._compaction_history: list[Any] = []
        self._context_count = 0
        self._history_count = 0
        self._locals: dict[str, Any] | None = None
        self._slots: asyncio.Semaphore | None = None
        self._sandbox: AsyncSandbox | None = None
        self._env: Environment | None = None
        self._closed = False
        self.setup()
        try:
            if context_payload is not None:
                self.load_context(context_payload)
            if setup_code:
                self.execute_code(setup_code)
        except BaseException:
            self.cleanup()
            raise

    # ---- configuration ---------------------------------------------------------------------

    def _environment_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The rlm environment's keyword arguments for this REPL's remaining ``kwargs``."""
        return kwargs

    @property
    def environment(self) -> Environment:
        """The rlm environment the code runs in."""
        if self._env is None:
            raise SandboxError(f"{type(self).__name__} is closed; create a new one")
        return self._env

    # ---- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        """Start the sandbox (and this REPL's broker) and install the REPL's helpers in it."""
        if self._env is not None:
            return
        self._closed = False
        run_sync(self._astart())

    async def _astart(self) -> None:
        from rlm.sandbox import AsyncSandbox

        sandbox = AsyncSandbox(
            self.environment_name,
            handler=_REPLDispatch(self),
            label=f"{type(self).__name__} (depth {self.depth})",
            **self.environment_kwargs,
        )
        try:
            await sandbox.start()
            self._sandbox, self._env = sandbox, sandbox.environment
            env = sandbox.environment
            tools = parse_custom_tools(self.custom_tools)
            code = {t.name: t.value for t in tools if self.runs_code_strings and _is_code(t.value)}
            values = {t.name: t.value for t in tools if not t.is_callable and t.name not in code}
            specs = [ToolSpec(t.name, t.description or "") for t in tools if t.is_callable]
            if values or specs:
                await env.set_variables(values, specs)
            for name, source in code.items():
                if source.strip().startswith("lambda"):
                    source = f"{name} = {source.strip()}"
                cell = await env.execute(f"{source}\n", timeout=HIDDEN_CELL_TIMEOUT)
                if cell.error:
                    raise ConfigurationError(
                        f"custom tool {name!r}: its code raised:\n{cell.error}"
                    )
            await self._install()
        except BaseException:
            await self._aclose()
            raise

    async def _hidden(
        self, code: str, output_limit: int | None = None, *, check: bool = True
    ) -> CellResult:
        env = self.environment
        saved = getattr(env, "max_output_chars", None)
        if output_limit is not None and saved is not None:
            env.max_output_chars = output_limit  # type: ignore[attr-defined]
        try:
            cell = await env.execute(code, timeout=HIDDEN_CELL_TIMEOUT)
        finally:
            if output_limit is not None and saved is not None:
                env.max_output_chars = saved  # type: ignore[attr-defined]
        if check and cell.error and not cell.restarted:
            raise SandboxError(
                f"the {self.environment_name} REPL's bookkeeping failed: {cell.error}"
            )
        return cell

    async def _install(self) -> None:
        config = {
            "tools": [t.name for t in parse_custom_tools(self.custom_tools) if t.is_callable],
            "compaction": self.compaction,
            "history": self._compaction_history,
        }
        await self._hidden(
            _PRELUDE + f"\n_rlm_compat_install(__import__('json').loads({json.dumps(config)!r}))\n"
            "del _rlm_compat_install\n"
        )

    async def _snapshot(self) -> _Snapshot:
        code = f"_rlm_compat_snapshot({SNAPSHOT_VALUE_LIMIT})"
        cell = await self._hidden(code, output_limit=SNAPSHOT_OUTPUT_LIMIT, check=False)
        if cell.error:  # the cell's code removed the helper or the runner restarted: reinstall
            await self._install()
            cell = await self._hidden(code, output_limit=SNAPSHOT_OUTPUT_LIMIT, check=False)
        try:
            data = json.loads(cell.stdout)
        except ValueError:
            return _Snapshot(None, {name: "<unavailable>" for name in cell.variables})
        return _Snapshot(data.get("final_answer"), dict(data.get("locals") or {}))

    def cleanup(self) -> None:
        """Stop the sandbox and this REPL's broker; safe to call more than once."""
        if self._closed and self._sandbox is None:
            return
        self._closed = True
        if on_loop_thread():
            submit(self._aclose())
            return
        run_sync(self._aclose())
        self._locals = {}

    async def _aclose(self) -> None:
        sandbox, self._sandbox = self._sandbox, None
        self._env = None
        if sandbox is not None:
            await sandbox.aclose()

    def __enter__(self) -> SandboxREPL:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __del__(self) -> None:
        if getattr(self, "_sandbox", None) is None or sys.is_finalizing():
            return
        try:
            if on_loop_thread():
                submit(self._aclose())
            else:
                run_sync(self._aclose(), timeout=30)
        except Exception:
            pass

    # ---- running code ----------------------------------------------------------------------

    def _subcall_slots(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(max(1, self.max_concurrent_subcalls))
        return self._slots

    async def _aexecute(self, code: str) -> tuple[CellResult, _Snapshot]:
        cell = await self.environment.execute(code)
        if cell.restarted:
            await self._install()
        return cell, await self._snapshot()

    def _refuse_reentry(self) -> None:
        if getattr(_inside, "repl", None) is self:
            raise RuntimeError(
                f"Reentrant call: {type(self).__name__}.execute_code was called from this REPL's "
                "own subcall_fn or tool while its cell is running; use another REPL for the "
                "sub-task"
            )

    def execute_code(self, code: str) -> REPLResult:
        """Run ``code`` in the sandbox; stdout, stderr (with the error, if any), a snapshot of
        the namespace, the LM calls it made and the answer it submitted, if it did."""
        self._refuse_reentry()
        with self._lock:
            self._pending_calls = []
            started = time.perf_counter()
            cell, snapshot = run_sync(self._aexecute(code))
            elapsed = time.perf_counter() - started
            self._locals = snapshot.locals
            stderr = cell.stderr
            if cell.error:
                stderr = f"{stderr}\n{cell.error}" if stderr else cell.error
            calls = [call for call in self._pending_calls if call is not None]
            self._pending_calls = []
            return REPLResult(
                stdout=cell.stdout,
                stderr=stderr,
                locals=dict(snapshot.locals),
                execution_time=elapsed,
                rlm_calls=calls,
                final_answer=snapshot.final_answer,
            )

    @property
    def locals(self) -> dict[str, Any]:
        """The sandbox's variables as a host-side, serialised snapshot (refreshed when stale)."""
        with self._lock:
            if self._locals is None:
                if self._env is None:
                    return {}
                self._locals = run_sync(self._snapshot()).locals
            return self._locals

    # ---- contexts and histories ------------------------------------------------------------

    def load_context(self, context_payload: dict | list | str) -> None:
        """Bind ``context_payload`` as ``context_0`` and ``context``."""
        self.add_context(context_payload, 0)

    def add_context(
        self, context_payload: dict | list | str, context_index: int | None = None
    ) -> int:
        """Bind ``context_payload`` to ``context_N`` (the next free N by default; ``context``
        names ``context_0``); returns N."""
        self._refuse_reentry()
        with self._lock:
            index = self._context_count if context_index is None else int(context_index)
            aliases = ("context",) if index == 0 else ()
            run_sync(
                self.environment.load_context(
                    context_payload, name=f"context_{index}", aliases=aliases
                )
            )
            self._locals = None
            self._context_count = max(self._context_count, index + 1)
            return index

    def get_context_count(self) -> int:
        """How many contexts were added."""
        return self._context_count

    def add_history(
        self, message_history: list[dict[str, Any]], history_index: int | None = None
    ) -> int:
        """Bind a copy of ``message_history`` to ``history_N`` (``history`` names
        ``history_0`` unless compaction owns it); returns N."""
        self._refuse_reentry()
        with self._lock:
            index = self._history_count if history_index is None else int(history_index)
            aliases = ("history",) if index == 0 and not self.compaction else ()
            run_sync(
                self.environment.load_context(
                    list(message_history), name=f"history_{index}", aliases=aliases
                )
            )
            self._locals = None
            self._history_count = max(self._history_count, index + 1)
            return index

    def get_history_count(self) -> int:
        """How many histories were added."""
        return self._history_count

    def update_handler_address(self, address: tuple[str, int]) -> None:
        """Send later ``llm_query`` calls to the handler at ``address`` (a new completion): the
        previous one's ``answer`` is cleared so it cannot be taken for the new one's."""
        self.lm_handler_address = address
        if self._env is not None:
            with self._lock:
                run_sync(self._hidden("_rlm_compat_reset_answer()"))
                self._locals = None

    def append_compaction_entry(self, entry: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Append a trajectory segment or a summary to ``history`` (only with compaction)."""
        if not self.compaction:
            return
        entry = copy.deepcopy(entry)
        payload = json.dumps(entry)
        with self._lock:
            run_sync(
                self._hidden(f"_rlm_compat_history.append(__import__('json').loads({payload!r}))")
            )
            self._compaction_history.append(entry)
            self._locals = None

    def __repr__(self) -> str:
        state = "closed" if self._env is None else "running"
        return f"{type(self).__name__}({self.environment_name!r}, {state})"


# =============================================================================================
# One class per reference environment
# =============================================================================================


def _given(**values: Any) -> dict[str, Any]:
    """The keyword arguments that were given (not None)."""
    return {key: value for key, value in values.items() if value is not None}


class LocalREPL(SandboxREPL, NonIsolatedEnv):
    """The code runs in rlm's local runner: a separate Python process with a scrubbed
    environment (no host secrets), its own working directory and memory limits."""

    environment_name = "local"
    temp_dir: str | None = None
    """The runner's working directory on the host (removed by ``cleanup`` unless you chose it
    with ``workdir=``)."""

    def setup(self) -> None:
        """Start the runner process and install the REPL's helpers in it."""
        super().setup()
        self.temp_dir = getattr(self._env, "workdir", None)


class IPythonREPL(LocalREPL):
    """The reference's IPython REPL: cells run by a real IPython shell (magics, ``!cmd``) in
    rlm's ``ipython`` environment, a separate runner process in both ``kernel_mode`` values.
    ``cell_timeout`` and ``startup_timeout`` apply to the runner; ``subcall_timeout`` is
    accepted for compatibility (calls end with the cell's time limit)."""

    environment_name = "ipython"

    def __init__(
        self,
        *args: Any,
        kernel_mode: str = "in_process",
        cell_timeout: float | None = None,
        startup_timeout: float = 60.0,
        subcall_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        if kernel_mode not in ("in_process", "subprocess"):
            raise ValueError(
                f"kernel_mode must be 'in_process' or 'subprocess', got {kernel_mode!r}"
            )
        for name, value in (
            ("startup_timeout", startup_timeout),
            ("subcall_timeout", subcall_timeout),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        self.kernel_mode = kernel_mode
        self.cell_timeout = cell_timeout or None
        self.startup_timeout = startup_timeout
        self.subcall_timeout = subcall_timeout
        if cell_timeout:  # None or 0: the runner's default limit
            kwargs["cell_timeout"] = cell_timeout
        kwargs["startup_timeout"] = startup_timeout
        super().__init__(*args, **kwargs)


class DockerREPL(SandboxREPL, NonIsolatedEnv):
    """The code runs in rlm's docker environment: a container with no network, a read-only
    root, dropped capabilities and memory/pid limits (image: ``rlm docker build-image``)."""

    environment_name = "docker"
    runs_code_strings = True

    @property
    def container_id(self) -> str | None:
        """The id of the container the code runs in (None once cleaned up)."""
        process = getattr(self._env, "_process", None)
        container = getattr(process, "container", None)
        return getattr(container, "id", None)

    def __init__(self, image: str | None = None, *args: Any, **kwargs: Any) -> None:
        if image is not None:
            kwargs["image"] = image
        super().__init__(*args, **kwargs)


class ModalREPL(SandboxREPL, IsolatedEnv):
    """The code runs in rlm's Modal environment (``app_name``, ``image`` and ``timeout`` map
    to its ``app_name``, ``image`` and ``sandbox_timeout``)."""

    environment_name = "modal"
    runs_code_strings = True

    def __init__(
        self,
        app_name: str | None = None,
        image: Any = None,
        timeout: int | None = None,
        lm_handler_address: Any = None,
        context_payload: dict | list | str | None = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        **kwargs: Any,
    ) -> None:
        kwargs.update(_given(app_name=app_name, image=image, sandbox_timeout=timeout))
        super().__init__(
            lm_handler_address, context_payload, setup_code, persistent, depth, **kwargs
        )


class E2BREPL(SandboxREPL, IsolatedEnv):
    """The code runs in rlm's E2B environment (``timeout`` maps to ``sandbox_timeout``)."""

    environment_name = "e2b"
    runs_code_strings = True

    def __init__(
        self,
        timeout: int | None = None,
        lm_handler_address: Any = None,
        context_payload: dict | list | str | None = None,
        setup_code: str | None = None,
        persistent: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.update(_given(sandbox_timeout=timeout))
        super().__init__(lm_handler_address, context_payload, setup_code, persistent, **kwargs)


class DaytonaREPL(SandboxREPL, IsolatedEnv):
    """The code runs in rlm's Daytona environment (``memory``, ``disk`` and
    ``auto_stop_interval`` map to ``memory_gb``, ``disk_gb`` and ``auto_stop_minutes``,
    ``timeout`` to ``create_timeout``; ``name`` becomes the label ``name``)."""

    environment_name = "daytona"
    runs_code_strings = True

    def __init__(
        self,
        api_key: str | None = None,
        target: str | None = None,
        name: str | None = None,
        timeout: int | None = None,
        cpu: int | None = None,
        memory: int | None = None,
        disk: int | None = None,
        auto_stop_interval: int | None = None,
        image: Any = None,
        lm_handler_address: Any = None,
        context_payload: dict | list | str | None = None,
        setup_code: str | None = None,
        persistent: bool = False,
        depth: int = 1,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name is not None:
            kwargs["labels"] = {"name": str(name), **(kwargs.get("labels") or {})}
        kwargs.update(
            _given(
                api_key=api_key,
                target=target,
                create_timeout=timeout,
                cpu=cpu,
                memory_gb=memory,
                disk_gb=disk,
                auto_stop_minutes=auto_stop_interval,
                image=image,
            )
        )
        super().__init__(
            lm_handler_address,
            context_payload,
            setup_code,
            persistent,
            depth,
            custom_tools=custom_tools,
            custom_sub_tools=custom_sub_tools,
            **kwargs,
        )


class PrimeREPL(SandboxREPL, IsolatedEnv):
    """The code runs in rlm's Prime Intellect environment (``docker_image`` and
    ``timeout_minutes`` as there; ``name`` is kept as an attribute;
    ``network_access=False`` is refused: restrict the network with ``network_allowlist``)."""

    environment_name = "prime"
    runs_code_strings = True

    def __init__(
        self,
        name: str | None = None,
        docker_image: str | None = None,
        timeout_minutes: int | None = None,
        lm_handler_address: Any = None,
        context_payload: dict | list | str | None = None,
        setup_code: str | None = None,
        network_access: bool = True,
        persistent: bool = False,
        depth: int = 1,
        **kwargs: Any,
    ) -> None:
        if not network_access:
            raise ConfigurationError(
                "PrimeREPL(network_access=False) is not supported; restrict the sandbox with "
                "network_allowlist=[...] instead"
            )
        self.name = name
        kwargs.update(_given(docker_image=docker_image, timeout_minutes=timeout_minutes))
        super().__init__(
            lm_handler_address, context_payload, setup_code, persistent, depth, **kwargs
        )


#: the reference's environment names and their classes
REPL_CLASSES: dict[str, type[SandboxREPL]] = {
    "local": LocalREPL,
    "ipython": IPythonREPL,
    "docker": DockerREPL,
    "modal": ModalREPL,
    "e2b": E2BREPL,
    "daytona": DaytonaREPL,
    "prime": PrimeREPL,
}


def get_environment(environment: str, environment_kwargs: dict[str, Any] | None = None) -> BaseEnv:
    """Create the REPL for ``environment`` (a reference name, or any rlm environment name,
    including third-party ones) with ``environment_kwargs``."""
    kwargs = dict(environment_kwargs or {})
    cls = REPL_CLASSES.get(environment)
    if cls is not None:
        return cls(**kwargs)
    from rlm.environments import environment_class

    environment_class(environment)  # an unknown name raises ConfigurationError (a ValueError)
    generic = type(f"{environment.title()}REPL", (SandboxREPL,), {"environment_name": environment})
    return generic(**kwargs)


__all__ = [
    "E2BREPL",
    "REPL_CLASSES",
    "RESERVED_TOOL_NAMES",
    "BaseEnv",
    "DaytonaREPL",
    "DockerREPL",
    "IPythonREPL",
    "IsolatedEnv",
    "LocalREPL",
    "ModalREPL",
    "NonIsolatedEnv",
    "PrimeREPL",
    "SandboxREPL",
    "SupportsCustomTools",
    "SupportsPersistence",
    "ToolInfo",
    "extract_tool_value",
    "format_tools_for_prompt",
    "get_environment",
    "parse_custom_tools",
    "parse_tool_entry",
    "validate_custom_tools",
]
