"""The one background event loop that runs the broker, the LM clients and every RLM run.

Synchronous callers (``RLM.completion``) submit coroutines to it; async callers await them via
``asyncio.wrap_future``. One loop per process keeps every sub-call, child run and gRPC handler on
one thread with no lock between them.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
#: How long an interrupted call waits for its sandboxes to be torn down.
CLEANUP_SECONDS = 30.0

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process-wide loop, started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            _thread = threading.Thread(target=run, name="rlm-io", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedules ``coro`` on the background loop."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop())


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Runs ``coro`` on the background loop and waits for it. On Ctrl-C (or a timeout) the
    coroutine is cancelled and its clean-up (sandboxes closed) is awaited before re-raising."""
    if on_loop_thread():
        raise RuntimeError("run_sync() called from the rlm event loop; await the coroutine instead")
    finished = threading.Event()

    async def tracked() -> T:
        try:
            return await coro
        finally:
            finished.set()

    future = submit(tracked())
    try:
        return future.result(timeout)
    except BaseException:
        if not future.done():
            future.cancel()  # cancels the task on the loop, which runs its finally blocks
            finished.wait(CLEANUP_SECONDS)
        raise


def on_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def _shutdown() -> None:
    loop = _loop
    if loop is None or loop.is_closed():
        return
    from rlm.broker import cleanup

    with contextlib.suppress(BaseException):  # best effort at interpreter exit
        asyncio.run_coroutine_threadsafe(cleanup.close_all(), loop).result(CLEANUP_SECONDS)
    loop.call_soon_threadsafe(loop.stop)


atexit.register(_shutdown)
