"""``BaseLM``, the interface of every LM client, and ``BrokerLM``, the one implementation of it.

``BrokerLM`` adapts a backend of ``rlm.broker.clients`` (async, with the project's retry policy)
to the synchronous and asynchronous ``completion`` calls of ``BaseLM``; the per-backend classes
(``rlm.clients.openai.OpenAIClient``, ...) only map their constructor keywords onto it.
"""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm.errors import ConfigurationError
from rlm.types import ModelUsageSummary, UsageSummary

if TYPE_CHECKING:
    from rlm.broker.clients.base import LMClient, LMResponse

__all__ = ["DEFAULT_TIMEOUT", "BaseLM", "BrokerLM", "Prompt", "to_messages"]

DEFAULT_TIMEOUT: float = 300.0
"""Seconds one LM request may take before it fails (and is retried)."""

Prompt = str | Mapping[str, Any] | list[dict[str, Any]]
"""A user message as text, one message dict, or a list of OpenAI-style message dicts."""


def to_messages(prompt: Prompt) -> list[dict[str, Any]]:
    """OpenAI-style messages for ``prompt``: text becomes one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        return [dict(prompt)]
    if isinstance(prompt, list) and all(isinstance(item, Mapping) for item in prompt):
        return [dict(item) for item in prompt]
    raise ConfigurationError(
        f"a prompt must be a str or a list of message dicts, got {type(prompt).__name__}"
    )


class BaseLM(ABC):
    """An LM client: ``completion``/``acompletion`` return the text and record the usage.

    ``sampling_args`` (``temperature``, ``max_tokens``, ...) are sent with every call; other
    keyword arguments are kept in ``self.kwargs`` for the subclass.
    """

    def __init__(
        self,
        model_name: str | None,
        timeout: float | None = DEFAULT_TIMEOUT,
        sampling_args: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_name = model_name
        self.timeout = timeout
        self.sampling_args: dict[str, Any] = dict(sampling_args or {})
        self.kwargs: dict[str, Any] = kwargs

    @abstractmethod
    def completion(self, prompt: Prompt) -> str:
        """The model's answer to ``prompt``."""

    @abstractmethod
    async def acompletion(self, prompt: Prompt) -> str:
        """The model's answer to ``prompt``, awaited."""

    @abstractmethod
    def get_usage_summary(self) -> UsageSummary:
        """Calls, tokens and cost of every call so far, per model."""

    @abstractmethod
    def get_last_usage(self) -> ModelUsageSummary:
        """Tokens and cost of the last call."""

    def close(self) -> None:  # noqa: B027 - a no-op default subclasses may override
        """Release the client's connections."""

    def __enter__(self) -> BaseLM:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class _Totals:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    def summary(self) -> ModelUsageSummary:
        return ModelUsageSummary(self.calls, self.input_tokens, self.output_tokens, self.cost)


