"""``LMHandler``: serves the ``llm_query`` calls of directly-created REPLs (reference ``rlms`` API).

    with LMHandler(client) as handler:
        with LocalREPL(lm_handler_address=handler.address) as repl:
            repl.execute_code('print(llm_query("2 + 2?"))')

A REPL's sandbox calls its own broker session; the REPL's session handler looks the handler up by
``address`` in a process-local registry and forwards the call here, where it goes through an
:class:`~rlm.broker.router.LMRouter` (retries, concurrency bound) and is charged to the handler's
:class:`~rlm.broker.accounting.Ledger`. The REPL owns its sandbox and broker, so a persistent REPL
outlives the handlers it is pointed at (``update_handler_address``), as in the reference package.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Mapping
from typing import Any

from rlm.broker.accounting import Ledger
from rlm.broker.clients.base import LMClient, LMResponse, LMUsage, Messages
from rlm.broker.router import LMRouter
from rlm.errors import ConfigurationError
from rlm.types import ModelUsageSummary, RLMChatCompletion, UsageSummary

__all__ = ["LMHandler", "lookup_handler"]

HandlerAddress = tuple[str, int]
"""``(host, port)``-shaped key of a started handler in this process's registry."""

_registry_lock = threading.Lock()
_handlers: dict[HandlerAddress, LMHandler] = {}
_keys = itertools.count(1)


def _normalise(address: Any) -> HandlerAddress | None:
    if isinstance(address, tuple | list) and len(address) == 2:
        try:
            return (str(address[0]), int(address[1]))
        except (TypeError, ValueError):
            return None
    return None


def lookup_handler(address: Any) -> LMHandler | None:
    """The started handler at ``address`` (an ``LMHandler.address`` or the handler itself), or
    None when no handler of this process is running there."""
    if isinstance(address, LMHandler):
        return address if address.running else None
    key = _normalise(address)
    if key is None:
        return None
    with _registry_lock:
        return _handlers.get(key)


def _prompt_of(messages: Messages) -> Any:
    """The prompt a ``completion(prompt)`` client expects: the text of a lone user message, else
    the message list."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        content = messages[0].get("content")
        if isinstance(content, str):
            return content
    return messages


def _to_messages(prompt: Any) -> Messages:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        return [dict(prompt)]
    if isinstance(prompt, list) and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise ConfigurationError(
        f"a prompt must be a str or a list of message dicts, not {type(prompt).__name__}"
    )


class _ObjectClient(LMClient):
    """Adapts an object with ``completion(prompt)`` (a ``rlm.clients.BaseLM`` or any look-alike)
    to the broker's ``LMClient``; its own retries and usage bookkeeping stay in charge."""

    backend = "object"

    def __init__(self, target: Any) -> None:
        name = getattr(target, "model_name", None) or type(target).__name__
        super().__init__(str(name), max_retries=0)
        self.target = target
        # rlm.clients.BrokerLM runs on rlm's loop: await it there; anything else runs in a thread.
        self._native_async = isinstance(getattr(target, "lm_client", None), LMClient)

    def _last_usage(self) -> LMUsage:
        getter = getattr(self.target, "get_last_usage", None)
        usage = getter() if callable(getter) else None
        if usage is None:
            return LMUsage()
        return LMUsage(
            int(getattr(usage, "total_input_tokens", 0) or 0),
            int(getattr(usage, "total_output_tokens", 0) or 0),
            getattr(usage, "total_cost", None),
        )

    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        prompt = _prompt_of(messages)
        if self._native_async:
            text = await self.target.acompletion(prompt)
            usage = self._last_usage()
        else:

            def call() -> tuple[Any, LMUsage]:
                return self.target.completion(prompt), self._last_usage()

            text, usage = await asyncio.to_thread(call)
        return LMResponse(text=str(text), model=self.model_name, usage=usage)


def _as_lm_client(client: Any) -> LMClient:
    if isinstance(client, LMClient):
        return client
    if callable(getattr(client, "completion", None)):
        return _ObjectClient(client)
    raise ConfigurationError(
        f"LMHandler needs an LM client: an rlm.clients BaseLM (get_client(...)), an "
        f"rlm.broker.clients LMClient (create_client(...)) or an object with a "
        f"completion(prompt) method, not {type(client).__name__}"
    )


