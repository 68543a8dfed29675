"""``rlm view LOG...``: one self-contained HTML page of trajectory logs (no CDN, no build step).

A log is the JSONL that ``RLMLogger`` writes, in the layout of the reference ``rlms`` package: a
``{"type": "metadata", ...}`` line, then one ``{"type": "iteration", ...}`` line per iteration.
Logs of the reference package open too (they lack our extra keys). Lines are read through the
typed classes of :mod:`rlm.types`; sub-calls of ``rlm_query`` carry their child run's trajectory,
which is shown nested under the call, with its own iterations.

Everything in a log is untrusted (model and sandbox text): text is HTML-escaped with its control
characters made visible, numbers are checked to be numbers before they reach the markup, and the
page's content security policy only lets its own script run.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import html
import http.server
import importlib.resources
import json
import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rlm.types import CodeBlock, REPLResult, RLMChatCompletion, RLMIteration, RLMMetadata

__all__ = [
    "LogError",
    "LogFile",
    "Run",
    "add_cli",
    "default_output",
    "find_logs",
    "live_page",
    "main",
    "make_server",
    "parse_log",
    "read_log",
    "render_html",
    "render_logs",
    "serve_logs",
]

SUBCALLS_SHOWN_OPEN = 20
"""A code block's sub-call list starts open when it has at most this many entries (or errors)."""
MAX_NESTING = 40
"""Child runs nested deeper than this are not rendered (a crafted log could nest thousands)."""


class LogError(ValueError):
    """A path that is not a readable trajectory log (or a directory without any)."""


# ---- reading -------------------------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _objs(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _clean_usage(value: Any) -> dict[str, Any]:
    per_model = _obj(_obj(value).get("model_usage_summaries"))
    return {
        "model_usage_summaries": {str(m): s for m, s in per_model.items() if isinstance(s, dict)}
    }


def _clean_call(call: dict[str, Any]) -> dict[str, Any]:
    metadata = call.get("metadata")
    return {
        **call,
        "usage_summary": _clean_usage(call.get("usage_summary")),
        "metadata": metadata if isinstance(metadata, dict) else None,
    }


def _clean_iteration(line: dict[str, Any]) -> dict[str, Any]:
    """``line`` with every container the typed classes walk made the right type (a crafted or
    damaged log must not stop the page); scalars are checked when rendered."""
    blocks = []
    for block in _objs(line.get("code_blocks")):
        result = _obj(block.get("result"))
        result = {
            **result,
            "locals": _obj(result.get("locals")),
            "rlm_calls": [_clean_call(c) for c in _objs(result.get("rlm_calls"))],
        }
        blocks.append({"code": block.get("code", ""), "result": result})
    return {**line, "code_blocks": blocks}


def _iteration(line: dict[str, Any]) -> RLMIteration:
    """One iteration line as an ``RLMIteration``; the line's own ``iteration`` number and
    ``timestamp`` (which the class leaves to the logger) are kept in ``extras``."""
    iteration = RLMIteration.from_dict(_clean_iteration(line))
    iteration.extras["iteration"] = line.get("iteration")
    iteration.extras["timestamp"] = line.get("timestamp")
    return iteration


def _metadata(data: dict[str, Any]) -> RLMMetadata:
    return RLMMetadata.from_dict(
        {
            **data,
            "backend_kwargs": _obj(data.get("backend_kwargs")),
            "environment_kwargs": _obj(data.get("environment_kwargs")),
        }
    )


def _is_iteration_line(line: dict[str, Any]) -> bool:
    return line.get("type", "iteration") == "iteration" and isinstance(
        line.get("code_blocks"), list
    )


@dataclass
class Run:
    """One run's trajectory: a completion of the logged RLM, or a child run (``rlm_query``)."""

    config: RLMMetadata | None
    iterations: list[RLMIteration] = field(default_factory=list)
    run_id: str | None = None
    depth: int | None = None
    finished_by: str | None = None
    """``answer``/``max_iterations``/``error`` as logged; for a log without it (the
    reference's), ``answer`` once an iteration has a final answer; ``None``: not finished."""

    @classmethod
    def from_trajectory(cls, data: dict[str, Any]) -> Run:
        """A child run from a sub-call's ``metadata`` (``{"run_metadata", "iterations", ...}``)."""
        config = data.get("run_metadata")
        run = cls(
            config=_metadata(config) if isinstance(config, dict) else None,
            iterations=[_iteration(line) for line in _objs(data.get("iterations"))],
            run_id=data.get("run_id") if isinstance(data.get("run_id"), str) else None,
            depth=_int(data.get("depth")),
            finished_by=data.get("finished_by")
            if isinstance(data.get("finished_by"), str)
            else None,
        )
        run._settle()
        return run

    def _settle(self) -> None:
        """Fills ``run_id``, ``depth`` and ``finished_by`` from the iterations when missing."""
        for iteration in self.iterations:
            if self.run_id is None and isinstance(iteration.extras.get("run_id"), str):
                self.run_id = iteration.extras["run_id"]
            if self.depth is None:
                self.depth = _int(iteration.extras.get("depth"))
        if self.finished_by is None and self.iterations:
            logged = self.iterations[-1].extras.get("finished_by")
            if isinstance(logged, str):
                self.finished_by = logged
            elif any(_answer_text(i.final_answer) is not None for i in self.iterations):
                self.finished_by = "answer"

    @property
    def final_answer(self) -> str | None:
        """The last final answer in the run, as text."""
        for iteration in reversed(self.iterations):
            answer = _answer_text(iteration.final_answer)
            if answer is not None:
                return answer
        return None


