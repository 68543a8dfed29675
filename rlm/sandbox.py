"""One of rlm's sandboxes without the RLM loop: run code, call host tools, ask an LM.

    with Sandbox("docker", tools={"lookup": lookup}, lm=my_client) as sb:
        sb.load_context(big_text)
        result = sb.execute("print(len(context)); print(lookup(key='a'))")
        print(result.stdout)

:class:`AsyncSandbox` is the implementation and :class:`Sandbox` its synchronous twin (same
verbs, run on rlm's background event loop). A sandbox owns a broker of its own and one session
on it: the code's ``llm_query``/``rlm_query`` go to ``lm`` (an rlm LM client, or any callable
from a prompt to a text) and each tool call runs the host callable of that name with JSON
arguments. The reference-compatible REPLs (:mod:`rlm.environments.compat`) and the DSPy and
``verifiers`` integrations are built on it.

Everything that comes back from the sandbox (output, tool arguments, prompts) is produced by
code you did not write: treat it as untrusted input.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlm.broker import cleanup
from rlm.broker.clients.base import LMClient
from rlm.broker.loop import on_loop_thread, run_sync, submit
from rlm.broker.server import BrokerServer, SessionHandler
from rlm.environments.base import CellResult, Environment, ToolSpec, WarmPool
from rlm.errors import ConfigurationError, SandboxError
from rlm.protos import rlm_sandbox_pb2 as pb

Prompt = str | list[dict[str, Any]]
"""What ``llm_query`` sends: a string, or a list of chat messages."""
LMCallable = Callable[[Prompt], str | Awaitable[str]]
"""A plain function (or coroutine function) from a prompt to the model's reply."""

__all__ = ["AsyncSandbox", "CellResult", "LMCallable", "Sandbox", "SandboxPool", "SandboxUsage"]


