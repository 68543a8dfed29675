"""What every stand-in shares: its servers run on a private event loop thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any


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
