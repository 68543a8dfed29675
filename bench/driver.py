"""Runs one workload in THIS interpreter and prints a JSON result line.

The same file is executed by our interpreter and by the reference package's virtual environment:
both expose ``from rlm import RLM`` with the same public arguments, so the workload code is
identical for both systems. Usage: ``python driver.py WORKLOAD '{"base_url": ..., ...}'``.
"""

from __future__ import annotations

import json
import resource
import sys
import time


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


def context_load(params: dict) -> dict:
    """A context of `chars` characters; time to the answer of a first trivial cell."""
    text = "x" * (params["chars"] - 6) + "NEEDLE"
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rlm = make_rlm(params, max_iterations=3)
    try:
        started = time.perf_counter()
        result = rlm.completion(text, root_prompt="load")
        elapsed = time.perf_counter() - started
    finally:
        close(rlm)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": elapsed,
        "response": result.response,
        "peak_rss_mb": peak_rss / 1024,
        "baseline_rss_mb": base_rss / 1024,
    }


WORKLOADS = {
    "iteration_overhead": iteration_overhead,
    "batched": batched,
    "single_call": single_call,
    "context_load": context_load,
}


if __name__ == "__main__":
    name, raw = sys.argv[1], sys.argv[2]
    outcome = WORKLOADS[name](json.loads(raw))
    print("BENCH-RESULT " + json.dumps(outcome), flush=True)
