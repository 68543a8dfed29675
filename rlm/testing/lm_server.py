"""A scripted, OpenAI-compatible LM server on loopback: the one seam for models in tests.

It is a real HTTP server (stdlib ``ThreadingHTTPServer``, HTTP/1.1 keep-alive, one thread per
request), so tests and benchmarks drive the real provider SDKs at it instead of patching them.
It serves

* ``POST /v1/chat/completions`` and ``GET /v1/models`` (OpenAI; also what OpenRouter, vLLM,
  Ollama, LM Studio and Vercel speak),
* ``POST /v1/messages`` (Anthropic Messages API),
* ``POST /v1beta/models/{model}:generateContent`` (Gemini API),

and answers each request from a *script*: a sequence of replies consumed in order, or a callable
called once per request. Latency, failures (``fail_first``) and provider-reported cost can be
injected, and every request is recorded with what was answered.

    with ScriptedLMServer(["first answer", Reply("slow", delay=1.0)], latency=0.05) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
        assert server.requests[0].prompt == "..."
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import select
import socket
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "RecordedRequest",
    "Reply",
    "Script",
    "ScriptedLMServer",
    "estimate_tokens",
]


@dataclass
class Reply:
    """What the script answers to one request."""

    text: str = ""
    status: int = 200
    """Anything but 200 is sent as a provider-style error body whose message is ``text``."""
    delay: float | None = None
    """Seconds to wait before answering; overrides the server's ``latency`` for this reply."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers, e.g. ``{"retry-after": "0"}``."""
    cost: float | None = None
    """If set, reported as ``usage.cost`` in USD (as OpenRouter does)."""
    input_tokens: int | None = None
    """Overrides the estimated prompt token count reported in ``usage``."""
    output_tokens: int | None = None
    """Overrides the estimated completion token count reported in ``usage``."""


