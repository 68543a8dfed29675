"""One cloud sandbox per RLM tree: every session of the tree is a runner forked inside it.

The tree's sandbox runs two processes, each started through the provider's exec API with its
stdin and stdout streamed to the host (the one thing every provider offers):

- the fork server (``runner.pyz --fork-server-stdio DIR``), spoken to by the host's
  :class:`~rlm.environments.forkserver.StreamForkServer` as docker's shared container is: each
  session's runner is forked from it with its own process, work directory below ``DIR``,
  rlimits and broker session;
- the relay (``runner.pyz --relay-stdio DIR/relay.sock``), the other end of one
  :class:`~rlm.environments.relay.HostRelay`: every forked runner dials its socket, and each
  connection becomes a broker connection of its own on the host, authenticated by the token its
  runner sends in its own metadata. One relay therefore carries every session of the tree.

A provider adapter adds nothing for this. A :class:`TreeSandbox` is one such sandbox, created,
written to and destroyed by a session-less copy of the tree's environment (its ``owner``, with a
directory of its own in the sandbox) and ready once both processes answer. The tree
(:class:`RelayedTree`) starts one when its first session starts or, with a warm pool
(``pool_size``/``max_sandboxes``), takes one the pool made ready ahead of time: one tree, one
pooled sandbox, however wide its fan-out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable

from rlm.broker import cleanup
from rlm.errors import SandboxError, SandboxStartError

from .base import RunnerProcess, WarmPool
from .forkserver import StreamForkServer, StreamRunnerProcess
from .relay import HostRelay, RelayedSandboxEnvironment, RemoteProcess
from .runner.bundle import runner_bundle

logger = logging.getLogger(__name__)

#: how many sandboxes of the warm pool a tree tries before it reports the last one's error
#: (the provider may have ended one while it waited)
POOL_TAKES = 3


class BatchedWriter:
    """Writes to a remote process's stdin one call at a time, joining what queued meanwhile
    into the next call (each may be a round trip to the provider)."""

    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._queue: collections.deque[tuple[bytes, asyncio.Future[None]]] = collections.deque()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, data: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((data, future))
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._drain())
        await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._queue:
            batch = list(self._queue)
            self._queue.clear()
            try:
                await self._write(b"".join(data for data, _ in batch))
            except Exception as error:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)


class TreeSandbox(RunnerProcess):
    """One cloud sandbox ready for a tree: created, the runner uploaded, its fork server and
    relay started and answering. A :class:`RunnerProcess` so that the warm pool can hold it;
    it serves one tree and is then destroyed. A fork server or relay that ended is started
    again in the same sandbox by :meth:`fork_server`."""

    close_order = 10  # at exit: after the sessions that use it

    def __init__(
        self, owner: RelayedSandboxEnvironment, max_runners: int, startup_timeout: float
    ) -> None:
        self.owner = owner
        self.max_runners = max_runners
        self.startup_timeout = startup_timeout
        #: the relay every runner of the sandbox reaches the broker through
        self.relay: HostRelay | None = None
        self._server: StreamForkServer | None = None
        self._processes: list[RemoteProcess] = []
        self._pump: asyncio.Task[None] | None = None
        self._bundle: str | None = None
        self._killed = False
        self._earlier_forks = 0

    @classmethod
    async def start(
        cls, owner: RelayedSandboxEnvironment, max_runners: int, startup_timeout: float
    ) -> TreeSandbox:
        """Creates ``owner``'s sandbox and starts its fork server and relay; whatever fails
        (or is cancelled) on the way, nothing half-made stays behind."""
        sandbox = cls(owner, max_runners, startup_timeout)
        cleanup.track(sandbox)
        try:
            await owner._create_sandbox()
            await sandbox._start_processes()
        except BaseException:
            with contextlib.suppress(Exception):
                await sandbox.kill()
            raise
        return sandbox

    @property
    def sandbox_dir(self) -> str:
        """The sandbox's directory for the runner, the relay's socket and the sessions' work
        directories (its own, even where stand-ins share one file system)."""
        return self.owner.sandbox_dir

    @property
    def what(self) -> str:
        return f"the RLM tree's {self.owner.name} sandbox"

    @property
    def running(self) -> bool:
        """Whether its fork server and relay both run."""
        server, relay = self._server, self.relay
        return (
            server is not None
            and server.ended is None
            and relay is not None
            and not relay.task.done()
        )

    def exit_code(self) -> int | None:
        return None if self.running else -1

    async def fork_server(self) -> StreamForkServer:
        """The running fork server (with the relay, started again when either ended)."""
        if self._killed:
            raise SandboxStartError(f"{self.what} is closed")
        if not self.running:
            await self._stop_processes()
            await self._start_processes()
        assert self._server is not None
        return self._server

    async def _start_processes(self) -> None:
        owner = self.owner
        if self._bundle is None:
            bundle = f"{self.sandbox_dir}/runner.pyz"
            await owner._upload(bundle, runner_bundle())
            self._bundle = bundle
        start = [owner.python, "-I", "-u", self._bundle]
        relay_process = await owner._exec(
            [*start, "--relay-stdio", f"{self.sandbox_dir}/relay.sock"]
        )
        self._processes.append(relay_process)
        assert owner.broker.socket_path is not None
        self.relay = relay = HostRelay(relay_process, owner.broker.socket_path)
        server_process = await owner._exec([*start, "--fork-server-stdio", self.sandbox_dir])
        self._processes.append(server_process)
        self._server = server = StreamForkServer(
            BatchedWriter(server_process.write), max_runners=self.max_runners, what=owner.name
        )
        self._pump = asyncio.ensure_future(self._read_reports(server, server_process))
        relay_ready = asyncio.ensure_future(relay.ready.wait())
        try:
            await asyncio.wait_for(server.ready.wait(), self.startup_timeout)
            await asyncio.wait(
                {relay_ready, relay.task},
                timeout=self.startup_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except TimeoutError:
            server.end("no answer")
        finally:
            relay_ready.cancel()
        failed = [
            what
            for what, ok in (
                ("fork server", server.ended is None),
                ("relay", relay.ready.is_set() and not relay.task.done()),
            )
            if not ok
        ]
        if failed:
            details = "; ".join(
                f"{what} stderr: {text[-1000:]}"
                for what, process in zip(("relay", "fork server"), self._processes, strict=True)
                if (text := process.diagnostics().strip())
            )
            await self._stop_processes()
            raise SandboxStartError(
                f"the {' and the '.join(failed)} of {self.what} did not start within "
                f"{self.startup_timeout:g}s" + (f"; {details}" if details else "")
            )

    async def _read_reports(self, server: StreamForkServer, process: RemoteProcess) -> None:
        """Feeds the fork server's stdout to ``server`` until it ends (re-attaching where the
        provider can), then ends ``server`` with what the process said."""
        problem = ""
        try:
            while True:
                async with contextlib.aclosing(process.output()) as output:
                    async for data in output:
                        server.feed(data)
                if process.exit_code() is not None or not await process.reattach():
                    break
        except (SandboxError, OSError) as error:
            problem = f": {error}"
        finally:
            details = process.diagnostics().strip()[-1500:]
            server.end(
                f"the fork server of {self.what} ended{problem}"
                + (f"; its stderr: {details}" if details else "")
            )

    @property
    def forks(self) -> int:
        """Runners forked in this sandbox so far, by any of its fork servers."""
        return self._earlier_forks + (self._server.forked if self._server is not None else 0)

    async def _stop_processes(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            self._earlier_forks += server.forked
            server.end(f"{self.what} was closed")
        relay, self.relay = self.relay, None
        pump, self._pump = self._pump, None
        processes, self._processes = self._processes, []
        if pump is not None:
            pump.cancel()
            await asyncio.wait({pump}, timeout=5)
        if relay is not None:
            await relay.aclose()
        await asyncio.gather(*(process.kill() for process in processes), return_exceptions=True)

    async def kill(self) -> None:
        """Ends every runner, the fork server and the relay, and destroys the sandbox (at the
        provider: it is billed no longer)."""
        if self._killed:
            return
        self._killed = True
        cleanup.untrack(self)
        try:
            await self._stop_processes()
        finally:
            await self.owner.aclose()

    async def aclose(self) -> None:
        await self.kill()


class RelayedTree:
    """The one cloud sandbox of an RLM tree (``child_sandbox="shared"``): a resource of the
    tree (of its broker scope), made by the tree's first session and destroyed when the tree
    closes. The sandbox is started then, or taken from the warm ``pool`` (which started it
    ahead, for this tree only); each comes with an owner of its own, a copy of ``template``."""

    close_order = 10  # at exit: after the sessions that use it

    def __init__(
        self, template: RelayedSandboxEnvironment, key: Hashable, pool: WarmPool | None = None
    ) -> None:
        self.template = template
        #: what makes two trees' sandboxes interchangeable (the warm pool's key)
        self.key = key
        self.pool = pool
        self.max_runners = template.max_live_runners
        self.startup_timeout = template.startup_timeout
        #: the tree's sandbox once its first session started
        self.sandbox: TreeSandbox | None = None
        self._pooled = False
        self._workdirs = itertools.count(1)
        self._lock = asyncio.Lock()
        self._closed = False

    def _current(self) -> TreeSandbox:
        if self.sandbox is None:
            raise SandboxError("the RLM tree's sandbox is not started")
        return self.sandbox

    @property
    def owner(self) -> RelayedSandboxEnvironment:
        """What holds the provider's handle of the tree's sandbox (its files go through it)."""
        return self._current().owner

    @property
    def relay(self) -> HostRelay | None:
        return None if self.sandbox is None else self.sandbox.relay

    @property
    def sandbox_dir(self) -> str:
        """The tree's directory in its sandbox."""
        return self._current().sandbox_dir

    def next_workdir(self) -> str:
        """A work directory no other session of this sandbox has had."""
        return f"{self.sandbox_dir}/s{next(self._workdirs)}"

    async def open(self) -> None:
        """Gets the tree its sandbox and starts its fork server and relay, unless they run."""
        async with self._lock:
            await self._ensure()

    async def runner(self) -> StreamRunnerProcess:
        """A runner of this tree's sandbox (forked when its bootstrap is sent)."""
        async with self._lock:
            server = await self._ensure()
        return StreamRunnerProcess(server, self.startup_timeout, self)

    def _start(self) -> Awaitable[TreeSandbox]:
        return TreeSandbox.start(
            self.template.sandbox_owner(), self.max_runners, self.startup_timeout
        )

    async def _ensure(self) -> StreamForkServer:
        if self._closed:
            raise SandboxStartError("the RLM tree's sandbox is closed")
        if self.sandbox is None:
            cleanup.track(self)
            if self.pool is not None:
                return await self._from_pool(self.pool)
            self.sandbox = await self._start()
        return await self.sandbox.fork_server()

    async def _from_pool(self, pool: WarmPool) -> StreamForkServer:
        """The fork server of a sandbox from the warm pool. One the provider ended while it
        waited (its own idle timeout, before the pool noticed) is destroyed, its place given
        back, and the next one taken: at most ``POOL_TAKES`` of them."""
        for take in range(1, POOL_TAKES + 1):
            taken = await pool.acquire(self.key, self._start, self.startup_timeout)
            assert isinstance(taken, TreeSandbox)
            self.sandbox, self._pooled = taken, True
            try:
                return await taken.fork_server()
            except SandboxError:
                if take == POOL_TAKES:
                    raise
                logger.warning("%s from the warm pool did not answer; taking another", taken.what)
                await self._drop_sandbox()
        raise AssertionError("unreachable")

    async def drop_unused_pooled_sandbox(self) -> bool:
        """Drops the tree's sandbox if it came from the warm pool and no runner was ever forked
        in it: the first session failed to start there, so the provider may have ended it
        while it waited, after the pool last looked. True when dropped (the next session start
        takes another)."""
        async with self._lock:
            sandbox = self.sandbox
            if sandbox is None or not self._pooled or sandbox.forks:
                return False
            logger.warning(
                "%s from the warm pool failed its first session; taking another", sandbox.what
            )
            await self._drop_sandbox()
            return True

    async def aclose(self) -> None:
        """Ends every session's runner, the fork server and the relay, and destroys the
        sandbox (its place in the warm pool is free again)."""
        self._closed = True
        cleanup.untrack(self)
        async with self._lock:
            await self._drop_sandbox()

    async def _drop_sandbox(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is None:
            return
        try:
            await sandbox.kill()
        finally:
            if self._pooled and self.pool is not None:
                self._pooled = False
                self.pool.release()
