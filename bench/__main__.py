"""``python -m bench``: our rlm and the reference ``rlms`` on identical scripted workloads.

Both systems run the same driver (``bench/driver.py``) in their own interpreter against one
scripted OpenAI-compatible server in this process, so they execute identical code blocks and see
identical LM latencies. Each figure is the median of ``--repeats`` fresh processes (min and max
alongside); the ratio is ours / reference from the same run. ``--environments`` repeats our side
per sandbox provider (the provider comparison); the reference runs in its local REPL only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from rlm.testing import ScriptedLMServer

from . import report, standins, targets
from .providers import probe_all
from .reference import reference_python
from .suite import WORKLOADS, Suite, SuiteConfig


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--repeats", type=int, help="fresh processes per figure (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (CI smoke)")
    parser.add_argument("--no-reference", action="store_true", help="measure ours only")
    parser.add_argument(
        "--environment", help="one environment for ours (kept for compatibility; see below)"
    )
    parser.add_argument(
        "--environments",
        default="local,docker",
        help="comma-separated environments to compare (skipped with a reason when unavailable)",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="check the documented targets (bench/targets.py) and exit 1 when one is missed",
    )
    parser.add_argument("--out", default="bench/out", help="folder for results.md/.json/.png")
    parser.add_argument("--load-sizes", help="comma-separated context sizes in characters")
    parser.add_argument(
        "--batch-sizes", help="comma-separated llm_query_batched sizes (default 8,64,256)"
    )
    parser.add_argument(
        "--standins",
        action="store_true",
        help="run the cloud providers against their local stand-ins when neither credentials "
        "nor a stand-in are configured (e2b and prime in their SDK venvs, .ci/sdk-venvs.sh)",
    )
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help=f"comma-separated: {', '.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--environment-kwargs",
        help="JSON object added to every environment's environment_kwargs (ours only), e.g. "
        '\'{"pids_limit": 1024}\' or \'{"env": {"RLM_SESSION_PROXY": "0"}}\' (local)',
    )
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> SuiteConfig:
    config = SuiteConfig.quick() if args.quick else SuiteConfig()
    if args.repeats is not None:
        config.repeats = args.repeats
    if args.load_sizes:
        config.load_sizes = [int(float(x)) for x in args.load_sizes.split(",")]
    if args.batch_sizes:
        config.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    only = tuple(w.strip() for w in args.only.split(",") if w.strip())
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        raise SystemExit(f"unknown workload(s) {sorted(unknown)}; choose from {WORKLOADS}")
    config.only = only
    if args.environment_kwargs:
        extra = json.loads(args.environment_kwargs)
        if not isinstance(extra, dict):
            raise SystemExit("--environment-kwargs must be a JSON object")
        config.environment_kwargs = extra
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_from(args)
    names = [args.environment] if args.environment else args.environments.split(",")
    names = [n.strip() for n in names if n.strip()]
    systems = {"ours": sys.executable}
    if not args.no_reference:
        systems["reference"] = str(reference_python())
    with (
        standins.running(names if args.standins else []) as started,
        ScriptedLMServer() as server,
    ):
        providers = probe_all(names, started)
        for provider in providers:
            if not provider.runnable:
                print(f"bench: skipping {provider.name}: {provider.reason}", file=sys.stderr)
        measurements = Suite(config, systems, providers, server, started).run()
    out = pathlib.Path(args.out)
    written = report.write(out, measurements, providers, config.repeats, not args.no_reference)
    print((out / "results.md").read_text())
    print("wrote " + ", ".join(str(p) for p in written))
    if args.gate:
        lines, all_met = targets.check(measurements)
        print("\ntargets:\n" + "\n".join("  " + line for line in lines))
        if not all_met:
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
