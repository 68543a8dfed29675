"""``rlm serve``: an OpenAI-compatible HTTP endpoint that answers with an RLM.

Any OpenAI client, agent framework or eval harness uses an RLM as a model by changing
``base_url``::

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="...")
    client.chat.completions.create(
        model="rlm",
        messages=[{"role": "system", "content": "Which city is named most often?"},
                  {"role": "user", "content": huge_text}],          # the context
        extra_body={"max_depth": 2, "max_budget": 0.5},            # optional, see OVERRIDES
    )

What the request means:

* context: ``extra_body["context"]`` (str, list or dict) if given, else the last user message;
* the question (``root_prompt``): ``extra_body["question"]``; else, when the context came from
  ``extra_body``, the last user message; else the system message(s); else none (the model is then
  told the request is inside the context);
* limits: the server's settings, which a request may only tighten (``OVERRIDES``); the sandbox kind
  only among ``allowed_environments``, so a client cannot move code out of Docker;
* OpenAI's own ``max_tokens`` / ``temperature`` / ... are ignored: they mean one LM call, and an RLM
  makes many (the whole-tree token cap is ``max_tree_tokens``).

Every request gets its own ``RLM`` (own broker session, sandbox, limits and event stream), closed
when the answer is sent or the client hangs up. ``stream=true`` sends the final answer in chunks
(plus a usage chunk if ``stream_options.include_usage``); with ``extra_body={"progress": true}``
the run's progress events stream first as ``delta.reasoning_content`` lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlm.broker.loop import submit
from rlm.config import request_limits
from rlm.core import RLM
from rlm.errors import (
    BudgetExceededError,
    ConfigurationError,
    LimitExceededError,
    LMError,
    RLMError,
    SandboxError,
    TimeoutExceededError,
    TokenLimitExceededError,
)
from rlm.events import RLMEvent
from rlm.logger import RLMLogger
from rlm.types import RLMChatCompletion

if TYPE_CHECKING:  # aiohttp is imported when serving, so that `rlm run` starts faster
    from aiohttp import web

__all__ = ["OVERRIDES", "RLMServer", "ServeConfig", "add_cli", "event_stream", "main"]

log = logging.getLogger("rlm.serve")

OVERRIDES: dict[str, tuple[str, type]] = request_limits()
"""Request field -> (``RLM`` kwarg, type). A request may lower these, never raise them. Derived
from the options schema (``rlm.config.Settings``), like the flags and the config file."""

HEARTBEAT_SECONDS = 10.0


@dataclass
class ServeConfig:
    """How the server builds each request's RLM and whom it answers."""

    rlm_kwargs: dict[str, Any]
    """``RLM(**rlm_kwargs)``: usually ``rlm.config.load_settings(...).rlm_kwargs()``."""
    api_key: str | None = None
    """Bearer key clients must send; None answers everyone (bind to loopback then)."""
    model_name: str = "rlm"
    max_concurrent: int = 4
    """Requests running at once; more wait their turn."""
    allowed_environments: tuple[str, ...] = ()
    """Sandbox kinds a request may pick besides the configured one."""
    log_dir: str | None = None
    """Writes one JSONL trajectory per request (``rlm view`` renders it)."""
    stream_chunk_chars: int = 64
    max_body_mb: int = 256
    """The largest request body accepted (MiB); a larger one is answered 413 before it is read
    whole. The context travels in the body: raise it for bigger contexts."""


