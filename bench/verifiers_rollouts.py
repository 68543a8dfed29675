"""Rollouts per minute of the verifiers harness (``rlm_oolong``) for N concurrent rollouts.

    .venv-verifiers/bin/python -m bench.verifiers_rollouts --concurrency 1,8 --environments local,docker

Each rollout is one RLM completion (one root turn that counts in code and makes one
``llm_query``, against the scripted LM with no latency) on a 2000-record context, through
verifiers' interception endpoint, scored by the OOLONG reward. Each concurrency runs ``--rounds``
evaluations of N rollouts in one process, as a training loop does: round 1 starts cold, later
rounds find the harness's shared broker and warm pool (``pool_size`` = ``max_sandboxes`` = N)
refilled (the bench waits up to 10 s for that between rounds). Reported per round: wall time,
rollouts per minute, brokers started, the most sandboxes alive at once (local: runner
processes; docker: our containers) and the host process's peak thread count (``Threads`` of
``/proc/self/status``); all sampled every 10 ms (sandboxes every 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import verifiers.v1 as vf
from verifiers.v1.utils.loaders import load_environment

from rlm.broker.server import BrokerServer
from rlm.integrations import verifiers as harness_module
from rlm.integrations.oolong import OolongTasksetConfig
from rlm.integrations.verifiers import RLMSandboxHarnessConfig
from rlm.testing import ScriptedLMServer
from rlm.testing.leaks import runner_pids
from rlm.testing.lm_server import RecordedRequest, content_text

QUESTION = re.compile(r"have the label '(\w+)'")


def script(request: RecordedRequest) -> str:
    text = "\n".join(content_text(m.get("content")) for m in request.messages)
    asked = QUESTION.search(text)
    if asked is None:
        return "ok"
    return (
        "```repl\n"
        f"n = sum(1 for line in context.splitlines() if 'label: {asked.group(1)} |' in line)\n"
        "llm_query('check ' + str(n))\n"
        "answer['content'] = str(n)\nanswer['ready'] = True\n```"
    )


def threads_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return threading.active_count()


def sandboxes_counter(environment: str) -> Callable[[], int]:
    """How many sandboxes of this process are alive now."""
    me = os.getpid()
    if environment != "docker":
        return lambda: len(runner_pids(parent=me))
    from rlm.environments.docker import LABEL, OWNER_PID_LABEL, docker_client

    client = docker_client()
    filters = {"label": [LABEL, f"{OWNER_PID_LABEL}={me}"]}
    return lambda: len(client.api.containers(all=True, quiet=True, filters=filters))


@contextmanager
def peak(count: Callable[[], int], every: float) -> Iterator[list[int]]:
    """Samples ``count()`` in a thread while in the block; yields ``[highest]``."""
    highest = [count()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(every):
            highest[0] = max(highest[0], count())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield highest
    finally:
        done.set()
        sampler.join()


def harness_config(environment: str, rollouts: int) -> RLMSandboxHarnessConfig:
    pool: dict[str, Any] = {}
    if "pool_size" in RLMSandboxHarnessConfig.model_fields:
        pool = {"pool_size": rollouts, "max_sandboxes": rollouts}
    return RLMSandboxHarnessConfig(environment=environment, max_iterations=3, **pool)


async def evaluate(
    harness: RLMSandboxHarnessConfig, rollouts: int, base_url: str
) -> tuple[float, float]:
    config = vf.SingleAgentEnvConfig(
        taskset=OolongTasksetConfig(num_tasks=rollouts, records=2000),
        agent=vf.AgentConfig(runtime=vf.SubprocessConfig(), harness=harness),
    )
    env = load_environment(config)
    ctx = vf.ModelContext(
        model="root-model",
        client=vf.EvalClientConfig(base_url=base_url, api_key_var="RLM_BENCH_KEY"),
    )
    async with env.serving():
        slots = [slot for task in env.taskset for slot in env.slots(task)]
        started = time.perf_counter()
        episodes = await asyncio.gather(*(env.run_slot(slot, ctx) for slot in slots))
        seconds = time.perf_counter() - started
    rewards = [t.rewards["count_accuracy"].score for e in episodes for t in e.traces]
    if len(rewards) != rollouts or not all(e.ok for e in episodes):
        raise RuntimeError(f"{harness.environment}: not every rollout succeeded: {episodes}")
    return seconds, sum(rewards) / len(rewards)


def wait_for_refill(harness: RLMSandboxHarnessConfig, timeout: float = 10.0) -> None:
    shared_pool = getattr(harness_module, "shared_pool", None)
    if shared_pool is None:
        return
    pool = shared_pool(harness)
    deadline = time.monotonic() + timeout
    while pool.waiting_sandboxes < harness.pool_size and time.monotonic() < deadline:
        time.sleep(0.05)


def close_pools() -> None:
    close = getattr(harness_module, "close_shared_pools", None)
    if close is not None:
        close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--environments", default="local,docker")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("RLM_BENCH_KEY", "bench")
    brokers: list[BrokerServer] = []
    original_start = BrokerServer.start

    async def counted_start(self: BrokerServer) -> None:
        brokers.append(self)
        await original_start(self)

    BrokerServer.start = counted_start  # type: ignore[method-assign]
    print(
        "| environment | concurrent rollouts | round | wall s | rollouts/min | mean reward "
        "| brokers started | peak sandboxes | peak threads |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    with ScriptedLMServer(script) as server:
        for environment in args.environments.split(","):
            sandboxes = sandboxes_counter(environment)
            for n in (int(x) for x in args.concurrency.split(",")):
                harness = harness_config(environment, n)
                for round_ in range(1, args.rounds + 1):
                    if round_ > 1:
                        wait_for_refill(harness)
                    brokers.clear()
                    with peak(threads_now, 0.01) as threads, peak(sandboxes, 0.05) as alive:
                        seconds, reward = asyncio.run(evaluate(harness, n, server.base_url))
                    print(
                        f"| {environment} | {n} | {round_} | {seconds:.2f} | "
                        f"{60 * n / seconds:.0f} | {reward:.2f} | {len(brokers)} | "
                        f"{alive[0]} | {threads[0]} |",
                        flush=True,
                    )
                close_pools()


if __name__ == "__main__":
    main()
