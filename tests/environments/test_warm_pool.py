"""WarmPool on its own, with stand-in sandboxes: the waiting count, the bound on sandboxes alive
at once, and the error when none frees in time (no process or container is started)."""

from __future__ import annotations

import asyncio

import pytest

from rlm.environments.base import RunnerProcess, WarmPool
from rlm.errors import ConfigurationError, SandboxStartError


class FakeSandbox(RunnerProcess):
    def __init__(self) -> None:
        self.killed = False

    async def kill(self) -> None:
        self.killed = True

    def exit_code(self) -> int | None:
        return 0 if self.killed else None


def starter(made: list[FakeSandbox]):
    async def start() -> RunnerProcess:
        await asyncio.sleep(0.01)
        made.append(FakeSandbox())
        return made[-1]

    return start


def test_the_pool_never_has_more_than_max_live_sandboxes_alive() -> None:
    async def scenario() -> None:
        made: list[FakeSandbox] = []
        pool = WarmPool(1, max_live=2)
        first = await pool.acquire("k", starter(made), timeout=5)
        second = await pool.acquire("k", starter(made), timeout=5)
        third = asyncio.ensure_future(pool.acquire("k", starter(made), timeout=5))
        await asyncio.sleep(0.1)
        assert not third.done()  # two alive: the third waits
        assert pool.live == 2 and pool.waiting == 0
        await first.kill()
        pool.release()
        got = await asyncio.wait_for(third, 5)
        assert got is not first and got is not second
        await asyncio.sleep(0.1)
        assert pool.peak_live == 2 and pool.live == 2
        await pool.aclose()
        assert pool.live == 2  # the two still lent out are their sessions' to kill

    asyncio.run(scenario())


def test_a_start_past_the_bound_fails_with_a_clear_error_after_its_timeout() -> None:
    async def scenario() -> None:
        pool = WarmPool(0, max_live=1)
        await pool.acquire("k", starter([]), timeout=1)
        with pytest.raises(SandboxStartError, match="raise max_sandboxes"):
            await pool.acquire("k", starter([]), timeout=0.2)
        await pool.aclose()

    asyncio.run(scenario())


def test_concurrent_fills_start_only_what_is_missing_and_waiting_ones_are_handed_out() -> None:
    async def scenario() -> None:
        made: list[FakeSandbox] = []
        pool = WarmPool(2)
        await asyncio.gather(*(pool.fill("k", starter(made)) for _ in range(4)))
        assert len(made) == 2 and pool.waiting == 2
        taken = await pool.acquire("k", starter(made), timeout=5)
        assert taken in made and pool.waiting == 1
        await pool.aclose()
        assert all(s.killed for s in made if s is not taken)

    asyncio.run(scenario())


def test_sizes_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="max_sandboxes"):
        WarmPool(1, max_live=0)
    with pytest.raises(ConfigurationError, match="pool_size"):
        WarmPool(0)
