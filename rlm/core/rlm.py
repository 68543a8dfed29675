"""``RLM``: the public entry point."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from rlm.broker import cleanup
from rlm.broker.accounting import Ledger, Limits
from rlm.broker.clients import create_client
from rlm.broker.loop import on_loop_thread, run_sync, submit
from rlm.broker.router import LMRouter
from rlm.broker.server import BrokerScope, BrokerServer
from rlm.environments import environment_class
from rlm.environments.base import Environment
from rlm.errors import ConfigurationError
from rlm.events import EventBus, EventListener, RLMEvent
from rlm.logger import RLMLogger
from rlm.run import RLMRun, SessionDispatch, TreeConfig, open_environment, parse_tools
from rlm.sandbox import SandboxPool
from rlm.types import RLMChatCompletion
from rlm.utils.token_utils import get_context_limit

_heap_settled = False


def _settle_heap() -> None:
    """Runs the process's first full garbage collection now, once, after the LM SDKs are
    imported. Left alone, CPython runs it at the first burst of allocations, which is the
    first wide ``llm_query_batched``: ~40 ms (100K objects from openai, pydantic and grpc)
    in the middle of a batch, measured as 1.6x instead of 1.35x one call for 64 prompts."""
    global _heap_settled
    if not _heap_settled:
        _heap_settled = True
        gc.collect()


def _check_count(name: str, value: Any, meaning: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        note = f" ({meaning})" if meaning else ""
        raise ConfigurationError(f"{name} must be an integer of at least 1{note}, got {value!r}")


class ReferenceCallbacks:
    """The reference's four progress callbacks, fed from our events: a child run starting and
    finishing (depth, model, prompt preview / duration, error) and each iteration of any run
    (depth, iteration number / duration). A callback that raises is logged, never fatal."""

    def __init__(
        self,
        on_subcall_start: Callable[[int, str, str], None] | None,
        on_subcall_complete: Callable[[int, str, float, str | None], None] | None,
        on_iteration_start: Callable[[int, int], None] | None,
        on_iteration_complete: Callable[[int, int, float], None] | None,
    ) -> None:
        self.on_subcall_start = on_subcall_start
        self.on_subcall_complete = on_subcall_complete
        self.on_iteration_start = on_iteration_start
        self.on_iteration_complete = on_iteration_complete

    def any(self) -> bool:
        return any(
            (
                self.on_subcall_start,
                self.on_subcall_complete,
                self.on_iteration_start,
                self.on_iteration_complete,
            )
        )

    def __call__(self, event: RLMEvent) -> None:
        data = event.data
        if data.get("call") == "rlm_query":
            model = str(data.get("model") or "")
            if event.kind == "subcall_started" and self.on_subcall_start:
                self.on_subcall_start(event.depth + 1, model, str(data.get("prompt_preview")))
            elif event.kind == "subcall_finished" and self.on_subcall_complete:
                error = data.get("error")
                self.on_subcall_complete(
                    event.depth + 1, model, float(data.get("seconds") or 0.0), error
                )
        elif event.kind == "iteration_started" and self.on_iteration_start:
            self.on_iteration_start(event.depth, int(data["iteration"]))
        elif (
            event.kind == "iteration_finished"
            and self.on_iteration_complete
            and data.get("iteration") is not None
        ):
            self.on_iteration_complete(
                event.depth, int(data["iteration"]), float(data.get("seconds") or 0.0)
            )


class RLM:
    """A Recursive Language Model: ``rlm.completion(prompt)`` instead of ``llm.completion(prompt)``.

    The prompt (the context, possibly millions of tokens) is loaded into a sandboxed Python REPL
    as ``context``; the root model writes code to explore it and calls sub-models from that code.
    Use it as a context manager (``with RLM(...) as rlm:``) or call ``close()``: that stops the
    broker and every sandbox.

    ``sandbox_pool``: a :class:`rlm.SandboxPool` to run in instead of a broker and sandboxes of
    its own: the RLM's sessions go to the pool's broker (each with its own token, handled by this
    RLM's models and ledger) and its sandboxes come from the pool's warm pool. The environment is
    then the pool's (``environment`` and ``environment_kwargs`` must not be given); closing the
    RLM ends its sandboxes, not the pool. Many RLMs, each with its own models and keys, can share
    one pool, e.g. concurrent rollouts.
    """

    def __init__(
        self,
        backend: str = "openai",
        backend_kwargs: dict[str, Any] | None = None,
        environment: str | type[Environment] = "local",
        environment_kwargs: dict[str, Any] | None = None,
        depth: int = 0,
        max_depth: int = 1,
        max_iterations: int = 30,
        max_budget: float | None = None,
        max_timeout: float | None = None,
        max_tokens: int | None = None,
        max_errors: int | None = None,
        custom_system_prompt: str | None = None,
        other_backends: list[str] | None = None,
        other_backend_kwargs: list[dict[str, Any]] | None = None,
        logger: RLMLogger | None = None,
        verbose: bool = False,
        persistent: bool = False,
        custom_tools: dict[str, Any] | None = None,
        custom_sub_tools: dict[str, Any] | None = None,
        compaction: bool = False,
        compaction_threshold_pct: float = 0.85,
        max_concurrent_subcalls: int = 4,
        on_subcall_start: Callable[[int, str, str], None] | None = None,
        on_subcall_complete: Callable[[int, str, float, str | None], None] | None = None,
        on_iteration_start: Callable[[int, int], None] | None = None,
        on_iteration_complete: Callable[[int, int, float], None] | None = None,
        sampling_args: dict[str, Any] | None = None,
        sub_sampling_args: dict[str, Any] | None = None,
        orchestrator: bool = True,
        user_prologue: str | None = None,
        max_concurrent_lm_calls: int = 64,
        on_event: EventListener | None = None,
        broker_transport: str = "unix",
        sandbox_pool: SandboxPool | None = None,
    ) -> None:
        if sandbox_pool is not None:
            if environment_kwargs is not None or environment not in (
                "local",
                sandbox_pool.environment_name,
            ):
                raise ConfigurationError(
                    "with sandbox_pool the environment is the pool's: give environment and "
                    "environment_kwargs to SandboxPool(...), not to RLM(...)"
                )
            environment = sandbox_pool.environment_name
            environment_kwargs = sandbox_pool.environment_kwargs
        _check_count("max_depth", max_depth, "1 = the root only")
        _check_count("max_iterations", max_iterations)
        _check_count("max_concurrent_subcalls", max_concurrent_subcalls)
        if max_errors is not None:
            _check_count("max_errors", max_errors)
        other_backends = list(other_backends or [])
        other_backend_kwargs = list(other_backend_kwargs or [{} for _ in other_backends])
        if len(other_backends) != len(other_backend_kwargs):
            raise ConfigurationError(
                "other_backends and other_backend_kwargs must have the same length"
            )
        backend_kwargs = dict(backend_kwargs or {})
        if sampling_args:
            backend_kwargs["sampling"] = {**backend_kwargs.get("sampling", {}), **sampling_args}
        if sub_sampling_args:
            # Sub-calls go to the first other backend; without one, to a twin of the root's.
            if not other_backends:
                other_backends = [backend]
                other_backend_kwargs = [dict(backend_kwargs)]
            first = dict(other_backend_kwargs[0])
            first["sampling"] = {**first.get("sampling", {}), **sub_sampling_args}
            other_backend_kwargs[0] = first
        self.backend = backend
        self.backend_kwargs = backend_kwargs
        # Ours, not the client's: the window that compaction measures against.
        # (default: the model's known window, as the reference's get_context_limit gives it).
        window = self.backend_kwargs.pop("context_window_tokens", None)
        self.context_window_tokens = int(
            window or get_context_limit(str(self.backend_kwargs.get("model_name", "")))
        )
        # Fails now, with the choices and a close match, rather than when the first run starts.
        environment_class(environment)
        self.environment = environment
        self.environment_kwargs = dict(environment_kwargs or {})
        self.depth = depth
        self.max_depth = max_depth
        self.max_iterations = max_iterations
        self.limits = Limits(max_budget=max_budget, max_tokens=max_tokens, max_timeout=max_timeout)
        self.max_errors = max_errors
        self.custom_system_prompt = custom_system_prompt
        self.logger = logger
        self.verbose = verbose
        self.persistent = persistent
        self.tools = parse_tools(custom_tools)
        self.sub_tools = (
            parse_tools(custom_sub_tools) if custom_sub_tools is not None else self.tools
        )
        self.compaction = compaction
        self.compaction_threshold_pct = compaction_threshold_pct
        self.max_concurrent_subcalls = max_concurrent_subcalls
        self.orchestrator = orchestrator
        self.user_prologue = user_prologue
        self.other_backends = other_backends
        self.broker_transport = broker_transport
        self.sandbox_pool = sandbox_pool
        # Clients are built now so that a missing key or extra fails here, not mid-run.
        self._root_client = create_client(backend, self.backend_kwargs)
        self._other_clients = [
            create_client(name, kwargs)
            for name, kwargs in zip(other_backends, other_backend_kwargs, strict=True)
        ]
        self._max_concurrent_lm_calls = max_concurrent_lm_calls
        _settle_heap()
        listeners: list[EventListener] = []
        callbacks = ReferenceCallbacks(
            on_subcall_start, on_subcall_complete, on_iteration_start, on_iteration_complete
        )
        if callbacks.any():
            listeners.append(callbacks)
        if verbose:
            from rlm.progress import ProgressPrinter

            listeners.append(ProgressPrinter())
        if on_event is not None:
            listeners.append(on_event)
        self.events = EventBus(listeners)
        self._config: TreeConfig | None = None
        self._start_lock: asyncio.Lock | None = None
        self._persistent_env: Environment | None = None
        self._persistent_dispatch: SessionDispatch | None = None
        self._completions = 0
        self._closed = False

    @property
    def model_name(self) -> str:
        return self._root_client.model_name

    async def _tree(self) -> TreeConfig:
        if self._closed:
            raise ConfigurationError("this RLM is closed; create a new one")
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._config is None:
                broker: BrokerServer | BrokerScope
                if self.sandbox_pool is not None:
                    broker = (await self.sandbox_pool.abroker()).scope()
                else:
                    broker = BrokerServer(transport=self.broker_transport)
                    await broker.start()
                cleanup.track(self)
                window_chars = self.context_window_tokens * 4
                self._config = TreeConfig(
                    router=LMRouter(
                        self._root_client,
                        self._other_clients,
                        max_concurrency=self._max_concurrent_lm_calls,
                    ),
                    broker=broker,
                    environment=self.environment,
                    environment_kwargs=self.environment_kwargs,
                    events=self.events,
                    max_depth=self.max_depth,
                    max_iterations=self.max_iterations,
                    max_errors=self.max_errors,
                    custom_system_prompt=self.custom_system_prompt,
                    tools=self.tools,
                    sub_tools=self.sub_tools,
                    compaction=self.compaction,
                    compaction_threshold_chars=int(window_chars * self.compaction_threshold_pct),
                    max_concurrent_subcalls=self.max_concurrent_subcalls,
                    orchestrator=self.orchestrator,
                    user_prologue=self.user_prologue,
                    backend=self.backend,
                    backend_kwargs=self.backend_kwargs,
                    other_backends=self.other_backends or None,
                )
            return self._config

    async def _complete(self, prompt: Any, root_prompt: str | None) -> RLMChatCompletion:
        config = await self._tree()
        ledger = Ledger(limits=self.limits, label="the root run")
        run = RLMRun(config, depth=self.depth, ledger=ledger, logger=self.logger)
        if not self.persistent:
            return await run.run(prompt, root_prompt)
        if self._persistent_env is None:
            self._persistent_dispatch = SessionDispatch(run)
            self._persistent_env = await open_environment(
                config, self._persistent_dispatch, "persistent"
            )
        index = self._completions
        self._completions += 1
        # As in the reference: `context` and `history` stay the first turn's; turn N adds
        # `context_N`, and `history_N` once it is over.
        result = await run.run(
            prompt,
            root_prompt,
            environment=self._persistent_env,
            dispatch=self._persistent_dispatch,
            context_name=f"context_{index}",
            aliases=("context",) if index == 0 else (),
            turn=index,
        )
        history = {f"history_{index}": run.messages}
        if index == 0 and not self.compaction:
            history["history"] = run.messages
        await self._persistent_env.set_variables(history, [])
        return result

    def completion(self, prompt: Any, root_prompt: str | None = None) -> RLMChatCompletion:
        """Answers over ``prompt`` (a str, a list of str or a dict), loaded as ``context``.

        ``root_prompt`` is a short request the root model sees directly (for example the user's
        question); without it the request is expected inside the context.
        """
        started = time.perf_counter()
        result = run_sync(self._complete(prompt, root_prompt))
        result.execution_time = time.perf_counter() - started
        return result

    async def acompletion(self, prompt: Any, root_prompt: str | None = None) -> RLMChatCompletion:
        """``completion`` for asyncio callers."""
        return await asyncio.wrap_future(submit(self._complete(prompt, root_prompt)))

    async def aclose(self) -> None:
        """Stops the persistent sandbox, the broker and the LM clients (from any event loop:
        they live on rlm's own loop, so the work is done there)."""
        if on_loop_thread():
            await self._aclose()
        else:
            await asyncio.wrap_future(submit(self._aclose()))

    async def _aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        env, self._persistent_env = self._persistent_env, None
        try:
            if env is not None:
                await env.aclose()
        finally:
            config, self._config = self._config, None
            if config is not None:
                await config.broker.aclose()
                await config.router.aclose()
            cleanup.untrack(self)
            if self.logger is not None:
                self.logger.close()

    close_order = 50

    def close(self) -> None:
        """Synchronous ``aclose``."""
        run_sync(self.aclose())

    def __enter__(self) -> RLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RLM:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