@dataclass
class SandboxUsage:
    """What the code's ``llm_query`` calls used (tokens and cost only from an rlm LM client)."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


def _as_messages(prompt: Prompt) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


class _SandboxDispatch:
    """The broker-side handler of a :class:`AsyncSandbox`: LM calls and tools on the host."""

    def __init__(self, sandbox: AsyncSandbox) -> None:
        self.sandbox = sandbox

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        prompt: Prompt = (
            json.loads(request.messages_json) if request.messages_json else request.prompt
        )
        return await self.sandbox._ask_lm(prompt)

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        # Without the loop there is no child RLM: rlm_query is a plain LM call.
        return await self.sandbox._ask_lm(request.prompt)

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        return await self.sandbox._call_tool(request.name, request.args_json)


class AsyncSandbox:
    """A started sandbox of rlm's ``environment`` (``"local"``, ``"docker"``, ``"modal"``...).

    ``tools`` maps names to host callables (called with the JSON arguments the code passes) or
    to plain values (copied into the sandbox); it may be changed between cells and is sent
    again before the next one. ``lm`` answers ``llm_query``: an rlm LM client
    (``rlm.broker.clients.create_client(...)``; its usage is counted in :attr:`usage`) or a
    callable; without it ``llm_query`` raises in the sandbox. ``handler`` replaces the whole
    host side (tools and ``lm`` are then unused). ``broker``: a started broker to share with
    other sandboxes (see :class:`SandboxPool`; it is not closed with this sandbox). Other
    keywords go to the environment's constructor (``cell_timeout``, ``memory_mb``, ``image``...).
    """

    def __init__(
        self,
        environment: str = "local",
        *,
        tools: Mapping[str, Any] | None = None,
        lm: LMClient | LMCallable | None = None,
        handler: SessionHandler | None = None,
        label: str = "sandbox",
        broker: BrokerServer | None = None,
        **environment_kwargs: Any,
    ) -> None:
        self.environment_name = environment
        self.tools: dict[str, Any] = dict(tools or {})
        self.lm = lm
        self.label = label
        self.environment_kwargs = environment_kwargs
        self.usage = SandboxUsage()
        self._handler = handler or _SandboxDispatch(self)
        self._shared_broker = broker
        self._broker: BrokerServer | None = None
        self._env: Environment | None = None
        self._sent_tools: dict[str, int] = {}
        self._closed = False
        self._start_lock: asyncio.Lock | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether the sandbox is running (started and not closed)."""
        return self._env is not None

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    @property
    def environment(self) -> Environment:
        """The rlm environment the code runs in (for its provider-specific attributes)."""
        if self._env is None:
            raise SandboxError(self._not_running())
        return self._env

    def _not_running(self) -> str:
        if self._closed:
            return f"this {self.environment_name} sandbox is closed; create a new one"
        return f"this {self.environment_name} sandbox is not started; call start() first"

    async def start(self) -> AsyncSandbox:
        """Creates the sandbox and its broker; a second call does nothing."""
        if self._closed:
            raise SandboxError(self._not_running())
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._env is None:
                await self._start()
        return self

    async def _start(self) -> None:
        from rlm.environments import environment_class

        cls: Callable[..., Environment] = environment_class(self.environment_name)
        broker = self._shared_broker
        if broker is None:
            broker = BrokerServer()
            await broker.start()
            cleanup.track(broker)
            self._broker = broker
        try:
            try:
                env = cls(
                    broker=broker,
                    handler=self._handler,
                    label=self.label,
                    **self.environment_kwargs,
                )
            except TypeError as error:
                raise ConfigurationError(
                    f"bad keyword arguments for the {self.environment_name!r} environment: "
                    f"{error}; see its class ({cls.__name__}) for the accepted ones"
                ) from error
            await env.start()
            self._env = env
            await self._send_tools()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Destroys the sandbox and stops its broker; safe to call twice."""
        self._closed = True
        env, self._env = self._env, None
        broker, self._broker = self._broker, None
        try:
            if env is not None:
                await env.aclose()
        finally:
            if broker is not None:
                await broker.aclose()
                cleanup.untrack(broker)

    async def __aenter__(self) -> AsyncSandbox:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- running code ----------------------------------------------------------------------

    async def _send_tools(self) -> None:
        current = {name: id(value) for name, value in self.tools.items()}
        if current == self._sent_tools or self._env is None:
            return
        changed = {n: v for n, v in self.tools.items() if self._sent_tools.get(n) != id(v)}
        for name in changed:
            if not name.isidentifier():
                raise ConfigurationError(f"tool name {name!r} is not a Python identifier")
        values = {n: v for n, v in changed.items() if not callable(v)}
        specs = [
            ToolSpec(n, (inspect.getdoc(v) or "").split("\n")[0])
            for n, v in changed.items()
            if callable(v)
        ]
        if values or specs:
            await self._env.set_variables(values, specs)
        self._sent_tools = current

    async def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Runs one cell (starting the sandbox first if needed). The code's errors are in the
        result's ``error``; a broken sandbox raises :class:`rlm.SandboxError`."""
        if self._env is None:
            await self.start()
        await self._send_tools()
        return await self.environment.execute(code, timeout=timeout)

    async def load_context(self, value: Any, *, name: str = "context") -> None:
        """Binds ``value`` (str, list or dict; streamed in chunks) to ``name`` in the sandbox."""
        if self._env is None:
            await self.start()
        await self.environment.load_context(value, name=name)

    async def set_variables(self, values: Mapping[str, Any]) -> None:
        """Binds plain values (JSON, else pickled) to names in the sandbox."""
        if self._env is None:
            await self.start()
        await self.environment.set_variables(dict(values), [])

    # ---- the host side ---------------------------------------------------------------------

    async def _ask_lm(self, prompt: Prompt) -> pb.CompleteReply:
        lm = self.lm
        if lm is None:
            raise ConfigurationError(
                "llm_query needs a model: create the sandbox with lm=<an rlm LM client or a "
                "function from prompt to text>"
            )
        self.usage.calls += 1
        if isinstance(lm, LMClient):
            response = await lm.acomplete(_as_messages(prompt))
            usage = response.usage
            self.usage.input_tokens += usage.input_tokens
            self.usage.output_tokens += usage.output_tokens
            self.usage.cost += usage.cost or 0.0
            return pb.CompleteReply(
                text=response.text,
                model=response.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cost=usage.cost or 0.0,
            )
        text = await _call_on_thread(lm, (prompt,), {})
        if not isinstance(text, str):
            raise ConfigurationError(f"lm returned {type(text).__name__}; it must return a str")
        return pb.CompleteReply(text=text)

    async def _call_tool(self, name: str, args_json: bytes) -> pb.ToolReply:
        function = self.tools.get(name)
        if not callable(function):
            raise ConfigurationError(f"no host-side tool named {name!r}")
        payload = json.loads(args_json or b"{}")
        args = payload.get("args", []) if isinstance(payload, dict) else []
        kwargs = payload.get("kwargs", {}) if isinstance(payload, dict) else {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ConfigurationError(f"malformed arguments for tool {name!r}")
        value = await _call_on_thread(function, tuple(args), kwargs)
        try:
            return pb.ToolReply(result_json=json.dumps(value).encode())
        except (TypeError, ValueError) as error:
            raise ConfigurationError(
                f"tool {name!r} returned a value that is not JSON-serialisable: {error}"
            ) from error


async def _call_on_thread(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Runs a user callable off the event loop; awaits what it returns if that is awaitable."""
    if inspect.iscoroutinefunction(function):
        return await function(*args, **kwargs)
    value = await asyncio.to_thread(function, *args, **kwargs)
    if inspect.isawaitable(value):
        value = await value
    return value


class Sandbox:
    """The synchronous twin of :class:`AsyncSandbox` (same arguments, same verbs).

    ``with Sandbox("local") as sb: sb.execute("x = 1")``; ``close()`` ends it. The calls run on
    rlm's background event loop, so a sandbox may be used from any thread (one cell at a time).
    """

    def __init__(
        self,
        environment: str = "local",
        *,
        tools: Mapping[str, Any] | None = None,
        lm: LMClient | LMCallable | None = None,
        handler: SessionHandler | None = None,
        label: str = "sandbox",
        broker: BrokerServer | None = None,
        **environment_kwargs: Any,
    ) -> None:
        self.aio = AsyncSandbox(
            environment,
            tools=tools,
            lm=lm,
            handler=handler,
            label=label,
            broker=broker,
            **environment_kwargs,
        )
        self._lock = threading.RLock()

    @property
    def tools(self) -> dict[str, Any]:
        """Host tools and values by name; changes are sent before the next cell."""
        return self.aio.tools

    @property
    def usage(self) -> SandboxUsage:
        """What the code's ``llm_query`` calls used so far."""
        return self.aio.usage

    @property
    def started(self) -> bool:
        return self.aio.started

    @property
    def closed(self) -> bool:
        return self.aio.closed

    @property
    def environment(self) -> Environment:
        return self.aio.environment

    def start(self) -> Sandbox:
        """Creates the sandbox; a second call does nothing."""
        with self._lock:
            run_sync(self.aio.start())
        return self

    def execute(self, code: str, *, timeout: float | None = None) -> CellResult:
        """Runs one cell; see :meth:`AsyncSandbox.execute`."""
        with self._lock:
            return run_sync(self.aio.execute(code, timeout=timeout))

    def load_context(self, value: Any, *, name: str = "context") -> None:
        """Binds ``value`` to ``name`` in the sandbox."""
        with self._lock:
            run_sync(self.aio.load_context(value, name=name))

    def set_variables(self, values: Mapping[str, Any]) -> None:
        """Binds plain values to names in the sandbox."""
        with self._lock:
            run_sync(self.aio.set_variables(values))

    def close(self) -> None:
        """Destroys the sandbox; safe to call twice."""
        if on_loop_thread():
            submit(self.aio.aclose())
            return
        run_sync(self.aio.aclose())

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.started else ("closed" if self.closed else "not started")
        return f"Sandbox({self.aio.environment_name!r}, {state})"


class SandboxPool:
    """Sandboxes of one environment that share one broker and, with ``pool_size=N``, a warm
    pool of N sandboxes started ahead (each serves one sandbox, or one RLM tree, and is then
    destroyed: nothing is reused between them). ``max_sandboxes`` bounds how many are alive at
    once, waiting ones included (a further start waits up to ``startup_timeout`` for one to end);
    ``pool_idle_timeout`` removes waiting ones unused that long. For many short sessions:
    rollouts, interpreters.

        with SandboxPool("docker", pool_size=4, max_sandboxes=8) as pool:
            with pool.sandbox(tools=...) as sb:
                sb.execute(...)
            rlm = RLM(backend_kwargs=..., sandbox_pool=pool)  # its trees draw from the pool

    Other keywords go to every sandbox's environment. ``close()`` ends the broker, the warm
    sandboxes and any sandbox of the pool still open.
    """

    def __init__(
        self,
        environment: str = "local",
        *,
        pool_size: int = 0,
        max_sandboxes: int | None = None,
        pool_idle_timeout: float = 300.0,
        **environment_kwargs: Any,
    ) -> None:
        if pool_size < 0:
            raise ConfigurationError(f"pool_size must be at least 0, got {pool_size}")
        if max_sandboxes is not None and max_sandboxes < 1:
            raise ConfigurationError(f"max_sandboxes must be at least 1, got {max_sandboxes}")
        self.environment_name = environment
        self.environment_kwargs = dict(environment_kwargs)
        if pool_size:
            self.environment_kwargs.update(pool_size=pool_size, pool_idle_timeout=pool_idle_timeout)
        if max_sandboxes is not None:
            self.environment_kwargs.update(
                max_sandboxes=max_sandboxes, pool_idle_timeout=pool_idle_timeout
            )
        self._broker: BrokerServer | None = None
        self._start_lock: asyncio.Lock | None = None
        self._sandboxes: list[AsyncSandbox] = []
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def brokers_started(self) -> int:
        """Brokers this pool started: 1 once it is used, however many sandboxes and trees."""
        return 0 if self._broker is None else 1

    def _warm_pools(self) -> list[WarmPool]:
        if self._broker is None:
            return []
        return [r for r in self._broker.shared_resources() if isinstance(r, WarmPool)]

    @property
    def started_sandboxes(self) -> int:
        """Sandboxes the warm pool started so far (while the pool is open)."""
        return sum(pool.started for pool in self._warm_pools())

    @property
    def waiting_sandboxes(self) -> int:
        """Sandboxes started and waiting for a session now."""
        return sum(pool.waiting for pool in self._warm_pools())

    @property
    def peak_sandboxes(self) -> int:
        """The most sandboxes of the warm pool alive at once so far (while the pool is open)."""
        return sum(pool.peak_live for pool in self._warm_pools())

    async def start(self) -> SandboxPool:
        """Starts the shared broker (done by the first sandbox otherwise)."""
        await self.abroker()
        return self

    async def abroker(self) -> BrokerServer:
        """The pool's broker, started on first use (on the calling event loop: rlm's own for
        the RLMs and synchronous sandboxes of the pool)."""
        if self._closed:
            raise SandboxError("this SandboxPool is closed; create a new one")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:  # concurrent first users must not each start one
            if self._broker is None:
                broker = BrokerServer()
                await broker.start()
                cleanup.track(broker)
                self._broker = broker
            return self._broker

    async def asandbox(
        self,
        *,
        tools: Mapping[str, Any] | None = None,
        lm: LMClient | LMCallable | None = None,
        handler: SessionHandler | None = None,
        label: str = "sandbox",
    ) -> AsyncSandbox:
        """A new (not yet started) sandbox on the pool's broker."""
        broker = await self.abroker()
        sandbox = AsyncSandbox(
            self.environment_name,
            tools=tools,
            lm=lm,
            handler=handler,
            label=label,
            broker=broker,
            **self.environment_kwargs,
        )
        self._sandboxes = [s for s in self._sandboxes if not s.closed] + [sandbox]
        return sandbox

    def sandbox(
        self,
        *,
        tools: Mapping[str, Any] | None = None,
        lm: LMClient | LMCallable | None = None,
        handler: SessionHandler | None = None,
        label: str = "sandbox",
    ) -> Sandbox:
        """A new (not yet started) synchronous sandbox on the pool's broker."""
        with self._lock:
            broker = run_sync(self.abroker())
        sandbox = Sandbox(
            self.environment_name,
            tools=tools,
            lm=lm,
            handler=handler,
            label=label,
            broker=broker,
            **self.environment_kwargs,
        )
        with self._lock:
            self._sandboxes = [s for s in self._sandboxes if not s.closed] + [sandbox.aio]
        return sandbox

    async def aclose(self) -> None:
        """Closes every sandbox of the pool, the warm runners and the broker."""
        self._closed = True
        sandboxes, self._sandboxes = self._sandboxes, []
        broker, self._broker = self._broker, None
        try:
            for sandbox in sandboxes:
                await sandbox.aclose()
        finally:
            if broker is not None:
                await broker.aclose()
                cleanup.untrack(broker)

    def close(self) -> None:
        """Synchronous :meth:`aclose`."""
        if on_loop_thread():
            submit(self.aclose())
            return
        run_sync(self.aclose())

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> SandboxPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