class LMHandler:
    """Answers the LM calls of REPLs created with ``lm_handler_address=handler.address``.

    ``client`` serves depth-0 calls; ``other_backend_client`` (when given) serves depth-1 calls
    (what a REPL at its default ``depth=1`` makes); ``model=`` picks a client registered under that
    name. ``batch_max_concurrent`` bounds the calls in flight per client.
    """

    def __init__(
        self,
        client: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        other_backend_client: Any | None = None,
        batch_max_concurrent: int = 16,
    ) -> None:
        if batch_max_concurrent < 1:
            raise ConfigurationError("batch_max_concurrent must be at least 1")
        self.default_client = client
        self.other_backend_client = other_backend_client
        self.clients: dict[str, Any] = {}
        self.host = host
        self._port = int(port)
        self._key: HandlerAddress | None = None
        self.batch_max_concurrent = batch_max_concurrent
        self.ledger = Ledger(label="LM handler")
        self._routers: dict[int, tuple[LMClient, LMRouter]] = {}
        self._lock = threading.Lock()
        self._router_for(client)
        if other_backend_client is not None:
            self._router_for(other_backend_client)
        self.register_client(self._name_of(client), client)

    @staticmethod
    def _name_of(client: Any) -> str:
        return str(getattr(client, "model_name", None) or type(client).__name__)

    def _router_for(self, client: Any) -> tuple[LMClient, LMRouter]:
        with self._lock:
            entry = self._routers.get(id(client))
            if entry is None:
                lm = _as_lm_client(client)
                entry = (lm, LMRouter(lm, max_concurrency=self.batch_max_concurrent))
                self._routers[id(client)] = entry
            return entry

    def register_client(self, model_name: str, client: Any) -> None:
        """Serve calls that name ``model=model_name`` with ``client``."""
        self._router_for(client)
        self.clients[model_name] = client

    def get_client(self, model: str | None = None, depth: int = 0) -> Any:
        """The client for a call: the one registered as ``model``, else ``other_backend_client``
        at depth 1, else the default client."""
        if model and model in self.clients:
            return self.clients[model]
        if depth == 1 and self.other_backend_client is not None:
            return self.other_backend_client
        return self.default_client

    # ---- address and lifetime --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port part of :attr:`address` (a registry key, not a TCP port)."""
        return self._key[1] if self._key is not None else self._port

    @property
    def address(self) -> HandlerAddress:
        """``(host, port)``: pass it as ``lm_handler_address`` to a REPL of this process."""
        return self._key if self._key is not None else (self.host, self._port)

    @property
    def running(self) -> bool:
        """Whether the handler is started (REPLs can reach it)."""
        return self._key is not None

    def start(self) -> HandlerAddress:
        """Make the handler reachable at :attr:`address`; returns that address."""
        with _registry_lock:
            if self._key is not None:
                return self._key
            if self._port:
                key = (self.host, self._port)
                if key in _handlers:
                    raise ConfigurationError(
                        f"another LMHandler already serves {key}; pass port=0 to get a free one"
                    )
            else:
                key = (self.host, next(_keys))
                while key in _handlers:
                    key = (self.host, next(_keys))
            _handlers[key] = self
            self._key = key
        return key

    def stop(self) -> None:
        """Stop answering; REPLs pointed here get ``"Error: ..."`` from ``llm_query``."""
        with _registry_lock:
            if self._key is not None and _handlers.get(self._key) is self:
                del _handlers[self._key]
            self._key = None

    def __enter__(self) -> LMHandler:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- calls -----------------------------------------------------------------------------

    async def acomplete(
        self, prompt: Any, model: str | None = None, depth: int = 0
    ) -> RLMChatCompletion:
        """One call routed like :meth:`get_client`, with its usage and timing."""
        chosen = self.get_client(model, depth)
        lm, router = self._router_for(chosen)
        started = time.perf_counter()
        response = await router.complete(_to_messages(prompt), ledger=self.ledger, depth=0)
        cost = lm.cost_of(response)
        name = model if model and model in self.clients else lm.model_name
        usage = ModelUsageSummary(
            1, response.usage.input_tokens, response.usage.output_tokens, cost
        )
        return RLMChatCompletion(
            root_model=name,
            prompt=prompt,
            response=response.text,
            usage_summary=UsageSummary({name: usage}),
            execution_time=time.perf_counter() - started,
        )

    async def acomplete_batch(
        self, prompts: list[Any], model: str | None = None, depth: int = 0
    ) -> list[RLMChatCompletion]:
        """Every prompt at once (bounded by ``batch_max_concurrent``), in order; a failed one
        comes back with ``error`` set and an empty ``response``, the others are unaffected."""
        results = await asyncio.gather(
            *(self.acomplete(prompt, model, depth) for prompt in prompts), return_exceptions=True
        )
        name = model or self._name_of(self.get_client(model, depth))
        return [
            RLMChatCompletion(
                name, prompt, "", UsageSummary(), 0.0, error=f"{type(r).__name__}: {r}"
            )
            if isinstance(r, BaseException)
            else r
            for prompt, r in zip(prompts, results, strict=True)
        ]

    def complete_batch(
        self, prompts: list[Any], model: str | None = None, depth: int = 0
    ) -> list[RLMChatCompletion]:
        """Blocking :meth:`acomplete_batch`."""
        from rlm.broker.loop import run_sync

        return run_sync(self.acomplete_batch(prompts, model, depth))

    def completion(self, prompt: Any, model: str | None = None) -> str:
        """The default (or ``model``'s) client's answer to ``prompt``; blocks until done."""
        from rlm.broker.loop import run_sync

        return run_sync(self.acomplete(prompt, model, depth=0)).response

    def get_usage_summary(self) -> UsageSummary:
        """Calls, tokens and cost of every call this handler served, per model."""
        return UsageSummary.from_ledger(self.ledger.usage)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"LMHandler({self._name_of(self.default_client)!r}, {state} at {self.address})"