class APIError(Exception):
    """Answered as OpenAI-style error JSON: ``{"error": {"message", "type", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        partial_answer: str | None = None,
        retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.type, self.code = status, type, code
        self.partial_answer, self.retry = partial_answer, retry

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": str(self), "type": self.type, "code": self.code}
        if self.partial_answer:
            error["partial_answer"] = self.partial_answer
        return {"error": error}

    def response(self) -> web.Response:
        from aiohttp import web

        headers = {} if self.retry is None else {"x-should-retry": str(self.retry).lower()}
        return web.json_response(self.body(), status=self.status, headers=headers)


#: How a limit that stopped a run is answered: (error class, HTTP status, type, code); the first
#: matching row wins, and the last catches every other limit (its code: the limit's name).
_LIMIT_ANSWERS: list[tuple[type[LimitExceededError], int, str, str | None]] = [
    (BudgetExceededError, 402, "insufficient_quota", "budget_exceeded"),
    (TokenLimitExceededError, 429, "insufficient_quota", "tree_tokens_exceeded"),
    (TimeoutExceededError, 504, "timeout", "max_timeout_exceeded"),
    (LimitExceededError, 500, "server_error", None),
]


def api_error_for(error: BaseException) -> APIError:
    """The HTTP status for an exception of a run. Limit errors say ``x-should-retry: false``:
    the openai client would otherwise re-run (and re-pay for) the whole tree."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    partial = getattr(error, "partial_answer", None)
    if isinstance(error, APIError):
        return error
    if isinstance(error, LimitExceededError):
        status, kind, code = next(
            (status, kind, code)
            for limit, status, kind, code in _LIMIT_ANSWERS
            if isinstance(error, limit)
        )
        return APIError(
            status,
            message,
            type=kind,
            code=code or error.limit_name,
            partial_answer=partial,
            retry=False,
        )
    if isinstance(error, ConfigurationError):
        return APIError(400, message, code="invalid_configuration")
    if isinstance(error, LMError):
        return APIError(
            502, f"upstream LM failed: {message}", type="server_error", code="upstream_error"
        )
    if isinstance(error, SandboxError):
        return APIError(500, message, type="server_error", code="sandbox_error", retry=False)
    if isinstance(error, RLMError):
        return APIError(500, message, type="server_error", code=type(error).__name__)
    log.error("rlm serve: unexpected error", exc_info=error)
    return APIError(500, f"internal error: {type(error).__name__}: {message}", type="server_error")


# ---- the request -------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
            else:
                raise APIError(400, f"{where}: only text content parts are supported")
        return "".join(parts)
    if content is None:
        return ""
    raise APIError(400, f"{where}: content must be a string or a list of text parts")


@dataclass
class ChatCall:
    """One parsed ``/v1/chat/completions`` request."""

    context: Any
    root_prompt: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    progress: bool = False


def parse_chat_request(body: Any, config: ServeConfig) -> ChatCall:
    """Validates the body and works out context, question and limits (see the module docstring)."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    if body.get("model") != config.model_name:
        raise APIError(
            404,
            f"model {body.get('model')!r} is not served here; use model={config.model_name!r}",
            code="model_not_found",
        )
    if body.get("n", 1) != 1:
        raise APIError(400, "n must be 1: an RLM gives one answer per request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty list")
    texts: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(400, f"messages[{index}] must be an object with a role")
        texts.append((message["role"], _text(message.get("content"), f"messages[{index}]")))
    users = [text for role, text in texts if role == "user"]
    system = "\n\n".join(text for role, text in texts if role in ("system", "developer"))
    if "context" in body:
        context = body["context"]
        if not isinstance(context, (str, list, dict)):
            raise APIError(400, "context must be a string, a list or an object")
        fallback = users[-1] if users else system
    else:
        if not users:
            raise APIError(400, "no user message: send the context as the last user message")
        context, fallback = users[-1], system
    question = body.get("question", fallback or None)
    if question is not None and not isinstance(question, str):
        raise APIError(400, "question must be a string")
    stream_options = body.get("stream_options") or {}
    return ChatCall(
        context=context,
        root_prompt=question,
        overrides=_overrides(body, config),
        stream=bool(body.get("stream", False)),
        include_usage=bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        ),
        progress=bool(body.get("progress", False)),
    )


def _reject_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not valid JSON", name, 0)


def _strict_json(text: str) -> Any:
    """Standard JSON only: Python's parser would accept NaN and Infinity, and a NaN limit
    compares false with every number (it would disable the cap it names)."""
    return json.loads(text, parse_constant=_reject_constant)


def _overrides(body: dict[str, Any], config: ServeConfig) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, (kwarg, kind) in OVERRIDES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise APIError(400, f"{name} must be a number")
        if not math.isfinite(value):
            raise APIError(400, f"{name} must be a finite number, got {value!r}")
        value = kind(value)
        ceiling = config.rlm_kwargs.get(kwarg)
        if value <= 0 or (ceiling is not None and value > ceiling):
            limit = f"at most {ceiling}" if ceiling is not None else "positive"
            raise APIError(400, f"{name}={value} is not allowed: this server allows {limit}")
        overrides[kwarg] = value
    environment = body.get("environment")
    if environment is not None:
        allowed = {config.rlm_kwargs.get("environment", "local"), *config.allowed_environments}
        if environment not in allowed:
            raise APIError(
                400,
                f"environment {environment!r} is not allowed here; allowed: {sorted(allowed)} "
                "(the server operator adds more with --allow-environment)",
            )
        overrides["environment"] = environment
    return overrides


# ---- events as an async iterator ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def event_stream() -> AsyncIterator[tuple[Callable[[RLMEvent], None], asyncio.Queue]]:
    """An ``on_event`` callback and the queue it feeds, on the caller's event loop.

    ``on_event`` is called on rlm's own loop thread and must not block: it hands each event over
    with ``call_soon_threadsafe``.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[RLMEvent] = asyncio.Queue()

    def on_event(event: RLMEvent) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(queue.put_nowait, event)

    yield on_event, queue


