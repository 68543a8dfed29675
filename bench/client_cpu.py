"""Host CPU per call of the OpenAI-compatible client alone: ``python -m bench.client_cpu``.

Runs the scripted server in a process of its own (so that its CPU is not counted), then in this
process, on one event loop: one warm-up burst, then ``--rounds`` bursts of ``-n`` concurrent
calls, each burst timed with ``time.process_time``. ``--client sdk`` (default) measures
``create_client("openai").acomplete``, the broker's own path; ``--client raw`` measures raw
aiohttp POSTs of the same request on the same loop (the floor's client). ``--top N`` adds a
cProfile of the timed bursts (its own overhead inflates the CPU figures; compare runs without it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .profile_batched import served

Call = Callable[[], Awaitable[object]]


async def _sdk_caller(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    from rlm.broker.clients import create_client

    client = create_client("openai", {"model_name": "m", "base_url": base_url, "api_key": "k"})
    messages = [{"role": "user", "content": "SUBCALL item"}]

    async def call() -> object:
        return await client.acomplete(messages)

    return call, client.aclose


async def _raw_caller(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), headers={"Authorization": "Bearer k"}
    )
    url = base_url.rstrip("/") + "/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "SUBCALL item"}]}

    async def call() -> object:
        async with session.post(url, json=body) as response:
            response.raise_for_status()
            return await response.json()

    return call, session.close


async def _measure(
    base_url: str, client: str, n: int, rounds: int, profile: cProfile.Profile | None
) -> list[float]:
    make = _sdk_caller if client == "sdk" else _raw_caller
    call, close = await make(base_url)
    try:
        await asyncio.gather(*(call() for _ in range(n)))  # connections, imports, platform
        per_call = []
        for _ in range(rounds):
            if profile is not None:
                profile.enable()
            cpu = time.process_time()
            await asyncio.gather(*(call() for _ in range(n)))
            per_call.append((time.process_time() - cpu) * 1000 / n)
            if profile is not None:
                profile.disable()
        return per_call
    finally:
        await close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_cpu", description=__doc__)
    parser.add_argument("--client", choices=("sdk", "raw"), default="sdk")
    parser.add_argument("-n", type=int, default=64, help="concurrent calls per burst (default 64)")
    parser.add_argument("--rounds", type=int, default=10, help="timed bursts (default 10)")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per call (0.05)")
    parser.add_argument("--top", type=int, default=0, help="cProfile rows to print (0: off)")
    args = parser.parse_args(argv)
    code = "```repl\nanswer['content'] = 'unused'\nanswer['ready'] = True\n```"
    profile = cProfile.Profile() if args.top else None
    with served(code, args.latency) as base_url:
        per_call = asyncio.run(_measure(base_url, args.client, args.n, args.rounds, profile))
    if profile is not None:
        stream = io.StringIO()
        stats = pstats.Stats(profile, stream=stream)
        stats.sort_stats("tottime").print_stats(args.top)
        stats.sort_stats("cumulative").print_stats(args.top)
        print(stream.getvalue())
    result: dict[str, Any] = {
        "client": args.client,
        "n": args.n,
        "cpu_ms_per_call_median": round(statistics.median(per_call), 3),
        "cpu_ms_per_call_min": round(min(per_call), 3),
        "cpu_ms_per_call_max": round(max(per_call), 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
