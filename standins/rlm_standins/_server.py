"""What every stand-in shares: its servers run on a private event loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import web

from ._shaping import Shaping


class LoopThreadServer:
    """Starts ``_serve()`` on a private event loop thread; ``stop()`` runs ``_shutdown()`` (which
    must kill every sandbox and its processes) and ends the loop. A context manager."""

    thread_name = "standin"

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def _serve(self) -> Any:
        """Starts the servers; returns what ``_on_started`` needs (e.g. the ports)."""
        raise NotImplementedError

    def _on_started(self, served: Any) -> None:
        """Records the addresses of the started servers."""

    async def _shutdown(self) -> None:
        raise NotImplementedError

    def start(self) -> Any:
        """Starts the servers (ports chosen by the kernel)."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=self.thread_name, daemon=True)
        self._thread.start()
        self._on_started(self._call(self._serve()))
        return self

    def stop(self) -> None:
        """Kills every sandbox (and its processes), then stops the servers and the loop."""
        loop = self._loop
        if loop is None:
            return
        self._call(self._shutdown())
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any, timeout: float = 30) -> Any:
        assert self._loop is not None, "the stand-in is not started"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)


class AiohttpStandIn(LoopThreadServer):
    """A stand-in served by aiohttp applications (E2B, Daytona, Prime): the call log, the
    shaping's throttling, background tasks, and the listening sites, in one place."""

    def __init__(self, shaping: Shaping | None) -> None:
        super().__init__()
        #: latency, bandwidth and a stream drop (default: RLM_STANDIN_SHAPING, else none)
        self.shaping = shaping or Shaping.from_env()
        #: every request, as ``METHOD /path`` (each stand-in says what it adds)
        self.calls: list[str] = []
        #: ``METHOD /path`` of every request the shaping answered 429 (throttled)
        self.throttled_calls: list[str] = []
        self._runners: list[web.AppRunner] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def _shaped(
        self, throttleable: Callable[[web.Request], bool], body: dict[str, Any]
    ) -> list[Any]:
        """The middlewares of the shaping (none when it is off): ``throttleable`` requests are
        answered 429 with ``body`` (the service's error shape) when their turn comes."""
        if not self.shaping.active:
            return []
        return [self.shaping.aiohttp_middleware(throttleable, body, self._throttle)]

    def _throttle(self, request: web.Request) -> None:
        self.throttled_calls.append(f"{request.method} {request.path}")

    async def _listen(self, *apps: web.Application, handler_cancellation: bool) -> list[int]:
        """Serves each of ``apps`` on a loopback port chosen by the kernel; their ports.
        ``handler_cancellation``: a client that goes away ends its request's handler."""
        ports = []
        for app in apps:
            runner = web.AppRunner(app, access_log=None, handler_cancellation=handler_cancellation)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self._runners.append(runner)
            ports.append(runner.addresses[0][1])
        return ports

    def _background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Runs ``coro`` on the stand-in's loop, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_listening(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
