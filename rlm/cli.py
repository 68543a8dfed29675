"""The ``rlm`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rlm.config import add_settings_arguments, settings_from_args
from rlm.errors import ConfigurationError, LimitExceededError, LMError, RLMError, SandboxError


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="answer a question over a (large) context with an RLM",
        description=(
            "Loads the context into a sandboxed REPL and lets the model program its way to an "
            "answer. The answer goes to stdout; progress goes to stderr. Settings come from "
            "flags > RLM_* env vars > the config file (rlm.toml) > defaults."
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
    add_settings_arguments(run)
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

    settings = settings_from_args(args)
    context = _read_context(args.context_file)
    if settings.backend == "local":
        from rlm.broker.clients.local_llama import WARNING

        print(WARNING, file=sys.stderr)
    with RLM(
        **settings.rlm_kwargs(),
        logger=RLMLogger(settings.log_dir) if settings.log_dir else None,
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
    from rlm.providers_check import add_cli as providers_cli
    from rlm.serve import add_cli as serve_cli
    from rlm.viewer import add_cli as view_cli

    return [docker_cli, serve_cli, view_cli, providers_cli]


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