class BrokerLM(BaseLM):
    """A ``BaseLM`` over the ``rlm.broker.clients`` backend named ``backend``.

    Every other keyword is a ``backend_kwargs`` key of that backend (``api_key``, ``base_url``,
    ``max_retries``, ``extra_headers``, SDK constructor options such as ``default_headers``...).
    Calls run on rlm's background event loop. ``get_last_usage`` is the last call made in the
    caller's own thread or asyncio task, so concurrent callers each see their own.
    """

    backend: str = ""
    """The ``rlm.broker.clients`` backend name; subclasses set it, instances may override it."""

    def __init__(
        self,
        model_name: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        sampling_args: Mapping[str, Any] | None = None,
        *,
        backend: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model_name, timeout, sampling_args, **kwargs)
        self.backend = backend or type(self).backend
        if not self.backend:
            raise ConfigurationError("BrokerLM needs a backend name, e.g. backend='openai'")
        self._backend_kwargs = dict(kwargs)
        if timeout is not None:
            self._backend_kwargs["timeout"] = timeout
        self._lock = threading.Lock()
        self._clients: dict[str, LMClient] = {}
        self._totals: dict[str, _Totals] = {}
        self._last_any: ModelUsageSummary | None = None
        self._last_here: ContextVar[ModelUsageSummary | None] = ContextVar(
            f"rlm_last_usage_{id(self)}", default=None
        )
        if model_name:
            self._client_for(model_name)  # a bad configuration fails here, not at the first call

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, model_name={self.model_name!r})"

    # -- the broker clients ----------------------------------------------------------------------

    @property
    def lm_client(self) -> LMClient:
        """The ``rlm.broker.clients`` client that serves ``model_name``."""
        return self._client_for(self._model(None))

    def _model(self, model: str | None) -> str:
        chosen = model or self.model_name
        if not chosen:
            raise ConfigurationError(
                f"{type(self).__name__} needs a model: pass model_name=... when creating it "
                "or model=... to the call"
            )
        return chosen

    def _client_for(self, model: str) -> LMClient:
        from rlm.broker.clients import create_client

        with self._lock:
            client = self._clients.get(model)
            if client is None:
                client = create_client(self.backend, {**self._backend_kwargs, "model_name": model})
                self._clients[model] = client
            return client

    def _call_sampling(self) -> dict[str, Any]:
        """Sampling arguments for one call, from ``sampling_args`` (None values dropped)."""
        return {k: v for k, v in self.sampling_args.items() if v is not None}

    # -- calls -----------------------------------------------------------------------------------

    def completion(self, prompt: Prompt, model: str | None = None) -> str:
        """The answer of ``model`` (default ``model_name``) to ``prompt``; blocks until done."""
        from rlm.broker.loop import run_sync

        messages = to_messages(prompt)
        model = self._model(model)
        client = self._client_for(model)
        response = run_sync(client.acomplete(messages, **self._call_sampling()))
        return self._record(model, client, response)

    async def acompletion(self, prompt: Prompt, model: str | None = None) -> str:
        """The answer of ``model`` (default ``model_name``) to ``prompt``, awaited."""
        from rlm.broker.loop import on_loop_thread, submit

        messages = to_messages(prompt)
        model = self._model(model)
        client = self._client_for(model)
        call = client.acomplete(messages, **self._call_sampling())
        if on_loop_thread():
            response = await call
        else:
            response = await asyncio.wrap_future(submit(call))
        return self._record(model, client, response)

    def _record(self, model: str, client: LMClient, response: LMResponse) -> str:
        usage = response.usage
        cost = client.cost_of(response)
        last = ModelUsageSummary(1, usage.input_tokens, usage.output_tokens, cost)
        with self._lock:
            totals = self._totals.setdefault(model, _Totals())
            totals.calls += 1
            totals.input_tokens += usage.input_tokens
            totals.output_tokens += usage.output_tokens
            if cost is not None:
                totals.cost = (totals.cost or 0.0) + cost
            self._last_any = last
        self._last_here.set(last)
        return response.text

    # -- usage -----------------------------------------------------------------------------------

    def get_usage_summary(self) -> UsageSummary:
        """Calls, tokens and cost (None where unknown) of every call so far, per model."""
        with self._lock:
            return UsageSummary({m: t.summary() for m, t in self._totals.items()})

    def get_last_usage(self) -> ModelUsageSummary:
        """The last call of this thread or task (else of any), with ``total_calls=1``."""
        last = self._last_here.get() or self._last_any
        return last if last is not None else ModelUsageSummary(0, 0, 0)

    def _per_model(self, field: str) -> dict[str, Any]:
        with self._lock:
            return {m: getattr(t, field) for m, t in self._totals.items()}

    @property
    def model_call_counts(self) -> dict[str, int]:
        """Calls per model (a snapshot)."""
        return self._per_model("calls")

    @property
    def model_input_tokens(self) -> dict[str, int]:
        """Input tokens per model (a snapshot)."""
        return self._per_model("input_tokens")

    @property
    def model_output_tokens(self) -> dict[str, int]:
        """Output tokens per model (a snapshot)."""
        return self._per_model("output_tokens")

    @property
    def model_total_tokens(self) -> dict[str, int]:
        """Input plus output tokens per model (a snapshot)."""
        with self._lock:
            return {m: t.input_tokens + t.output_tokens for m, t in self._totals.items()}

    @property
    def model_costs(self) -> dict[str, float]:
        """USD cost per model, for models whose cost is known (a snapshot)."""
        return {m: c for m, c in self._per_model("cost").items() if c is not None}

    @property
    def last_prompt_tokens(self) -> int:
        """Input tokens of the last call (see ``get_last_usage``)."""
        return self.get_last_usage().total_input_tokens

    @property
    def last_completion_tokens(self) -> int:
        """Output tokens of the last call (see ``get_last_usage``)."""
        return self.get_last_usage().total_output_tokens

    @property
    def last_cost(self) -> float | None:
        """USD cost of the last call, or None when unknown."""
        return self.get_last_usage().total_cost

    # -- lifetime --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the broker clients' connections (on rlm's event loop)."""
        from rlm.broker.loop import on_loop_thread, submit

        with self._lock:
            clients, self._clients = list(self._clients.values()), {}

        async def close_all() -> None:
            await asyncio.gather(*(client.aclose() for client in clients))

        if on_loop_thread():
            await close_all()
        else:
            await asyncio.wrap_future(submit(close_all()))

    def close(self) -> None:
        """Close the broker clients' connections; the client can still be used afterwards."""
        from rlm.broker.loop import run_sync

        with self._lock:
            if not self._clients:
                return
        run_sync(self.aclose())

    async def __aenter__(self) -> BrokerLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
