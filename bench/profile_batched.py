"""Where the CPU of one ``llm_query_batched(n)`` goes: ``python -m bench.profile_batched``.

Runs, against one scripted server whose sub-calls answer after ``--latency`` seconds: the raw
floor (``n`` concurrent aiohttp POSTs from a fresh process, see ``bench/driver.py``), then one
RLM completion whose cell sends the batch. Prints the cell's wall time against the floor, the CPU
the runner process spent during the batch (``time.process_time`` inside the cell: all of the
runner's threads), the CPU the host spent (``getrusage`` of this process, broker and LM client),
and the host's cProfile top entries by own time. The aim is the CPU per call, not the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import multiprocessing
import pstats
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from rlm.broker.loop import background_loop
from rlm.testing import RecordedRequest, Reply, ScriptedLMServer

from .measure import run_driver

CELL = (
    "```repl\nimport time\n"
    'prompts = ["SUBCALL item %d" % i for i in range({n})]\n'
    "c0 = time.process_time()\nt0 = time.perf_counter()\n"
    "res = llm_query_batched(prompts)\n"
    "wall = time.perf_counter() - t0\ncpu = time.process_time() - c0\n"
    "assert res == ['ok'] * {n}, res[:3]\n"
    'answer["content"] = "%f %f" % (wall, cpu)\nanswer["ready"] = True\n```'
)


def _serve(code: str, latency: float, connection: Any) -> None:
    def script(request: RecordedRequest) -> Reply | str:
        if request.prompt.startswith("SUBCALL"):
            return Reply("ok", delay=latency)
        return code

    with ScriptedLMServer(script) as server:
        connection.send(server.base_url)
        connection.recv()  # until the parent is done


@contextlib.contextmanager
def served(code: str, latency: float) -> Iterator[str]:
    """The scripted server in a process of its own, so that its CPU is not counted as ours."""
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(code, latency, child), daemon=True
    )
    process.start()
    try:
        yield parent.recv()
    finally:
        parent.send("stop")
        process.join(10)


async def _call(function: Callable[[], object]) -> None:
    function()


def host_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_batched", description=__doc__)
    parser.add_argument("-n", type=int, default=64, help="prompts in the batch (default 64)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per sub-call")
    parser.add_argument("--environment", default="local")
    parser.add_argument("--top", type=int, default=25, help="cProfile rows to print (0: off)")
    args = parser.parse_args(argv)
    code = CELL.format(n=args.n)

    from rlm import RLM

    with served(code, args.latency) as base_url:
        params = {"base_url": base_url, "n": args.n, "prompt": "SUBCALL floor"}
        floor_run = run_driver(sys.executable, "raw_floor", params)
        floor = floor_run["seconds"]
        rlm = RLM(
            backend="openai",
            backend_kwargs={"model_name": "m", "base_url": base_url, "api_key": "k"},
            environment=args.environment,
            max_iterations=3,
        )
        try:
            rlm.completion("warm-up", root_prompt="warm-up")  # broker, sandbox, imports
            # The broker, the LM clients and the loop all run on the rlm-io thread.
            profile = cProfile.Profile()
            loop = background_loop()
            if args.top:
                asyncio.run_coroutine_threadsafe(_call(profile.enable), loop).result()
            cpu0, started = host_cpu(), time.perf_counter()
            result = rlm.completion("batch", root_prompt="batch")
            asyncio.run_coroutine_threadsafe(_call(profile.disable), loop).result()
            elapsed, cpu = time.perf_counter() - started, host_cpu() - cpu0
        finally:
            rlm.close()
    wall, runner_cpu = map(float, result.response.split())
    if args.top:
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(stream.getvalue())
    print(
        json.dumps(
            {
                "n": args.n,
                "floor_seconds": round(floor, 4),
                "cell_seconds": round(wall, 4),
                "ratio_to_floor": round(wall / floor, 3),
                "floor_cpu_ms_per_call": round(floor_run["cpu_seconds"] * 1000 / args.n, 3),
                "runner_cpu_ms_per_call": round(runner_cpu * 1000 / args.n, 3),
                "host_cpu_ms_per_call_whole_completion": round(cpu * 1000 / args.n, 3),
                "completion_seconds": round(elapsed, 4),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