@dataclass
class RecordedRequest:
    """One request the server received, normalised to OpenAI-style messages.

    ``started`` and ``finished`` are ``time.monotonic()`` values; ``finished`` is 0.0 while the
    request is being served.
    """

    model: str
    messages: list[dict[str, Any]]
    body: dict[str, Any]
    started: float
    finished: float = 0.0
    api: str = "openai"
    """Which wire API was called: ``"openai"``, ``"anthropic"`` or ``"gemini"``."""
    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None
    """HTTP status answered (None while in flight)."""
    reply: Reply | None = None
    """The reply that was sent (None while in flight)."""
    usage: dict[str, Any] | None = None
    """``{"input_tokens", "output_tokens", "cost"}`` exactly as reported; None for errors.

    A client that hung up before the answer was written (it timed out) gets status 499.
    """

    @property
    def prompt(self) -> str:
        """The content of the last user message (text parts joined), or "" if there is none."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return content_text(message.get("content"))
        return ""


Script = Callable[[RecordedRequest], Reply | str] | Sequence[Reply | str]
"""A callable answering each request, or a sequence of replies consumed in order."""
ReplyLike = Reply | str | Callable[[RecordedRequest], Reply | str]


def estimate_tokens(text: str) -> int:
    """The server's deterministic token estimate: one token per four characters, at least 1."""
    return max(1, len(text) // 4)


def content_text(content: Any) -> str:
    """Flatten a message ``content`` (a string or a list of text parts) to a string."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    429: "rate_limit_error",
}
_GEMINI_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    503: "UNAVAILABLE",
}
_GEMINI_PATH = re.compile(r"^/v1(?:beta|alpha)?\d*/models/(?P<model>[^:/]+):generateContent$")


class _BadRequest(Exception):
    """The request body could not be understood (answered with HTTP 400)."""


class ScriptedLMServer:
    """An OpenAI/Anthropic/Gemini-compatible HTTP server on loopback answering from a script.

    ``script`` is a sequence of replies (each request takes the next one; when it runs out the
    server answers HTTP 500 "script exhausted") or a callable ``(RecordedRequest) -> Reply | str``
    called for each request, possibly from many threads at once. ``latency`` is slept before every
    reply (each request has its own thread, so hundreds can wait at once). ``fail_first=N``
    answers the first N requests with ``fail_status`` without consuming the script, to test
    retries. ``api_key``, if set, must be presented or the server answers 401.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        fail_first: int = 0,
        fail_status: int = 500,
        api_key: str | None = None,
    ) -> None:
        self.latency = latency
        self.host = host
        self.port = port
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._in_flight = 0
        self._arrivals = 0
        self._ids = itertools.count(1)
        self._script: Script = ()
        self._position = 0
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.set_script(script if script is not None else ())

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> ScriptedLMServer:
        """Bind and serve in a background thread; returns ``self``."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.lm_server = self
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ScriptedLMServer:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every open connection."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ScriptedLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root_url}/v1"

    @property
    def root_url(self) -> str:
        """The server root, ``http://127.0.0.1:PORT`` (the Anthropic and Gemini SDKs' base_url)."""
        if self._httpd is None:
            raise RuntimeError("ScriptedLMServer is not started; call start() or use `with`")
        return f"http://{self.host}:{self.port}"

    # -- script and records --------------------------------------------------------------------

    def set_script(self, script: Script) -> None:
        """Replace the script; a sequence script starts again from its first item."""
        if isinstance(script, str | Reply):
            script = [script]
        if not callable(script):
            script = list(script)
        with self._lock:
            self._script = script
            self._position = 0

    def reset(self) -> None:
        """Forget recorded requests, ``max_in_flight`` and the ``fail_first`` count; rewind."""
        with self._lock:
            self.requests = []
            self.max_in_flight = self._in_flight
            self._arrivals = 0
            self._position = 0

    def usage_total(self) -> dict[str, int]:
        """``{"calls", "input_tokens", "output_tokens"}`` summed over successful replies."""
        with self._lock:
            done = [r.usage for r in self.requests if r.status == 200 and r.usage is not None]
        return {
            "calls": len(done),
            "input_tokens": sum(u["input_tokens"] for u in done),
            "output_tokens": sum(u["output_tokens"] for u in done),
        }

    @staticmethod
    def rule_script(
        rules: Sequence[tuple[str | Callable[[RecordedRequest], bool], ReplyLike]],
        default: ReplyLike | None = None,
    ) -> Callable[[RecordedRequest], Reply | str]:
        """Build a callable script from ``(match, reply)`` rules, tried in order.

        ``match`` is a substring of the last user message or a predicate on the request; ``reply``
        is a ``Reply``, a string or a callable producing one. Without a matching rule, ``default``
        answers; if it is None the server answers HTTP 500 naming the unmatched prompt.
        """
        compiled = list(rules)

        def resolve(reply: ReplyLike, request: RecordedRequest) -> Reply | str:
            return reply(request) if callable(reply) else reply

        def script(request: RecordedRequest) -> Reply | str:
            prompt = request.prompt
            for match, reply in compiled:
                hit = match in prompt if isinstance(match, str) else match(request)
                if hit:
                    return resolve(reply, request)
            if default is None:
                return Reply(f"ScriptedLMServer: no rule matched prompt {prompt[:200]!r}", 500)
            return resolve(default, request)

        return script

    # -- serving (called from handler threads) -------------------------------------------------

    def _begin(self, request: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(request)
            self._arrivals += 1
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return self._arrivals

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _next_reply(self, request: RecordedRequest, arrival: int) -> Reply:
        if arrival <= self.fail_first:
            return Reply(
                f"ScriptedLMServer: injected failure {arrival} of {self.fail_first}",
                self.fail_status,
            )
        with self._lock:
            script = self._script
            if not callable(script):
                position = self._position
                self._position += 1
        try:
            if callable(script):
                reply = script(request)
            elif position < len(script):
                reply = script[position]
            else:
                return Reply(
                    f"ScriptedLMServer: script exhausted after {len(script)} replies "
                    f"(unanswered prompt: {request.prompt[:200]!r})",
                    500,
                )
        except Exception:
            return Reply(f"ScriptedLMServer: the script raised:\n{traceback.format_exc()}", 500)
        if isinstance(reply, str):
            return Reply(reply)
        if not isinstance(reply, Reply):
            return Reply(f"ScriptedLMServer: the script returned {reply!r}, not Reply | str", 500)
        return reply

    def _usage(self, request: RecordedRequest, reply: Reply) -> dict[str, Any]:
        prompt_text = "".join(content_text(m.get("content")) for m in request.messages)
        return {
            "input_tokens": reply.input_tokens
            if reply.input_tokens is not None
            else estimate_tokens(prompt_text),
            "output_tokens": reply.output_tokens
            if reply.output_tokens is not None
            else estimate_tokens(reply.text),
            "cost": reply.cost,
        }

    @staticmethod
    def _capped(request: RecordedRequest, reply: Reply) -> Reply:
        """The reply cut to the request's output cap, as a provider does (``max_tokens`` /
        ``max_completion_tokens``; Gemini's ``generationConfig.maxOutputTokens``)."""
        body = request.body
        generation = body.get("generationConfig") or {}
        cap = (
            body.get("max_completion_tokens")
            or body.get("max_tokens")
            or (generation.get("maxOutputTokens") if isinstance(generation, dict) else None)
        )
        if not isinstance(cap, int) or cap <= 0 or reply.status != 200:
            return reply
        output = reply.output_tokens if reply.output_tokens is not None else None
        if output is None and estimate_tokens(reply.text) <= cap:
            return reply
        if output is not None and output <= cap:
            return reply
        return replace(reply, text=reply.text[: cap * 4], output_tokens=cap)

    def _next_id(self) -> int:
        return next(self._ids)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # keep-alive threads wait on idle sockets; never join them
    request_queue_size = 1024  # the listen backlog: hundreds of clients connect at once
    allow_reuse_address = True
    lm_server: ScriptedLMServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ScriptedLMServer/1.0"
    timeout = 120  # an idle keep-alive connection's thread ends after this
    # Headers and body leave in one segment: without this, Nagle's algorithm meets the client's
    # delayed ACK and every reply waits ~40 ms.
    disable_nagle_algorithm = True
    wbufsize = -1
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request access log."""

    # -- routing -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path in ("/v1/models", "/models"):
            lm = self.server.lm_server
            with lm._lock:
                names = sorted({r.model for r in lm.requests if r.model} | {"scripted"})
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "rlm"} for n in names]
            self._send_json(200, {"object": "list", "data": data})
        else:
            self._send_error("openai", 404, f"no route for GET {self.path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        body_bytes = self._read_body()
        gemini = _GEMINI_PATH.match(path)
        if path in ("/v1/chat/completions", "/chat/completions"):
            api = "openai"
        elif path in ("/v1/messages", "/messages"):
            api = "anthropic"
        elif gemini is not None:
            api = "gemini"
        else:
            self._send_error("openai", 404, f"no route for POST {self.path}")
            return
        try:
            body = json.loads(body_bytes or b"null")
            if not isinstance(body, dict):
                raise _BadRequest("the request body must be a JSON object")
            if api == "gemini":
                assert gemini is not None
                model, messages = gemini.group("model"), _gemini_messages(body)
            else:
                model, messages = _chat_messages(api, body)
        except (ValueError, _BadRequest) as exc:
            self._send_error(api, 400, f"could not parse the request body: {exc}")
            return
        self._serve(api, model, messages, body)

    # -- one LM call ---------------------------------------------------------------------------

    def _serve(
        self, api: str, model: str, messages: list[dict[str, Any]], body: dict[str, Any]
    ) -> None:
        lm = self.server.lm_server
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(model, messages, body, time.monotonic(), api=api, headers=headers)
        arrival = lm._begin(request)
        try:
            if lm.api_key is not None and not _has_key(headers, lm.api_key):
                reply = Reply("ScriptedLMServer: invalid API key", 401)
            else:
                reply = lm._capped(request, lm._next_reply(request, arrival))
            delay = reply.delay if reply.delay is not None else lm.latency
            if delay > 0:
                time.sleep(delay)
            usage = lm._usage(request, reply) if reply.status == 200 else None
            request.reply, request.usage = reply, usage
            if reply.status != 200:
                payload = _error_body(api, reply.status, reply.text or "scripted error")
            elif api == "anthropic":
                payload = _anthropic_body(lm._next_id(), model, reply.text, usage)
            elif api == "gemini":
                payload = _gemini_body(model, reply.text, usage)
            else:
                payload = _openai_body(lm._next_id(), model, reply.text, usage)
            request.finished = time.monotonic()
            request.status = reply.status
            if self._client_gone() or not self._send_json(reply.status, payload, reply.headers):
                request.status, request.usage = 499, None  # the client hung up: nothing reported
        finally:
            if not request.finished:
                request.finished = time.monotonic()
            lm._end()

    # -- I/O -----------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _client_gone(self) -> bool:
        """Whether the client closed the connection while we slept (it gave up waiting)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> bool:
        """Send a JSON response; False if the client had already hung up (e.g. it timed out)."""
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return False
        return True

    def _send_error(self, api: str, status: int, message: str) -> None:
        self._send_json(status, _error_body(api, status, message))


# -- wire formats ------------------------------------------------------------------------------


def _has_key(headers: dict[str, str], key: str) -> bool:
    presented = {
        headers.get("authorization", "").removeprefix("Bearer ").strip(),
        headers.get("x-api-key", ""),
        headers.get("x-goog-api-key", ""),
    }
    return key in presented


def _chat_messages(api: str, body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    model = body.get("model")
    messages = body.get("messages")
    if not isinstance(model, str) or not model:
        raise _BadRequest("'model' must be a non-empty string")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a list of objects")
    if api == "anthropic" and body.get("system") is not None:
        messages = [{"role": "system", "content": content_text(body["system"])}, *messages]
    return model, list(messages)


def _gemini_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(system, dict):
        messages.append({"role": "system", "content": content_text(system.get("parts"))})
    contents = body.get("contents")
    if not isinstance(contents, list):
        raise _BadRequest("'contents' must be a list")
    for item in contents:
        if not isinstance(item, dict):
            raise _BadRequest("each item of 'contents' must be an object")
        role = "assistant" if item.get("role") == "model" else "user"
        messages.append({"role": role, "content": content_text(item.get("parts"))})
    return messages


def _error_body(api: str, status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    if api == "anthropic":
        if status == 529:
            kind = "overloaded_error"
        elif status >= 500:
            kind = "api_error"
        return {"type": "error", "error": {"type": kind, "message": message}}
    if api == "gemini":
        status_name = _GEMINI_STATUS.get(
            status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"
        )
        return {"error": {"code": status, "message": message, "status": status_name}}
    return {"error": {"message": message, "type": kind, "code": status}}


def _openai_body(n: int, model: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    assert usage is not None
    usage_body: dict[str, Any] = {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["input_tokens"] + usage["output_tokens"],
    }
    if usage["cost"] is not None:
        usage_body["cost"] = usage["cost"]
    return {
        "id": f"chatcmpl-scripted-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage_body,
    }


def _anthropic_body(n: int, model: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    assert usage is not None
    return {
        "id": f"msg_scripted_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]},
    }


def _gemini_body(model: str, text: str, usage: dict[str, Any] | None) -> dict[str, Any]:
    assert usage is not None
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": usage["input_tokens"],
            "candidatesTokenCount": usage["output_tokens"],
            "totalTokenCount": usage["input_tokens"] + usage["output_tokens"],
        },
        "modelVersion": model,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m rlm.testing.lm_server``: serve one fixed reply until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--reply", default="Hello from ScriptedLMServer.")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    args = parser.parse_args(argv)
    reply = args.reply
    server = ScriptedLMServer(
        lambda _request: reply, latency=args.latency, host=args.host, port=args.port
    )
    with server:
        print(f"ScriptedLMServer on {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
