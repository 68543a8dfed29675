"""``python -m bench``: our rlm and the reference ``rlms`` on identical scripted workloads.

Both systems run the same driver (``bench/driver.py``) in their own interpreter against one
scripted OpenAI-compatible server in this process, so they execute identical code blocks and see
identical LM latencies. Each figure is the median of ``--repeats`` fresh processes (min and max
alongside); the ratio is ours / reference from the same run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm.testing import RecordedRequest, Reply, ScriptedLMServer

from .reference import reference_python

DRIVER = pathlib.Path(__file__).resolve().parent / "driver.py"

FINISH = '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'


def _marker(request: RecordedRequest, marker: str) -> bool:
    return any(marker in str(m.get("content", "")) for m in request.messages)


def _iteration(request: RecordedRequest) -> int:
    return sum(1 for m in request.messages if m.get("role") == "assistant")


def iteration_script(iterations: int) -> Callable[[RecordedRequest], str]:
    def script(request: RecordedRequest) -> str:
        if _marker(request, "BENCH-WARMUP") or _marker(request, "BENCH-ONE"):
            return FINISH
        k = _iteration(request)
        if k < iterations - 1:
            return f"```repl\nx = {k}\n```"
        return FINISH

    return script


def batched_script(n: int, latency: float) -> Callable[[RecordedRequest], Reply | str]:
    code = (
        "```repl\nimport time\n"
        f'prompts = ["SUBCALL item %d" % i for i in range({n})]\n'
        "t0 = time.perf_counter()\nres = llm_query_batched(prompts)\n"
        "elapsed = time.perf_counter() - t0\n"
        'answer["content"] = str(elapsed)\nanswer["ready"] = True\n```'
    )

    def script(request: RecordedRequest) -> Reply | str:
        if request.prompt.startswith("SUBCALL"):
            return Reply("ok", delay=latency)
        return code

    return script


def single_call_script(repeats: int) -> Callable[[RecordedRequest], str]:
    code = (
        "```repl\nimport time, json\nsamples = []\n"
        f"for i in range({repeats}):\n"
        "    t0 = time.perf_counter()\n    llm_query('SUBCALL ping')\n"
        "    samples.append(time.perf_counter() - t0)\n"
        'answer["content"] = json.dumps(samples)\nanswer["ready"] = True\n```'
    )

    def script(request: RecordedRequest) -> str:
        return "pong" if request.prompt.startswith("SUBCALL") else code

    return script


LOAD_CODE = '```repl\nanswer["content"] = str(len(context))\nanswer["ready"] = True\n```'


@dataclass
class Measurement:
    name: str
    unit: str
    ours: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    note: str = ""

    @staticmethod
    def _fmt(values: list[float]) -> str:
        if not values:
            return "n/a"
        return f"{statistics.median(values):.4g} ({min(values):.3g}–{max(values):.3g})"

    def ratio(self) -> str:
        if not self.ours or not self.reference:
            return "n/a"
        return f"{statistics.median(self.ours) / statistics.median(self.reference):.2f}×"

    def row(self) -> str:
        return (
            f"| {self.name} | {self.unit} | {self._fmt(self.ours)} | "
            f"{self._fmt(self.reference)} | {self.ratio()} |"
        )


def run_driver(python: str, workload: str, params: dict[str, Any], timeout: float = 600) -> dict:
    completed = subprocess.run(
        [python, str(DRIVER), workload, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/tmp",
    )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    raise RuntimeError(
        f"{workload} failed under {python} (exit {completed.returncode}):\n"
        f"{completed.stderr[-3000:]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per figure")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (CI smoke)")
    parser.add_argument("--no-reference", action="store_true", help="measure ours only")
    parser.add_argument("--environment", default="local", help="environment for ours")
    parser.add_argument("--out", default="bench/out", help="folder for results.md / results.json")
    parser.add_argument("--load-sizes", help="comma-separated context sizes in characters")
    parser.add_argument(
        "--only",
        default="iteration,single,batched,load",
        help="comma-separated workloads: iteration, single, batched, load",
    )
    args = parser.parse_args(argv)

    repeats = 1 if args.quick else args.repeats
    iterations = 5 if args.quick else 30
    batch_sizes = [8] if args.quick else [8, 64, 256]
    load_sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000, 40_000_000, 100_000_000]
    if args.load_sizes:
        load_sizes = [int(float(x)) for x in args.load_sizes.split(",")]
    latency = 0.2

    systems: dict[str, str] = {"ours": sys.executable}
    if not args.no_reference:
        systems["reference"] = str(reference_python())
    env_params = {"environment": args.environment}
    measurements: list[Measurement] = []

    with ScriptedLMServer() as server:
        base = {"base_url": server.base_url, **env_params}

        def measure(
            m: Measurement, workload: str, params: dict, pick: Callable[[dict], float]
        ) -> None:
            for system, python in systems.items():
                for _ in range(repeats):
                    params_for = dict(params)
                    if system == "reference":
                        params_for["environment"] = "local"
                        params_for.pop("environment_kwargs", None)
                    result = run_driver(python, workload, params_for)
                    getattr(m, system).append(pick(result))
            measurements.append(m)
            print(m.row(), file=sys.stderr)

        only = set(args.only.split(","))
        if "iteration" in only:
            server.set_script(iteration_script(iterations))
            total = Measurement(
                f"root iteration overhead, 0 ms LM (completion of {iterations} iterations / {iterations})",
                "ms / iteration",
            )
            marginal = Measurement(
                "root iteration overhead, marginal: (T(N) - T(1)) / (N - 1)", "ms / iteration"
            )
            for system, python in systems.items():
                for _ in range(repeats):
                    params = {**base, "iterations": iterations}
                    if system == "reference":
                        params["environment"] = "local"
                    result = run_driver(python, "iteration_overhead", params)
                    getattr(total, system).append(result["per_iteration"] * 1000)
                    getattr(marginal, system).append(result["marginal_per_iteration"] * 1000)
            measurements += [total, marginal]
            print(total.row(), file=sys.stderr)
            print(marginal.row(), file=sys.stderr)
        if "single" in only:
            server.set_script(single_call_script(50))
            m = Measurement("llm_query round trip, 0 ms LM (p50 of 50)", "ms")
            measure(m, "single_call", base, lambda r: statistics.median(r["samples"]) * 1000)
        for n in batch_sizes if "batched" in only else []:
            server.set_script(batched_script(n, latency))
            measure(
                Measurement(f"llm_query_batched({n}), 200 ms LM", "× one call"),
                "batched",
                base,
                lambda r: r["cell_seconds"] / latency,
            )
        server.set_script(lambda request: LOAD_CODE)
        for chars in load_sizes if "load" in only else []:
            timing = Measurement(f"context {chars / 1e6:g}M chars: load + first cell", "s")
            rss = Measurement(f"context {chars / 1e6:g}M chars: peak host RSS", "MB")
            for system, python in systems.items():
                for _ in range(repeats):
                    params = {**base, "chars": chars}
                    if system == "reference":
                        params["environment"] = "local"
                    result = run_driver(python, "context_load", params)
                    if result["response"] != str(chars):
                        raise RuntimeError(f"{system} answered {result['response']!r} for {chars}")
                    getattr(timing, system).append(result["seconds"])
                    getattr(rss, system).append(result["peak_rss_mb"])
            measurements += [timing, rss]
            print(timing.row(), file=sys.stderr)
            print(rss.row(), file=sys.stderr)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"Python {platform.python_version()}, environment `{args.environment}` for ours, "
        f"reference `rlms` 0.1.3 (local REPL). Median of {repeats} fresh processes (min–max).\n\n"
        "| workload | unit | ours | reference | ours / reference |\n|---|---|---|---|---|\n"
    )
    table = header + "\n".join(m.row() for m in measurements) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps([m.__dict__ for m in measurements], indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