@dataclass
class LogFile:
    """A log file: its configuration line and one :class:`Run` per completion in it (a
    persistent RLM logs several completions into one file)."""

    path: str
    config: RLMMetadata | None
    runs: list[Run]
    skipped_lines: int = 0
    """Lines that were not JSON objects of a known type (a line being written, damage)."""
    truncated_at: int | None = None
    """The size limit (bytes) at which the logger stopped writing, when it did."""


def parse_log(lines: Iterable[str], path: str = "<log>") -> LogFile:
    """Parses the lines of a trajectory log; raises :class:`LogError` when none of them is a
    metadata or iteration line."""
    config: RLMMetadata | None = None
    runs: list[Run] = []
    current: Run | None = None
    skipped = 0
    truncated_at: int | None = None
    first_problem: str | None = None
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except (ValueError, RecursionError):
            line = None
        if not isinstance(line, dict):
            skipped += 1
            first_problem = first_problem or f"line {number} is not a JSON object"
            continue
        if line.get("type") == "log_truncated":
            truncated_at = _int(line.get("max_bytes"))
            continue
        if line.get("type") == "metadata":
            config = _metadata(line)
            current = None  # a new configuration starts a new run
            continue
        if not _is_iteration_line(line):
            skipped += 1
            first_problem = first_problem or f"line {number} is neither a metadata nor an iteration"
            continue
        iteration = _iteration(line)
        run_id = iteration.extras.get("run_id")
        if (
            current is None
            or (_int(iteration.extras["iteration"]) == 1 and current.iterations)
            or (isinstance(run_id, str) and current.run_id not in (None, run_id))
        ):
            current = Run(config)
            runs.append(current)
        current.iterations.append(iteration)
        if current.run_id is None and isinstance(run_id, str):
            current.run_id = run_id
    if config is None and not runs:
        reason = first_problem or "it is empty"
        raise LogError(
            f"{path} is not an RLM trajectory log ({reason}); expected the JSONL that "
            "RLMLogger(log_dir=...) writes"
        )
    for run in runs:
        run._settle()
    return LogFile(
        path=path, config=config, runs=runs, skipped_lines=skipped, truncated_at=truncated_at
    )


