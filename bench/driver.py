"""Runs one workload in THIS interpreter and prints a JSON result line.

The same file is executed by our interpreter and by the reference package's virtual environment:
both expose ``from rlm import RLM`` with the same public arguments, so the workload code is
identical for both systems. Usage: ``python driver.py WORKLOAD '{"base_url": ..., ...}'``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from typing import Any


def make_rlm(params: dict, **kwargs):
    from rlm import RLM

    return RLM(
        backend="openai",
        backend_kwargs={
            "model_name": "bench-model",
            "base_url": params["base_url"],
            "api_key": "bench",
        },
        environment=params.get("environment", "local"),
        environment_kwargs=params.get("environment_kwargs") or {},
        **kwargs,
    )


def close(rlm) -> None:
    closer = getattr(rlm, "close", None)
    if closer is not None:
        closer()


def iteration_overhead(params: dict) -> dict:
    """Per-iteration cost against a 0 ms LM, two ways: the whole completion's wall time divided by
    its N iterations (what a user pays, start-up included), and the marginal cost
    (T(N iterations) - T(1 iteration)) / (N - 1), where one-time costs cancel out."""
    iterations = params["iterations"]
    rlm = make_rlm(params, max_iterations=iterations + 5)
    try:
        rlm.completion("warm-up context", root_prompt="BENCH-WARMUP")  # imports, broker start
        started = time.perf_counter()
        rlm.completion("tiny context", root_prompt="BENCH-ONE")
        one = time.perf_counter() - started
        started = time.perf_counter()
        result = rlm.completion("tiny context", root_prompt="BENCH-MANY")
        many = time.perf_counter() - started
    finally:
        close(rlm)
    return {
        "one_iteration_seconds": one,
        "many_seconds": many,
        "per_iteration": many / iterations,
        "marginal_per_iteration": (many - one) / (iterations - 1),
        "response": result.response,
    }


def batched(params: dict) -> dict:
    """One cell calls llm_query_batched(n prompts); the cell reports its own wall time."""
    rlm = make_rlm(params, max_iterations=3)
    try:
        result = rlm.completion("batch context", root_prompt="batch")
    finally:
        close(rlm)
    return {"cell_seconds": float(result.response)}


def single_call(params: dict) -> dict:
    """One cell times `repeats` sequential llm_query calls (a callback round trip each)."""
    rlm = make_rlm(params, max_iterations=3)
    try:
        result = rlm.completion("single context", root_prompt="single")
    finally:
        close(rlm)
    return {"samples": json.loads(result.response)}


def is_runner_command(cmdline: bytes) -> bool:
    """Our local runner: started from its zipapp file (``rlm-runner-*.pyz``) or its sealed copy
    (``-X rlm_runner``). (Not imported from rlm: this also runs in the reference's venv.)"""
    return b"rlm-runner-" in cmdline or b"rlm_runner" in cmdline.split(b"\0")


class ChildPeakRSS:
    """Polls the peak RSS (``VmHWM``) of our runner processes during a run: our children, and
    their children (runners forked by the local environment's fork server).

    ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` cannot answer this: a child's high-water mark
    survives ``exec``, so it starts at the host's RSS at fork time. ``VmHWM`` belongs to the new
    address space and is monotonic, so the last reading before the child exits is its peak.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_kb: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ChildPeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _children(self, pid: int | str = "self", depth: int = 2) -> list[int]:
        pids: list[int] = []
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return pids
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    pids += [int(p) for p in handle.read().split()]
            except OSError:
                continue
        if depth > 1:
            pids += [
                grandchild
                for child in list(pids)
                for grandchild in self._children(child, depth - 1)
            ]
        return pids

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self._children():
                try:
                    # Only our runner (a zipapp named rlm-runner-*.pyz), and only once it has
                    # exec'd: between fork and exec a child's VmHWM is still the host's.
                    with open(f"/proc/{pid}/cmdline", "rb") as handle:
                        if not is_runner_command(handle.read()):
                            continue
                    with open(f"/proc/{pid}/status") as handle:
                        for line in handle:
                            if line.startswith("VmHWM:"):
                                kb = int(line.split()[1])
                                self.peak_kb[pid] = max(kb, self.peak_kb.get(pid, 0))
                except (OSError, ValueError):
                    continue

    @property
    def max_mb(self) -> float | None:
        return max(self.peak_kb.values()) / 1024 if self.peak_kb else None


def context_load(params: dict) -> dict:
    """A context of `chars` characters; time to the answer of a first trivial cell.

    Peak RSS is this (host) process's. ``runner_peak_rss_mb`` is the largest child's ``VmHWM``
    (our local runner; None when the REPL runs in-process, as in the reference, or in a
    container); ``children_maxrss_mb`` is ``RUSAGE_CHILDREN`` after close, kept for comparison.
    """
    text = "x" * (params["chars"] - 6) + "NEEDLE"
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rlm = make_rlm(params, max_iterations=3)
    try:
        with ChildPeakRSS() as children:
            started = time.perf_counter()
            result = rlm.completion(text, root_prompt="load")
            elapsed = time.perf_counter() - started
    finally:
        close(rlm)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "seconds": elapsed,
        "response": result.response,
        "peak_rss_mb": peak_rss / 1024,
        "baseline_rss_mb": base_rss / 1024,
        "runner_peak_rss_mb": children.max_mb,
        "children_maxrss_mb": children_rss / 1024,
    }


def fanout(params: dict) -> dict:
    """Depth 2: the root's cell fans out to `rlm_query_batched` children (see bench/scripts.py);
    the cell reports its own wall time and how many children answered."""
    rlm = make_rlm(
        params,
        max_depth=2,
        max_iterations=3,
        max_concurrent_subcalls=params.get("max_concurrent_subcalls", 16),
    )
    try:
        started = time.perf_counter()
        result = rlm.completion("fan-out context", root_prompt="FANOUT-ROOT")
        total = time.perf_counter() - started
    finally:
        close(rlm)
    outcome = json.loads(result.response)
    return {"cell_seconds": outcome["elapsed"], "children_ok": outcome["ok"], "seconds": total}


class PeakThreads:
    """Polls this process's OS thread count (``Threads:`` in ``/proc/self/status``: Python
    threads and the C threads of gRPC and the SDKs alike) and keeps the peak."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakThreads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while True:
            with open("/proc/self/status") as handle:
                for line in handle:
                    if line.startswith("Threads:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            if self._stop.wait(self.interval):
                return


def children(params: dict) -> dict:
    """Depth 2: the root's cell runs ``rlm_query_batched`` over many children, each making one
    ``llm_query`` (see ``bench/scripts.py:fanout_script``); also counts the sandboxes our side
    started and the host process's peak thread count."""
    starts = _record_sandbox_starts()
    containers = _record_container_creates()
    try:
        from rlm.environments.base import SandboxEnvironment  # noqa: F401  (ours only)

        ours = True
    except ImportError:
        ours = False
    rlm = make_rlm(
        params,
        max_depth=2,
        max_iterations=3,
        max_concurrent_subcalls=params.get("max_concurrent_subcalls", 16),
    )
    try:
        with PeakThreads() as threads:
            result = rlm.completion("children context", root_prompt="FANOUT-ROOT")
    finally:
        close(rlm)
    outcome = json.loads(result.response)
    return {
        "cell_seconds": outcome["elapsed"],
        "children_ok": outcome["ok"],
        "sandboxes": len(starts) if ours else None,
        "containers": len(containers),
        "peak_threads": threads.peak,
    }


def _record_container_creates() -> list[str]:
    """Containers created through docker-py in this process (what a sandbox costs on docker:
    one per tree when sessions share it, one per session otherwise); none elsewhere."""
    created: list[str] = []
    try:
        from docker.models.containers import ContainerCollection
    except ImportError:
        return created
    original = ContainerCollection.create

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        container = original(self, *args, **kwargs)
        created.append(container.id)
        return container

    ContainerCollection.create = create
    return created


def _record_sandbox_starts() -> list[float]:
    """Our SandboxEnvironment records `startup_seconds`; collect them (no-op for the reference)."""
    starts: list[float] = []
    try:
        from rlm.environments.base import SandboxEnvironment
    except ImportError:
        return starts
    original = SandboxEnvironment.start

    async def start(self) -> None:
        await original(self)
        starts.append(self.startup_seconds)

    SandboxEnvironment.start = start
    return starts


def cold_start(params: dict) -> dict:
    """In a fresh interpreter: `import rlm`, then `RLM(...)` + a 1-iteration completion against a
    0 ms LM (cold: broker and first sandbox), then the same again (warm: a new sandbox per
    completion, everything else up; from a warm pool when `environment_kwargs` ask for one)."""
    started = time.perf_counter()
    import rlm  # noqa: F401  (timed: the import is part of a cold start)

    imported = time.perf_counter()
    starts = _record_sandbox_starts()
    rlm_ = make_rlm(params, max_iterations=2)
    try:
        rlm_.completion("cold context", root_prompt="cold")
        first = time.perf_counter()
        time.sleep(params.get("settle_seconds", 0))  # lets a warm pool refill
        first += params.get("settle_seconds", 0)
        rlm_.completion("warm context", root_prompt="warm")
        second = time.perf_counter()
    finally:
        close(rlm_)
    return {
        "import_seconds": imported - started,
        "first_seconds": first - imported,
        "warm_seconds": second - first,
        "sandbox_start_seconds": starts,
    }


def tree_starts(params: dict) -> dict:
    """Two RLM trees one after the other on one SandboxPool, as rollouts run them, each a
    1-iteration completion against a 0 ms LM: the `startup_seconds` of each tree's root
    session. With `pool_size` in `environment_kwargs` the second tree's sandbox was made ready
    while the first ran (`settle_seconds` after the first tree lets that finish)."""
    from rlm import RLM, SandboxPool

    starts = _record_sandbox_starts()
    kwargs = dict(params.get("environment_kwargs") or {})
    with SandboxPool(params.get("environment", "local"), **kwargs) as pool:
        for tree in range(2):
            backend = {"model_name": "bench-model", "base_url": params["base_url"], "api_key": "b"}
            with RLM(backend_kwargs=backend, sandbox_pool=pool, max_iterations=2) as rlm_:
                rlm_.completion(f"tree {tree} context", root_prompt="tree")
            if tree == 0:
                time.sleep(params.get("settle_seconds", 0))
    return {"tree_start_seconds": starts}


def raw_floor(params: dict) -> dict:
    """The floor of LM fan-out: ``n`` concurrent raw aiohttp POSTs of one chat completion each,
    from this fresh process to the same server (keep-alive, TCP_NODELAY, no connection limit),
    after one warm-up request; no sandbox, broker or SDK in the way."""
    import asyncio

    import aiohttp

    url = params["base_url"].rstrip("/") + "/chat/completions"
    body = {"model": "bench-model", "messages": [{"role": "user", "content": params["prompt"]}]}

    async def run() -> tuple[float, float]:
        connector = aiohttp.TCPConnector(limit=0)
        headers = {"Authorization": "Bearer bench"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            async def post() -> None:
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    await response.json()

            await post()
            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(post() for _ in range(params["n"])))
            return time.perf_counter() - started, time.process_time() - cpu

    seconds, cpu = asyncio.run(run())
    return {"seconds": seconds, "cpu_seconds": cpu}


WORKLOADS = {
    "raw_floor": raw_floor,
    "iteration_overhead": iteration_overhead,
    "batched": batched,
    "single_call": single_call,
    "context_load": context_load,
    "fanout": fanout,
    "children": children,
    "cold_start": cold_start,
    "tree_starts": tree_starts,
}


if __name__ == "__main__":
    name, raw = sys.argv[1], sys.argv[2]
    outcome = WORKLOADS[name](json.loads(raw))
    print("BENCH-RESULT " + json.dumps(outcome), flush=True)
