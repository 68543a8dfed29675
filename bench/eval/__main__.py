"""``python -m bench.eval``: score an RLM and the plain base model on RULER-style tasks.

With ``--base-url/--model/--api-key-env`` it runs against any OpenAI-compatible endpoint (model
quality). With ``--scripted`` it runs against the ScriptedLMServer's oracle model, which reads
the prompts with regexes: that checks the harness's plumbing, not any model's quality.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator

from .methods import Backend, Outcome, run_base, run_rlm
from .scoring import score
from .tasks import GENERATORS, Task, generate


def parse_size(text: str) -> int:
    """``32k`` -> 32_000 tokens, ``1m`` -> 1_000_000; plain numbers are tokens."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * scale)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__)
    parser.add_argument("--scripted", action="store_true", help="use the scripted oracle model")
    parser.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://host/v1")
    parser.add_argument("--model", default="oracle", help="model name at that endpoint")
    parser.add_argument(
        "--api-key-env", default="OPENAI_API_KEY", help="variable holding the API key"
    )
    parser.add_argument("--tasks", default=",".join(GENERATORS), help="comma-separated tasks")
    parser.add_argument("--sizes", default="32k,128k,1m", help="context sizes in tokens")
    parser.add_argument("--samples", type=int, default=3, help="items per task and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="rlm,base", help="rlm, base or both")
    parser.add_argument(
        "--window-tokens", type=int, default=128_000, help="the base model's window (truncation)"
    )
    parser.add_argument("--environment", default="local", help="the RLM's environment")
    parser.add_argument("--max-iterations", type=int, default=8)
    parser.add_argument("--price-in", type=float, help="USD per million input tokens")
    parser.add_argument("--price-out", type=float, help="USD per million output tokens")
    parser.add_argument("--out", default="bench/out/eval", help="folder for results.md/.json")
    return parser.parse_args(argv)


@contextlib.contextmanager
def backend_for(args: argparse.Namespace) -> Iterator[Backend]:
    """The endpoint to evaluate: a started oracle server, or the user's."""
    common = {
        "window_tokens": args.window_tokens,
        "price_in": args.price_in,
        "price_out": args.price_out,
    }
    if args.scripted:
        from rlm.testing import ScriptedLMServer

        from .oracle import oracle_script

        with ScriptedLMServer(oracle_script) as server:
            yield Backend(server.base_url, args.model, "scripted", **common)
        return
    if not args.base_url:
        raise SystemExit("pass --base-url (and --model, --api-key-env), or --scripted")
    key = os.environ.get(args.api_key_env)
    if not key:
        raise SystemExit(f"set {args.api_key_env} to the API key (or pick --api-key-env)")
    yield Backend(args.base_url, args.model, key, **common)


def summarise(rows: list[dict]) -> str:
    """One Markdown row per task, size and method: accuracy and mean spend per item."""
    groups: dict[tuple[str, int, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["task"], row["tokens"], row["method"])].append(row)
    lines = [
        "| task | tokens | method | accuracy | calls | input tokens | output tokens | "
        "cost (USD) | seconds | data | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, tokens, method), items in groups.items():
        costs = [r["cost"] for r in items]
        cost = "n/a" if None in costs else f"{statistics.mean(costs):.4f}"
        notes = sorted({r["note"] or r["error"] for r in items if r["note"] or r["error"]})
        lines.append(
            f"| {task} | {tokens:,} | {method} | "
            f"{statistics.mean(r['score'] for r in items):.0%} ({len(items)}) | "
            f"{statistics.mean(r['calls'] for r in items):.1f} | "
            f"{statistics.mean(r['input_tokens'] for r in items):,.0f} | "
            f"{statistics.mean(r['output_tokens'] for r in items):,.0f} | {cost} | "
            f"{statistics.mean(r['seconds'] for r in items):.2f} | {items[0]['source']} | "
            f"{'; '.join(notes)[:200]} |"
        )
    return "\n".join(lines) + "\n"


def evaluate(task: Task, method: str, backend: Backend, args: argparse.Namespace) -> dict:
    outcome: Outcome
    if method == "rlm":
        outcome = run_rlm(task, backend, args.environment, args.max_iterations)
    else:
        outcome = run_base(task, backend)
    return {
        "task": task.name,
        "tokens": task.tokens,
        "method": method,
        "question": task.question,
        "gold": task.answers,
        "answer": outcome.answer[:500],
        "score": score(task, outcome.answer),
        "calls": outcome.calls,
        "input_tokens": outcome.input_tokens,
        "output_tokens": outcome.output_tokens,
        "cost": outcome.cost,
        "seconds": outcome.seconds,
        "note": outcome.note,
        "error": outcome.error,
        "source": task.source,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if set(methods) - {"rlm", "base"}:
        raise SystemExit("--methods takes rlm, base or both")
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    rows = []
    with backend_for(args) as backend:
        for task in generate(names, sizes, args.samples, args.seed):
            for method in methods:
                row = evaluate(task, method, backend, args)
                rows.append(row)
                print(
                    f"{task.name} {task.tokens:,} {method}: score {row['score']:.2f} "
                    f"({row['answer'][:60]!r} vs {task.answers[:3]})",
                    file=sys.stderr,
                )
    header = (
        f"Long-context eval, {time.strftime('%Y-%m-%d')}: model `{backend.model}`"
        + (" (scripted oracle: plumbing check, not model quality)" if args.scripted else "")
        + f", RLM environment `{args.environment}`, base window {args.window_tokens:,} tokens, "
        f"~4 characters per token. Accuracy is the mean score (items in brackets); spend is per "
        "item.\n\n"
    )
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = header + summarise(rows)
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