def read_log(path: str) -> LogFile:
    """Reads one log file; raises :class:`LogError` for a missing, unreadable or foreign file."""
    if not os.path.exists(path):
        raise LogError(f"no such file or directory: {path}")
    if not os.path.isfile(path):
        raise LogError(f"not a file: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_log(handle, path)
    except UnicodeDecodeError:
        raise LogError(f"{path} is not an RLM trajectory log (not UTF-8 text)") from None
    except OSError as error:
        raise LogError(f"cannot read {path}: {error.strerror}") from None


def find_logs(paths: list[str]) -> list[str]:
    """The log files named by ``paths``: files as given, a directory's ``*.jsonl`` newest first.
    Raises :class:`LogError` for a missing path or a directory without logs."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            entries = [
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.endswith(".jsonl") and os.path.isfile(os.path.join(path, name))
            ]
            if not entries:
                raise LogError(f"no *.jsonl log in directory {path}")
            found.extend(sorted(entries, key=lambda p: (-os.path.getmtime(p), p)))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise LogError(f"no such file or directory: {path}")
    return list(dict.fromkeys(found))


def _load(paths: list[str], strict: bool = True) -> list[LogFile]:
    """Every log of ``paths``; a file in a directory that is not a log is passed over unless
    nothing else is left (a file named explicitly must be a log when ``strict``)."""
    named = {os.path.abspath(p) for p in paths if not os.path.isdir(p)}
    logs, problems = [], []
    for path in find_logs(paths):
        try:
            logs.append(read_log(path))
        except LogError as error:
            if strict and os.path.abspath(path) in named:
                raise
            problems.append(error)
    if not logs:
        raise problems[0]
    return logs


# ---- checked values ------------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    """``value`` when it is a finite JSON number (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    """``value`` when it is a non-negative whole JSON number, else ``None``."""
    number = _num(value)
    if number is None or number < 0 or not number.is_integer() or number > 2**53:
        return None
    return int(number)


def _answer_text(answer: Any) -> str | None:
    """A final answer as text: the reference logs ``[name, value]`` for ``FINAL_VAR``."""
    if answer is None:
        return None
    if isinstance(answer, list) and len(answer) == 2:
        answer = answer[1]
    return answer if isinstance(answer, str) else _as_text(answer)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, indent=2, default=repr)
    except (ValueError, RecursionError):
        return repr(value)


_ANSI_SGR = re.compile(r"\x1b\[[0-9;]*m")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
_CONTROL = {code: chr(0x2400 + code) for code in range(0x20) if code not in (0x09, 0x0A)}
_CONTROL[0x7F] = "\u2421"
_CONTROL.update({code: f"\\x{code:02x}" for code in range(0x80, 0xA0)})
_CONTROL.update(
    {
        code: f"\\u{code:04x}"
        for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
    }
)


def _visible(value: Any) -> str:
    """Text with colour codes dropped and every other control character, bidi override and lone
    surrogate made visible (so that nothing in it acts on the page or hides text)."""
    text = _ANSI_SGR.sub("", _as_text(value)).replace("\r\n", "\n")
    return _SURROGATES.sub("\ufffd", text).translate(_CONTROL)


def _compact(value: Any) -> str:
    if isinstance(value, dict | list):
        try:
            return json.dumps(value, ensure_ascii=False, default=repr)
        except (ValueError, RecursionError):
            return repr(value)
    return _as_text(value)


def _e(value: Any) -> str:
    """``value`` as inert HTML text (also safe inside a quoted attribute)."""
    return html.escape(_visible(value), quote=True)


def _fmt_int(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _fmt_seconds(value: Any) -> str:
    seconds = _num(value)
    return "—" if seconds is None else f"{seconds:.2f}s"


def _fmt_cost(cost: float | None) -> str:
    return "cost unknown" if cost is None else f"${cost:,.4f}"


# ---- totals --------------------------------------------------------------------------------------


@dataclass
class _Totals:
    """Counts over a run and everything below it, summed from the log."""

    iterations: int = 0
    child_iterations: int = 0
    blocks: int = 0
    subcalls: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    untallied_lm_calls: int = 0
    """Root-model calls whose tokens the log does not carry (reference logs, compactions)."""
    cost: float | None = None

    def add_cost(self, cost: float | None) -> None:
        if cost is not None:
            self.cost = (self.cost or 0.0) + cost

    def add(self, other: _Totals) -> None:
        for name in ("iterations", "child_iterations", "blocks", "subcalls", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.untallied_lm_calls += other.untallied_lm_calls
        self.add_cost(other.cost)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def _usage_sums(call: RLMChatCompletion) -> tuple[int | None, int | None, float | None]:
    """(input, output, cost) of a call's ``usage_summary``, from the numbers that are numbers."""
    summaries = call.usage_summary.model_usage_summaries.values()
    ins = [_int(s.total_input_tokens) for s in summaries]
    outs = [_int(s.total_output_tokens) for s in summaries]
    costs = [c for c in (_num(s.total_cost) for s in summaries) if c is not None]
    return (
        sum(i for i in ins if i is not None) if any(i is not None for i in ins) else None,
        sum(o for o in outs if o is not None) if any(o is not None for o in outs) else None,
        sum(costs) if costs else None,
    )


def _call_tokens(call: RLMChatCompletion) -> tuple[int | None, int | None]:
    """Tokens of a sub-call and of everything it started (a child run's usage covers its tree)."""
    tin, tout = _int(call.extras.get("prompt_tokens")), _int(call.extras.get("completion_tokens"))
    if tin is None and tout is None:
        tin, tout, _ = _usage_sums(call)
    return tin, tout


def _call_cost(call: RLMChatCompletion) -> float | None:
    cost = _num(call.extras.get("cost"))
    return cost if cost is not None else _usage_sums(call)[2]


def _child(call: RLMChatCompletion) -> Run | None:
    if isinstance(call.metadata, dict) and isinstance(call.metadata.get("iterations"), list):
        return Run.from_trajectory(call.metadata)
    return None


_EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b")


def _block_failed(result: REPLResult) -> bool:
    """Whether a block raised: ours log ``error``; the reference only has the traceback in
    ``stderr`` (its last line is the exception)."""
    if result.extras.get("error"):
        return True
    lines = [line for line in _as_text(result.stderr).splitlines() if line.strip()]
    return bool(lines) and bool(_EXCEPTION_LINE.match(lines[-1].strip()))


def _totals(run: Run, level: int = 0) -> _Totals:
    totals = _Totals(iterations=len(run.iterations))
    for iteration in run.iterations:
        tin, tout = (
            _int(iteration.extras.get("input_tokens")),
            _int(iteration.extras.get("output_tokens")),
        )
        if tin is None and tout is None:
            totals.untallied_lm_calls += 1
        totals.input_tokens += tin or 0
        totals.output_tokens += tout or 0
        totals.blocks += len(iteration.code_blocks)
        for block in iteration.code_blocks:
            totals.errors += _block_failed(block.result)
            for call in block.result.rlm_calls:
                totals.subcalls += 1
                totals.errors += bool(call.error)
                tin, tout = _call_tokens(call)
                child = _child(call) if level < MAX_NESTING else None
                below = _totals(child, level + 1) if child is not None else None
                if below is not None:
                    totals.subcalls += below.subcalls
                    totals.child_iterations += below.iterations + below.child_iterations
                    totals.errors += below.errors
                    totals.blocks += below.blocks
                if tin is None and tout is None and below is not None:
                    tin, tout = below.input_tokens, below.output_tokens
                totals.input_tokens += tin or 0
                totals.output_tokens += tout or 0
                cost = _call_cost(call)
                totals.add_cost(cost if cost is not None or below is None else below.cost)
    return totals


# ---- rendering -----------------------------------------------------------------------------------


def _asset(name: str) -> str:
    return importlib.resources.files("rlm").joinpath("viewer_assets", name).read_text("utf-8")


class _Highlighter:
    """Python → HTML with pygments (a dependency of rich); plain escaped text without it."""

    def __init__(self) -> None:
        try:
            from pygments.formatters import HtmlFormatter
            from pygments.lexers import PythonLexer
        except ImportError:  # pragma: no cover - rich always brings pygments
            self._formatter = None
            return
        self._lexer = PythonLexer()
        self._formatter = HtmlFormatter(cssclass="hl")

    def css(self) -> str:
        return self._formatter.get_style_defs(".hl") if self._formatter else ""

    def __call__(self, code: Any) -> str:
        text = _visible(code)
        if self._formatter is None:
            return f'<pre class="plain">{html.escape(text)}</pre>'
        from pygments import highlight

        return highlight(text, self._lexer, self._formatter)


_ROLES = {"system", "user", "assistant", "tool"}
_KINDS = {"iteration", "compaction", "final"}


def _badge(text: str, cls: str = "") -> str:
    """A badge; ``text`` must already be HTML."""
    return f'<span class="badge{" " + cls if cls else ""}">{text}</span>'


def _tokens(tin: int | None, tout: int | None) -> str:
    if tin is None and tout is None:
        return "tokens not logged"
    return f"{_fmt_int(tin)} in / {_fmt_int(tout)} out"


class _Renderer:
    def __init__(self) -> None:
        self.highlight = _Highlighter()
        self._ids = 0

    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}{self._ids}"

    # -- a log file and its runs --

    def totals_line(self, totals: _Totals, finished: list[str | None]) -> str:
        parts = [
            f'<span class="stat" data-stat="iterations">{_count(totals.iterations, "iteration")}</span>'
        ]
        if totals.child_iterations:
            parts.append(f"+{totals.child_iterations:,} in child runs")
        parts.append(
            f'<span class="stat" data-stat="blocks">{_count(totals.blocks, "code block")}</span>'
        )
        parts.append(
            f'<span class="stat" data-stat="subcalls">{_count(totals.subcalls, "sub-call")}</span>'
        )
        tokens = (
            f"{totals.tokens:,} tokens ({totals.input_tokens:,} in / {totals.output_tokens:,} out)"
        )
        parts.append(f'<span class="stat" data-stat="tokens">{tokens}</span>')
        if totals.untallied_lm_calls:
            parts.append(
                f'<span class="note">+ {totals.untallied_lm_calls:,} root-model call(s) whose '
                "tokens the log does not carry</span>"
            )
        parts.append(f'<span class="stat" data-stat="cost">{_fmt_cost(totals.cost)}</span>')
        if totals.errors:
            parts.append(_badge(f"{totals.errors:,} error(s)", "err"))
        for how in finished:
            if how is None:
                parts.append(_badge("not finished", "warn"))
            else:
                cls = "ok" if how == "answer" else "err" if how == "error" else "warn"
                parts.append(_badge(f"finished by {_e(how)}", cls))
        return " · ".join(parts)

    def log(self, log: LogFile, anchor: str, opened: bool) -> str:
        totals = _Totals()
        for run in log.runs:
            totals.add(_totals(run))
        name = os.path.basename(log.path)
        parts = [
            f'<details class="log" id="{anchor}"{" open" if opened else ""}>',
            f'<summary><span class="log-name">{_e(name)}</span>'
            f'<div class="log-totals">{self.totals_line(totals, [r.finished_by for r in log.runs])}'
            "</div></summary>",
            f'<div class="log-path">{_e(log.path)}</div>',
        ]
        if log.truncated_at is not None:
            parts.append(
                f'<div class="notice">the log reached its size limit ({log.truncated_at:,} bytes): '
                "later entries were not written</div>"
            )
        if log.skipped_lines:
            parts.append(
                f'<div class="notice">{log.skipped_lines:,} line(s) that are not log entries '
                "were skipped</div>"
            )
        parts.append(self.config(log.config))
        if not log.runs:
            parts.append('<p class="notice">No iteration logged yet.</p>')
        for index, run in enumerate(log.runs, start=1):
            label = f"completion {index} of {len(log.runs)}" if len(log.runs) > 1 else ""
            parts.append(self.run(run, label=label))
        parts.append("</details>")
        return "\n".join(parts)

    def config(self, config: RLMMetadata | None) -> str:
        if config is None:
            return '<div class="notice">This log has no configuration line.</div>'
        rows = [
            ("root model", config.root_model),
            ("backend", config.backend),
            ("backend kwargs", config.backend_kwargs),
            ("environment", config.environment_type),
            ("environment kwargs", config.environment_kwargs),
            ("max depth", config.max_depth),
            ("max iterations", config.max_iterations),
            ("other backends", config.other_backends),
        ]
        cells = "".join(
            f"<tr><th>{label}</th><td>{_e(_compact(value))}</td></tr>"
            for label, value in rows
            if value not in (None, {}, [])
        )
        return f'<table class="config"><caption>run configuration</caption>{cells}</table>'

    def run(self, run: Run, label: str = "", level: int = 0) -> str:
        totals = _totals(run)
        failed = run.finished_by == "error" or totals.errors > 0
        depth = run.depth
        head = []
        title = " · ".join(part for part in (label, f"run {run.run_id or '?'}") if part)
        head.append(f'<span class="title">{_e(title)}</span>')
        head.append(_badge(f"depth {_fmt_int(depth)}"))
        if level and run.config is not None and run.config.root_model:
            head.append(_badge(f"model {_e(run.config.root_model)}"))
        head.append(
            f'<span class="run-totals">{self.totals_line(totals, [run.finished_by])}</span>'
        )
        parts = [
            f'<section class="run{" failed" if run.finished_by == "error" else ""}'
            f'{" has-errors" if failed else ""}" data-run="{self.new_id("run")}" '
            f'data-depth="{"" if depth is None else depth}">',
            f'<div class="run-head">{"".join(head)}</div>',
            self.timeline(run),
        ]
        previous: Any = None
        for position, iteration in enumerate(run.iterations, start=1):
            parts.append(self.iteration(iteration, position, previous, level))
            previous = iteration.prompt
        answer = run.final_answer
        if answer is not None:
            parts.append(
                f'<div class="final"><span class="label">final answer</span>'
                f'<pre class="final-answer">{_e(answer)}</pre></div>'
            )
        parts.append("</section>")
        return "\n".join(parts)

    def timeline(self, run: Run) -> str:
        times = [_num(i.iteration_time) for i in run.iterations]
        known = [t for t in times if t is not None and t >= 0]
        if not known:
            return ""
        span = max(sum(known), 1e-6)
        bars = []
        for iteration, total in zip(run.iterations, times, strict=True):
            total = max(total or 0.0, 1e-6)
            lm = min(max(_num(iteration.extras.get("lm_seconds")) or 0.0, 0.0), total)
            code = sum(
                max(_num(b.result.execution_time) or 0.0, 0.0) for b in iteration.code_blocks
            )
            code = min(code, total - lm)
            rest = max(total - lm - code, 0.0)
            failed = any(_block_failed(b.result) for b in iteration.code_blocks)
            bars.append(
                f'<span class="bar{" err" if failed else ""}" style="flex-grow:{total / span:.5f}">'
                f'<span class="lm" style="flex-grow:{lm / total:.5f}"></span>'
                f'<span class="exec" style="flex-grow:{code / total:.5f}"></span>'
                f'<span class="idle" style="flex-grow:{rest / total:.5f}"></span></span>'
            )
        return (
            '<div class="timeline" title="iterations over time: model (blue), code (green)">'
            f"{''.join(bars)}</div>"
        )

    # -- an iteration --

    def messages(self, prompt: Any, previous: Any) -> str:
        if not isinstance(prompt, list):
            return f'<pre class="prompt-text">{_e(prompt)}</pre>'
        shown, note = prompt, ""
        if (
            isinstance(previous, list)
            and previous
            and len(previous) < len(prompt)
            and prompt[: len(previous)] == previous
        ):
            shown = prompt[len(previous) :]
            note = (
                f'<div class="note">{len(previous):,} earlier message(s) as in the previous '
                "iteration, then:</div>"
            )
        items = []
        for message in shown:
            if not isinstance(message, dict):
                message = {"content": message}
            role = message.get("role")
            cls = role if role in _ROLES else "other"
            items.append(
                f'<div class="msg {cls}"><span class="role">{_e(role or "?")}</span>'
                f"<pre>{_e(message.get('content'))}</pre></div>"
            )
        return note + "".join(items)

    def iteration(self, iteration: RLMIteration, position: int, previous: Any, level: int) -> str:
        extras = iteration.extras
        number = _int(extras.get("iteration"))
        kind = extras.get("kind") if extras.get("kind") in _KINDS else None
        failed = any(_block_failed(b.result) for b in iteration.code_blocks)
        calls = sum(len(b.result.rlm_calls) for b in iteration.code_blocks)
        stats = [_fmt_seconds(iteration.iteration_time)]
        lm_seconds = _num(extras.get("lm_seconds"))
        if lm_seconds is not None:
            stats.append(f"model {lm_seconds:.2f}s")
        tin, tout = _int(extras.get("input_tokens")), _int(extras.get("output_tokens"))
        if tin is not None or tout is not None:
            stats.append(_tokens(tin, tout))
        stats.append(_count(len(iteration.code_blocks), "code block"))
        if calls:
            stats.append(_count(calls, "sub-call"))
        badges = []
        if kind and kind != "iteration":
            badges.append(_badge(kind, "kind-" + kind))
        if failed:
            badges.append(_badge("error", "err"))
        if _answer_text(iteration.final_answer) is not None:
            badges.append(_badge("final answer", "ok"))
        if isinstance(extras.get("finished_by"), str) and extras["finished_by"] != "answer":
            badges.append(_badge(f"finished by {_e(extras['finished_by'])}"))
        timestamp = extras.get("timestamp")
        prompt_count = len(iteration.prompt) if isinstance(iteration.prompt, list) else 1
        parts = [
            f'<details class="iteration{" kind-" + kind if kind else ""}{" error" if failed else ""}"'
            f' open data-iteration="{"" if number is None else number}">',
            f"<summary>Iteration {_fmt_int(number)}{''.join(badges)}"
            f'<span class="stats">{" · ".join(stats)}</span>'
            + (f'<span class="timestamp">{_e(timestamp)}</span>' if timestamp else "")
            + "</summary>",
            f'<details class="prompt"><summary>prompt ({prompt_count:,} message(s))</summary>'
            f"{self.messages(iteration.prompt, previous)}</details>",
            f'<div class="label">{"summary" if kind == "compaction" else "model response"}</div>'
            f'<pre class="response">{_e(iteration.response)}</pre>',
        ]
        problem = extras.get("reply_problem")
        if problem:
            parts.append(f'<div class="notice">problem with the reply: {_e(problem)}</div>')
        for index, block in enumerate(iteration.code_blocks, start=1):
            parts.append(self.block(index, block, level))
        parts.append("</details>")
        return "\n".join(parts)

    # -- a code block and its sub-calls --

    def block(self, index: int, block: CodeBlock, level: int) -> str:
        result = block.result
        extras = result.extras
        error = extras.get("error")
        stderr = _as_text(result.stderr)
        if error and isinstance(error, str) and stderr.endswith(error):
            stderr = stderr[: -len(error)].rstrip("\n")  # ours: the traceback is in both
        head = [f"block {index}", _fmt_seconds(result.execution_time)]
        if extras.get("restarted"):
            head.append("sandbox restarted")
        cls = " error" if _block_failed(result) else " warn" if stderr.strip() else ""
        parts = [
            f'<div class="cell{cls}">',
            f'<div class="cell-head">{" · ".join(head)}</div>',
            f'<div class="code">{self.highlight(block.code)}</div>',
        ]
        if result.stdout:
            parts.append(f'<pre class="out">{_e(result.stdout)}</pre>')
        for name in ("stdout_dropped", "stderr_dropped"):
            dropped = _int(extras.get(name))
            if dropped:
                parts.append(
                    f'<div class="note">{dropped:,} characters of {name[:6]} dropped</div>'
                )
        if stderr.strip():
            parts.append(f'<pre class="stderr">{_e(stderr)}</pre>')
        if error:
            parts.append(f'<pre class="error">{_e(error)}</pre>')
        tools = _objs(extras.get("tool_calls"))
        if tools:
            items = "".join(
                f"<li>{_e(t.get('name'))} {_fmt_seconds(t.get('seconds'))}"
                + (f' <span class="err-text">{_e(t["error"])}</span>' if t.get("error") else "")
                + "</li>"
                for t in tools
            )
            parts.append(f'<div class="tools">host tool calls<ul>{items}</ul></div>')
        if result.final_answer is not None:
            parts.append(
                f'<div class="note">final answer set: {_e(_answer_text(result.final_answer))}</div>'
            )
        if result.rlm_calls:
            parts.append(self.subcalls(result.rlm_calls, level))
        parts.append("</div>")
        return "\n".join(parts)

    def subcalls(self, calls: list[RLMChatCompletion], level: int) -> str:
        kinds: dict[str, int] = {}
        for call in calls:
            kinds[self.kind(call)] = kinds.get(self.kind(call), 0) + 1
        errors = sum(1 for c in calls if c.error)
        summary = ", ".join(f"{n} {_e(k)}" for k, n in kinds.items())
        if errors:
            summary += " " + _badge(f"{errors} failed", "err")
        opened = " open" if len(calls) <= SUBCALLS_SHOWN_OPEN or errors else ""
        items = "\n".join(self.subcall(c, level) for c in calls)
        return (
            f'<details class="subcalls"{opened}><summary>sub-calls: {summary}</summary>'
            f'<ul class="subcall-list">{items}</ul></details>'
        )

    @staticmethod
    def kind(call: RLMChatCompletion) -> str:
        kind = call.extras.get("kind")
        if isinstance(kind, str) and kind:
            return _visible(kind)[:40]
        return "rlm_query" if _child(call) is not None else "llm_query"

    def subcall(self, call: RLMChatCompletion, level: int) -> str:
        kind = self.kind(call)
        tin, tout = _call_tokens(call)
        cost = _call_cost(call)
        line = [f'<b class="call-kind">{_e(kind)}</b>']
        if call.root_model:
            line.append(f'<span class="model">{_e(call.root_model)}</span>')
        line.append(_fmt_seconds(call.execution_time))
        line.append(_tokens(tin, tout))
        line.append(_fmt_cost(cost))
        prompt = call.prompt
        prompt_chars = len(_as_text(prompt))
        parts = [
            f'<li class="subcall{" error" if call.error else ""}" data-kind="{_e(kind)}">',
            f'<div class="call-head">{" · ".join(line)}</div>',
            f'<details class="call-prompt"><summary>prompt ({prompt_chars:,} chars)</summary>'
            f"{self.messages(prompt, None)}</details>",
        ]
        if call.error:
            parts.append(f'<pre class="error">{_e(call.error)}</pre>')
        if call.response or not call.error:
            parts.append(
                f'<div class="label">reply</div><pre class="reply">{_e(call.response)}</pre>'
            )
        child = _child(call)
        if child is not None:
            if level + 1 >= MAX_NESTING:
                parts.append('<div class="notice">child runs nested deeper are not shown</div>')
            else:
                parts.append(self.run(child, label="child", level=level + 1))
        parts.append("</li>")
        return "\n".join(parts)


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def render_html(logs: list[LogFile], title: str = "rlm trajectory", refresh: int = 0) -> str:
    """The page for ``logs`` (one section each, the first open); ``refresh`` > 0 makes the page
    reload itself every that many seconds (the live view)."""
    renderer = _Renderer()
    script = _asset("viewer.js")
    totals = _Totals()
    finished: list[str | None] = []
    for log in logs:
        for run in log.runs:
            totals.add(_totals(run))
            finished.append(run.finished_by)
    sections = [
        renderer.log(log, anchor=f"log{index}", opened=index == 1)
        for index, log in enumerate(logs, start=1)
    ]
    summary = ""
    if len(logs) > 1:
        toc = "".join(
            f'<li><a href="#log{index}" data-open="log{index}">'
            f"{_e(os.path.basename(log.path))}</a></li>"
            for index, log in enumerate(logs, start=1)
        )
        summary = (
            f'<div class="page-meta">{len(logs)} logs · {renderer.totals_line(totals, [])}</div>'
            f'<ol class="toc">{toc}</ol>'
        )
    head_refresh = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh > 0 else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_csp(script)}">{head_refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_asset("viewer.css")}
{renderer.highlight.css()}</style>
</head><body>
<h1>{_e(title)}</h1>
{summary}
<div class="toolbar"><button type="button" id="expand-all">expand all</button><button type="button" id="collapse-all">collapse all</button></div>
{"".join(sections)}
<script>{script}</script>
</body></html>
"""


def _title(logs: list[LogFile]) -> str:
    if len(logs) == 1:
        return os.path.basename(logs[0].path)
    return f"{len(logs)} rlm trajectory logs"


def default_output(paths: list[str]) -> str:
    """Where ``rlm view`` writes without ``-o``: ``LOG.html`` next to a single log,
    ``DIR/index.html`` for a directory, else ``rlm_view.html`` beside the first path."""
    if len(paths) == 1:
        path = paths[0]
        if os.path.isdir(path):
            return os.path.join(path, "index.html")
        return os.path.splitext(path)[0] + ".html"
    first = paths[0]
    folder = first if os.path.isdir(first) else os.path.dirname(first)
    return os.path.join(folder, "rlm_view.html")


def render_logs(paths: list[str], output: str | None = None) -> str:
    """Writes one page for the logs named by ``paths`` (files, or directories of ``*.jsonl``)
    and returns its path; raises :class:`LogError` when a path is not a log."""
    logs = _load(paths)
    output = output or default_output(paths)
    if any(os.path.abspath(output) == os.path.abspath(log.path) for log in logs):
        raise LogError(f"refusing to overwrite the log {output} with its page")
    page = render_html(logs, title=_title(logs))
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(page)
    return output


def live_page(paths: list[str]) -> str:
    """The page as the live view serves it now: the logs re-read (directories re-listed), and
    a self-reload every 2 s while a run has not finished or no log is readable yet."""
    try:
        logs = _load(paths)
    except LogError as error:  # not written yet, or removed: try again shortly
        return (
            '<!DOCTYPE html><meta charset="utf-8"><meta http-equiv="refresh" content="2">'
            f"<title>rlm view</title><p>{_e(error)}</p>"
        )
    unfinished = any(not log.runs or log.runs[-1].finished_by is None for log in logs)
    return render_html(logs, _title(logs), refresh=2 if unfinished else 0)


def make_server(
    paths: list[str], port: int, host: str = "127.0.0.1"
) -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving) whose every GET answers :func:`live_page`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = live_page(paths).encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return http.server.ThreadingHTTPServer((host, port), Handler)


def serve_logs(paths: list[str], port: int, host: str = "127.0.0.1") -> None:
    """Serves the live page on ``http://host:port/`` until Ctrl-C: a log that is still being
    written shows the run's progress."""
    with make_server(paths, port, host) as server:
        url = f"http://{host}:{server.server_port}/"
        shown = " ".join(paths)
        print(f"rlm view: serving {shown} on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


# ---- command line --------------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rlm view``."""
    parser = subparsers.add_parser(
        "view",
        help="render JSONL trajectory logs as one self-contained HTML page",
        description="Writes one HTML page for the given logs (iterations, code, output, sub-call "
        "tree with replies, child runs, tokens, cost, errors): a file as given, a directory's "
        "*.jsonl newest first. Opens the reference rlms package's logs too. With --serve, serves "
        "the page live instead, re-reading the logs on every request.",
    )
    parser.add_argument(
        "paths", nargs="+", metavar="LOG", help="a JSONL log written by RLMLogger, or a directory"
    )
    parser.add_argument(
        "-o",
        "--output",
        help="HTML file to write (default: LOG.html for one file, DIR/index.html for a directory, "
        "rlm_view.html beside the first path for several)",
    )
    parser.add_argument(
        "--serve", type=int, metavar="PORT", help="serve on http://127.0.0.1:PORT/ (0: any port)"
    )
    parser.set_defaults(handler=_view_command)


def _view_command(args: argparse.Namespace) -> int:
    try:
        if args.serve is not None:
            if args.output:
                raise LogError("-o and --serve exclude each other")
            _load(args.paths)  # fail now, not on the first request
            serve_logs(args.paths, args.serve)
            return 0
        print(render_logs(args.paths, args.output))
    except LogError as error:
        print(f"rlm view: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"rlm view: {error.strerror or error}: {error.filename or ''}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rlm.viewer ...``: ``rlm view ...`` without going through ``rlm.cli``."""
    parser = argparse.ArgumentParser(prog="rlm")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["view", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
