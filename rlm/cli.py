"""The ``rlm`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rlm.errors import ConfigurationError, LimitExceededError, LMError, RLMError, SandboxError

DEFAULT_MODEL = "gpt-4o-mini"


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="answer a question over a (large) context with an RLM",
        description=(
            "Loads the context into a sandboxed REPL and lets the model program its way to an "
            "answer. The answer goes to stdout; progress goes to stderr."
        ),
    )
    run.add_argument("question", help="what to ask about the context")
    run.add_argument(
        "--context-file",
        "-f",
        action="append",
        default=[],
        help="file to load as `context` ('-' for stdin); repeat to load a list of files",
    )
    run.add_argument(
        "--backend",
        default=os.environ.get("RLM_BACKEND", "openai"),
        help="LM backend: openai, openrouter, vllm, ollama, lmstudio, vercel, anthropic, gemini "
        "(default: $RLM_BACKEND or openai)",
    )
    run.add_argument(
        "--model",
        default=os.environ.get("RLM_MODEL", DEFAULT_MODEL),
        help=f"model name (default: $RLM_MODEL or {DEFAULT_MODEL})",
    )
    run.add_argument(
        "--base-url",
        default=os.environ.get("RLM_BASE_URL"),
        help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: $RLM_BASE_URL)",
    )
    run.add_argument(
        "--api-key",
        default=None,
        help="API key (prefer the provider's env var, e.g. OPENAI_API_KEY)",
    )
    run.add_argument("--sub-model", help="model for llm_query/rlm_query calls (default: --model)")
    run.add_argument(
        "--environment",
        "-e",
        default=os.environ.get("RLM_ENVIRONMENT", "local"),
        help="where the generated code runs: local, docker, ... (default: $RLM_ENVIRONMENT or local)",
    )
    run.add_argument("--max-depth", type=int, default=1, help="recursion depth (1 = no child RLMs)")
    run.add_argument("--max-iterations", type=int, default=30, help="root iterations (default 30)")
    run.add_argument("--max-budget", type=float, help="stop after spending this many US dollars")
    run.add_argument("--max-timeout", type=float, help="stop after this many seconds")
    run.add_argument("--max-tokens", type=int, help="stop after this many tokens (whole tree)")
    run.add_argument(
        "--max-errors", type=int, help="stop after this many failing iterations in a row"
    )
    run.add_argument("--cell-timeout", type=float, default=120.0, help="seconds per code block")
    run.add_argument("--log-dir", help="write a JSONL trajectory to this directory")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.set_defaults(handler=_run)


def _read_context(paths: list[str]) -> Any:
    texts = []
    for path in paths:
        if path == "-":
            texts.append(sys.stdin.read())
        else:
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    texts.append(handle.read())
            except OSError as error:
                raise ConfigurationError(
                    f"cannot read --context-file {path!r}: {error.strerror}"
                ) from error
    if not texts:
        raise ConfigurationError("give the context with --context-file FILE (or '-' for stdin)")
    return texts[0] if len(texts) == 1 else texts


def _run(args: argparse.Namespace) -> int:
    from rlm import RLM, RLMLogger

    context = _read_context(args.context_file)
    backend_kwargs: dict[str, Any] = {"model_name": args.model}
    if args.base_url:
        backend_kwargs["base_url"] = args.base_url
    if args.api_key:
        backend_kwargs["api_key"] = args.api_key
    others, other_kwargs = [], []
    if args.sub_model:
        others, other_kwargs = [args.backend], [{**backend_kwargs, "model_name": args.sub_model}]
    with RLM(
        backend=args.backend,
        backend_kwargs=backend_kwargs,
        environment=args.environment,
        environment_kwargs={"cell_timeout": args.cell_timeout},
        max_depth=args.max_depth,
        max_iterations=args.max_iterations,
        max_budget=args.max_budget,
        max_timeout=args.max_timeout,
        max_tokens=args.max_tokens,
        max_errors=args.max_errors,
        other_backends=others,
        other_backend_kwargs=other_kwargs,
        logger=RLMLogger(args.log_dir) if args.log_dir else None,
        verbose=not args.quiet,
    ) as rlm:
        result = rlm.completion(context, root_prompt=args.question)
    if args.json:
        print(json.dumps(result.to_dict() | {"prompt": None}, indent=2, default=str))
    else:
        print(result.response)
    if not args.quiet:
        usage = result.usage_summary
        cost = f", ${usage.total_cost:.4f}" if usage.total_cost is not None else ""
        print(
            f"[{result.execution_time:.1f}s, {usage.total_calls} LM calls, "
            f"{usage.total_input_tokens + usage.total_output_tokens:,} tokens{cost}]",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm",
        description="Recursive Language Models: answer over huge contexts from a sandboxed REPL.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    for extend in _extensions():
        extend(sub)
    return parser


def _extensions() -> list[Any]:
    """Sub-commands that live with their feature (imported lazily by their own modules)."""
    from rlm.environments.docker_cli import add_cli as docker_cli

    return [docker_cli]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("rlm: interrupted; sandboxes were cleaned up", file=sys.stderr)
        return 130
    except ConfigurationError as error:
        print(f"rlm: configuration error: {error}", file=sys.stderr)
        return 2
    except LimitExceededError as error:
        print(f"rlm: stopped: {error}", file=sys.stderr)
        if error.partial_answer:
            print(error.partial_answer)
        return 3
    except (LMError, SandboxError, RLMError) as error:
        print(f"rlm: {type(error).__name__}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