def describe_event(event: RLMEvent) -> str | None:
    """One line of progress for a client, or None for events not worth a line."""
    data, pad = event.data, "  " * event.depth
    if event.kind == "run_started":
        return f"{pad}▶ run {event.run_id} (depth {event.depth}, model {data.get('model')})"
    if event.kind == "lm_response":
        return (
            f"{pad}iteration {data.get('iteration')}: LM {data.get('seconds', 0):.1f}s, "
            f"{data.get('input_tokens', 0)} in / {data.get('output_tokens', 0)} out"
        )
    if event.kind == "cell_executed":
        outcome = "error: " + data["error"].strip().splitlines()[-1] if data.get("error") else "ok"
        return f"{pad}  code block {data.get('block')}: {data.get('seconds', 0):.2f}s, {outcome}"
    if event.kind == "subcall_started" and data.get("call") == "rlm_query":
        return f"{pad}  rlm_query → child run {data.get('child_run_id', '(plain LM call)')}"
    if event.kind == "run_finished":
        return f"{pad}■ run {event.run_id} finished by {data.get('finished_by')}"
    return None


# ---- the server --------------------------------------------------------------------------------


def _usage(result: RLMChatCompletion) -> dict[str, Any]:
    summary = result.usage_summary
    usage: dict[str, Any] = {
        "prompt_tokens": summary.total_input_tokens,
        "completion_tokens": summary.total_output_tokens,
        "total_tokens": summary.total_input_tokens + summary.total_output_tokens,
    }
    if summary.total_cost is not None:
        usage["cost"] = summary.total_cost
    return usage


def _finish_reason(result: RLMChatCompletion) -> str:
    """``stop`` when the model set ``answer["ready"]``; ``length`` when iterations ran out."""
    return "stop" if (result.metadata or {}).get("finished_by") == "answer" else "length"


def _rlm_details(result: RLMChatCompletion) -> dict[str, Any]:
    metadata = result.metadata or {}
    return {
        "run_id": metadata.get("run_id"),
        "finished_by": metadata.get("finished_by"),
        "execution_time": result.execution_time,
        "usage_summary": result.usage_summary.to_dict(),
    }


