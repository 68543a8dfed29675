"""Rollouts per minute of the verifiers harness (``rlm_oolong``) for N concurrent rollouts.

    .venv-verifiers/bin/python -m bench.verifiers_rollouts --concurrency 1,8 --environments local,docker

Each rollout is one RLM completion (one root turn that counts in code and makes one
``llm_query``, against the scripted LM with no latency) on a 2000-record context, through
verifiers' interception endpoint, scored by the OOLONG reward. Reported: wall time of the
evaluation, rollouts per minute, and the host process's peak thread count (``Threads`` of
``/proc/self/status``, sampled every 10 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import threading
import time

import verifiers.v1 as vf
from verifiers.v1.utils.loaders import load_environment

from rlm.integrations.oolong import OolongTasksetConfig
from rlm.integrations.verifiers import RLMSandboxHarnessConfig
from rlm.testing import ScriptedLMServer
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


async def evaluate(environment: str, rollouts: int, base_url: str) -> tuple[float, float]:
    config = vf.SingleAgentEnvConfig(
        taskset=OolongTasksetConfig(num_tasks=rollouts, records=2000),
        agent=vf.AgentConfig(
            runtime=vf.SubprocessConfig(),
            harness=RLMSandboxHarnessConfig(environment=environment, max_iterations=3),
        ),
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
        raise RuntimeError(f"{environment}: not every rollout succeeded: {episodes}")
    return seconds, sum(rewards) / len(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--environments", default="local,docker")
    args = parser.parse_args()
    os.environ.setdefault("RLM_BENCH_KEY", "bench")
    print(
        "| environment | concurrent rollouts | wall s | rollouts/min | mean reward | peak threads |"
    )
    print("|---|---|---|---|---|---|")
    with ScriptedLMServer(script) as server:
        for environment in args.environments.split(","):
            for n in (int(x) for x in args.concurrency.split(",")):
                peak = [threads_now()]
                done = threading.Event()

                def sample(peak: list[int] = peak, done: threading.Event = done) -> None:
                    while not done.wait(0.01):
                        peak[0] = max(peak[0], threads_now())

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                seconds, reward = asyncio.run(evaluate(environment, n, server.base_url))
                done.set()
                sampler.join()
                print(
                    f"| {environment} | {n} | {seconds:.2f} | {60 * n / seconds:.0f} | "
                    f"{reward:.2f} | {peak[0]} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