class RLMServer:
    """The aiohttp application plus its lifecycle; ``with RLMServer(config) as s:`` runs it on a
    background thread (for tests and notebooks), ``await s.start()`` on the current loop."""

    def __init__(self, config: ServeConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config, self.host, self.port = config, host, port
        self._slots = asyncio.Semaphore(config.max_concurrent)
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port/v1``, what clients take as ``base_url``."""
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        from aiohttp import web

        @web.middleware
        async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
            return await self._errors(request, handler)

        app = web.Application(
            middlewares=[errors], client_max_size=self.config.max_body_mb * 1024 * 1024
        )
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        return app

    # ---- lifecycle ----

    async def start(self) -> str:
        """Binds and serves; returns ``base_url`` (with the real port when ``port=0``)."""
        from aiohttp import web

        # handler_cancellation: a client that hangs up cancels its run (and stops paying for it).
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.base_url

    async def aclose(self) -> None:
        """Stops accepting, cancels runs in flight (their sandboxes close) and returns."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def __enter__(self) -> RLMServer:
        started = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._thread_loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:
                failure.append(error)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.aclose())
            loop.close()

        self._thread = threading.Thread(target=serve, name="rlm-serve", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise failure[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread_loop is not None and self._thread is not None:
            self._thread_loop.call_soon_threadsafe(self._thread_loop.stop)
            self._thread.join()

    # ---- handlers ----

    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        from aiohttp.web import HTTPException, HTTPRequestEntityTooLarge

        try:
            if self.config.api_key is not None:
                self._authenticate(request)
            return await handler(request)
        except HTTPRequestEntityTooLarge:
            return APIError(
                413,
                f"the request body is over this server's limit of {self.config.max_body_mb} MiB; "
                "send a smaller context (the operator raises the limit with --max-body-mb)",
                code="request_too_large",
            ).response()
        except HTTPException as error:
            return APIError(error.status, error.reason, code=error.reason.lower()).response()
        except Exception as error:
            return api_error_for(error).response()

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        assert self.config.api_key is not None
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), self.config.api_key.encode()
        ):
            raise APIError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                "server was started with (--api-key or RLM_SERVE_API_KEY)",
                code="invalid_api_key",
            )

    async def _health(self, request: web.Request) -> web.Response:
        from aiohttp import web

        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        from aiohttp import web

        model = {"id": self.config.model_name, "object": "model", "created": 0, "owned_by": "rlm"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        try:
            body = await request.json(loads=_strict_json)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise APIError(400, f"the request body is not JSON: {error}") from None
        call = parse_chat_request(body, self.config)
        if call.stream:
            return await self._stream(request, call)
        async with self._slots:
            result = await self._complete(call, on_event=None)
        finish = _finish_reason(result)
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.config.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.response},
                        "finish_reason": finish,
                    }
                ],
                "usage": _usage(result),
                "rlm": _rlm_details(result),
            }
        )

    async def _complete(
        self, call: ChatCall, on_event: Callable[[RLMEvent], None] | None
    ) -> RLMChatCompletion:
        kwargs = {**self.config.rlm_kwargs, **call.overrides}
        if self.config.log_dir:
            kwargs["logger"] = RLMLogger(self.config.log_dir, file_name="serve")
        rlm = RLM(**kwargs, on_event=on_event)
        try:
            return await rlm.acompletion(call.context, root_prompt=call.root_prompt)
        finally:
            # Shielded: a client hanging up must not leave the broker or a sandbox behind.
            await asyncio.shield(asyncio.wrap_future(submit(rlm.aclose())))

    async def _stream(self, request: web.Request, call: ChatCall) -> web.StreamResponse:
        """SSE. Headers go out only when there is something to send (a progress line, a
        heartbeat or the answer), so a run that fails fast still gets its real status code."""
        from aiohttp import web

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            body = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.config.model_name,
                "choices": [choice] if delta is not None else [],
                **extra,
            }
            return f"data: {json.dumps(body)}\n\n".encode()

        async def send(data: bytes) -> None:
            if not response.prepared:
                await response.prepare(request)
                await response.write(chunk({"role": "assistant", "content": ""}))
            await response.write(data)

        async with self._slots, event_stream() as (on_event, queue):
            run = asyncio.ensure_future(self._complete(call, on_event if call.progress else None))
            try:
                while not run.done():
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {run, getter}, timeout=HEARTBEAT_SECONDS, return_when="FIRST_COMPLETED"
                    )
                    if getter in done:
                        line = describe_event(getter.result())
                        if line:
                            await send(chunk({"reasoning_content": line + "\n"}))
                    else:
                        getter.cancel()
                        if not done:
                            await send(b": still working\n\n")
                result = run.result()
                while not queue.empty() and call.progress:
                    line = describe_event(queue.get_nowait())
                    if line:
                        await send(chunk({"reasoning_content": line + "\n"}))
            except Exception as error:
                if not response.prepared:
                    raise
                await response.write(
                    f"data: {json.dumps(api_error_for(error).body())}\n\n".encode()
                )
                await response.write(b"data: [DONE]\n\n")
                return response
            finally:
                run.cancel()
        size = self.config.stream_chunk_chars
        for start in range(0, len(result.response), size):
            await send(chunk({"content": result.response[start : start + size]}))
        finish = _finish_reason(result)
        await send(chunk({}, finish))
        if call.include_usage:
            await send(chunk(None, usage=_usage(result), rlm=_rlm_details(result)))
        await send(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


# ---- command line --------------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rlm serve``."""
    from rlm.config import add_settings_arguments

    parser = subparsers.add_parser(
        "serve",
        help="serve an RLM as an OpenAI-compatible model (POST /v1/chat/completions)",
        description=(
            "Answers OpenAI chat-completion requests with an RLM: the last user message is the "
            "context, the system message (or extra_body 'question') the question. Settings come "
            "from flags > RLM_* env vars > rlm.toml > defaults."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any)")
    parser.add_argument(
        "--api-key",
        dest="serve_api_key",  # never the LM key (--lm-api-key): each goes to its own party
        default=None,
        help="bearer key clients must send (default: $RLM_SERVE_API_KEY; none: no auth)",
    )
    parser.add_argument("--served-model-name", default="rlm", help="the model id (default rlm)")
    parser.add_argument("--max-concurrent", type=int, default=4, help="runs at once (default 4)")
    parser.add_argument(
        "--max-body-mb",
        type=int,
        default=256,
        help="largest request body accepted, in MiB (default 256; the context is in the body)",
    )
    parser.add_argument(
        "--allow-environment",
        action="append",
        default=[],
        metavar="NAME",
        help="sandbox kind a request may choose with extra_body 'environment' (repeatable)",
    )
    add_settings_arguments(parser, api_key_flag="--lm-api-key")
    parser.set_defaults(handler=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    from rlm.config import settings_from_args

    settings = settings_from_args(args)
    settings.check()
    api_key = args.serve_api_key or os.environ.get("RLM_SERVE_API_KEY") or None
    # Built once now so that a missing key or extra fails at start, not at the first request.
    RLM(**settings.rlm_kwargs()).close()
    config = ServeConfig(
        rlm_kwargs=settings.rlm_kwargs(),
        api_key=api_key,
        model_name=args.served_model_name,
        max_concurrent=args.max_concurrent,
        max_body_mb=args.max_body_mb,
        allowed_environments=tuple(args.allow_environment),
        log_dir=settings.log_dir,
    )
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"rlm serve: WARNING: listening on {args.host} without --api-key: anyone who can "
            "reach it spends your LM budget and runs code in your sandboxes",
            file=sys.stderr,
        )
    asyncio.run(_serve_until_signalled(RLMServer(config, args.host, args.port), settings))
    return 0


async def _serve_until_signalled(server: RLMServer, settings: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    url = await server.start()
    print(
        f"rlm serve: {settings.backend}/{settings.model} in {settings.environment} sandboxes, "
        f"max_depth {settings.max_depth}; listening on {url} (model {server.config.model_name!r})",
        file=sys.stderr,
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await server.aclose()
        print("rlm serve: stopped", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m rlm.serve ...``: ``rlm serve ...`` without going through ``rlm.cli``."""
    parser = argparse.ArgumentParser(prog="rlm")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.handler(args) or 0)
    except ConfigurationError as error:
        from rlm.cli import cli_words

        message = cli_words(str(error), api_key_flag="--lm-api-key")
        print(f"rlm serve: configuration error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
