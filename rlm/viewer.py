"""``rlm view LOG.jsonl``: one self-contained HTML page of a trajectory (no CDN, no build step).

The page shows every run in the log (``RLMLogger`` JSONL, see ``rlm.events``) with its iteration
timeline, each code block syntax-highlighted (pygments, rendered here) with its output, and the
sub-calls each block made; an ``rlm_query`` sub-call holds its child run's whole trajectory, nested
via ``child_run_id``/``parent_run_id``. Tokens and cost are shown per run; errors are red.
"""

from __future__ import annotations

import argparse
import contextlib
import html
import http.server
import importlib.resources
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rlm.logger import RLMLogger

__all__ = ["Run", "add_cli", "build_runs", "render_html", "render_log", "serve_log"]

SUBCALLS_SHOWN_OPEN = 20
"""A code block's sub-call list starts open when it has at most this many entries."""


@dataclass
class Subcall:
    """An ``llm_query``/``rlm_query``/tool call made from a code block."""

    started: dict[str, Any]
    finished: dict[str, Any] | None = None
    child: Run | None = None

    @property
    def error(self) -> str | None:
        return (self.finished or {}).get("error")


@dataclass
class Cell:
    """One executed code block (``cell_executed``) and the sub-calls made while it ran."""

    data: dict[str, Any]
    subcalls: list[Subcall] = field(default_factory=list)


@dataclass
class Iteration:
    number: int
    started_at: float
    lm: dict[str, Any] | None = None
    cells: list[Cell] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(c.data.get("error") for c in self.cells)


@dataclass
class Run:
    """One run (root or child) rebuilt from its events."""

    run_id: str
    depth: int
    parent_run_id: str | None
    started: dict[str, Any] = field(default_factory=dict)
    finished: dict[str, Any] | None = None
    iterations: list[Iteration] = field(default_factory=list)
    pending: list[Subcall] = field(default_factory=list)
    orphans: list[Run] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.finished is not None and (
            self.finished.get("finished_by") == "error" or bool(self.finished.get("error"))
        )

    @property
    def own_tokens(self) -> tuple[int, int]:
        """Tokens of this run's own root-model calls (not its sub-calls)."""
        lms = [i.lm for i in self.iterations if i.lm]
        return (
            sum(lm.get("input_tokens", 0) or 0 for lm in lms),
            sum(lm.get("output_tokens", 0) or 0 for lm in lms),
        )

    @property
    def tree_usage(self) -> tuple[int, int, int, float | None] | None:
        """(calls, input, output, cost) of this run and everything below it, from run_finished."""
        usage = (self.finished or {}).get("usage")
        if not usage:
            return None
        models = usage.get("model_usage_summaries", {}).values()
        return (
            sum(m.get("total_calls", 0) for m in models),
            sum(m.get("total_input_tokens", 0) for m in models),
            sum(m.get("total_output_tokens", 0) for m in models),
            usage.get("total_cost"),
        )


def build_runs(events: Iterable[dict[str, Any]]) -> list[Run]:
    """The root runs of a log, each with its child runs nested under the sub-call that spawned
    them. Sub-calls belong to the next ``cell_executed`` of their run (events are in order)."""
    runs: dict[str, Run] = {}
    by_call: dict[str, Subcall] = {}
    by_child: dict[str, Subcall] = {}
    order: list[Run] = []

    def run_of(event: dict[str, Any]) -> Run:
        run = runs.get(event["run_id"])
        if run is None:
            run = Run(event["run_id"], event.get("depth", 0), event.get("parent_run_id"))
            runs[run.run_id] = run
            order.append(run)
        return run

    def iteration_of(run: Run, number: Any, at: float) -> Iteration:
        for iteration in reversed(run.iterations):
            if iteration.number == number:
                return iteration
        iteration = Iteration(number if isinstance(number, int) else 0, at)
        run.iterations.append(iteration)
        return iteration

    for event in events:
        kind, run, data = event.get("kind"), run_of(event), event
        if kind == "run_started":
            run.started = data
        elif kind == "iteration_started":
            run.iterations.append(Iteration(data["iteration"], data.get("time", 0.0)))
        elif kind == "lm_response":
            iteration_of(run, data.get("iteration"), data.get("time", 0.0)).lm = data
        elif kind == "subcall_started":
            call = Subcall(data)
            run.pending.append(call)
            by_call[data.get("call_id", "")] = call
            if data.get("child_run_id"):
                by_child[data["child_run_id"]] = call
        elif kind == "subcall_finished":
            call = by_call.get(data.get("call_id", ""))
            if call is not None:
                call.finished = data
        elif kind == "cell_executed":
            cell = Cell(data, run.pending)
            run.pending = []
            iteration_of(run, data.get("iteration"), data.get("time", 0.0)).cells.append(cell)
        elif kind == "run_finished":
            run.finished = data

    roots = []
    for run in order:
        if run.pending:  # the run stopped while a block was running: keep its sub-calls visible
            cell = Cell({"code": "# (this block did not finish)", "error": "interrupted"})
            cell.subcalls, run.pending = run.pending, []
            if not run.iterations:
                run.iterations.append(Iteration(0, 0.0))
            run.iterations[-1].cells.append(cell)
        spawner = by_child.get(run.run_id)
        if spawner is not None:
            spawner.child = run
        elif run.parent_run_id in runs:
            runs[run.parent_run_id].orphans.append(run)
        else:
            roots.append(run)
    return roots


# ---- rendering ---------------------------------------------------------------------------------


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

    def __call__(self, code: str) -> str:
        if self._formatter is None:
            return f'<pre class="plain">{html.escape(code)}</pre>'
        from pygments import highlight

        return highlight(code, self._lexer, self._formatter)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _tokens(pair: tuple[int, int]) -> str:
    return f"{pair[0]:,} in / {pair[1]:,} out"


class _Renderer:
    def __init__(self) -> None:
        self.highlight = _Highlighter()

    def run(self, run: Run) -> str:
        started, finished = run.started, run.finished
        badges = [f'<span class="badge">depth {run.depth}</span>']
        if started.get("model"):
            badges.append(f'<span class="badge">model {_e(started["model"])}</span>')
        if started.get("environment"):
            badges.append(f'<span class="badge">env {_e(started["environment"])}</span>')
        if finished is None:
            badges.append('<span class="badge">running (no run_finished yet)</span>')
        else:
            how = finished.get("finished_by", "?")
            cls = "err" if run.failed else "ok"
            badges.append(f'<span class="badge {cls}">finished by {_e(how)}</span>')
            badges.append(f'<span class="badge">{finished.get("seconds", 0):.2f}s</span>')
        badges.append(f'<span class="badge">own LM: {_tokens(run.own_tokens)}</span>')
        tree = run.tree_usage
        if tree is not None:
            calls, tin, tout, cost = tree
            text = f"tree: {calls} calls, {_tokens((tin, tout))}"
            text += f", ${cost:.4f}" if cost is not None else ", cost unknown"
            badges.append(f'<span class="badge tree-usage">{_e(text)}</span>')
        parts = [
            f'<section class="run{" failed" if run.failed else ""}" id="run-{_e(run.run_id)}" '
            f'data-run-id="{_e(run.run_id)}" data-depth="{run.depth}">',
            f'<div class="run-head"><span class="title">run {_e(run.run_id)}</span>'
            f"{''.join(badges)}</div>",
        ]
        if started.get("root_prompt"):
            parts.append(f'<div class="root-prompt">request: {_e(started["root_prompt"])}</div>')
        parts.append(self.timeline(run))
        parts.extend(self.iteration(run, it) for it in run.iterations)
        parts.extend(self.run(child) for child in run.orphans)
        if finished is not None:
            error = finished.get("error")
            if error:
                parts.append(f'<div class="final error">error: {_e(error)}</div>')
            elif finished.get("response") or not run.failed:
                parts.append(f'<div class="final">answer: {_e(finished.get("response", ""))}</div>')
        parts.append("</section>")
        return "\n".join(parts)

    def timeline(self, run: Run) -> str:
        if not run.iterations:
            return ""
        end = (run.finished or {}).get("time") or run.iterations[-1].started_at
        span = max(end - run.iterations[0].started_at, 1e-3)
        bars = []
        for index, it in enumerate(run.iterations):
            stop = run.iterations[index + 1].started_at if index + 1 < len(run.iterations) else end
            total = max(stop - it.started_at, 1e-3)
            lm = (it.lm or {}).get("seconds", 0.0) or 0.0
            code = sum(c.data.get("seconds", 0.0) or 0.0 for c in it.cells)
            idle = max(total - lm - code, 0.0)
            scale = total
            title = f"iteration {it.number}: {total:.2f}s (LM {lm:.2f}s, code {code:.2f}s)"
            bars.append(
                f'<a href="#it-{_e(run.run_id)}-{it.number}" title="{_e(title)}" '
                f'class="{"err" if it.failed else ""}" style="flex-grow:{total / span:.4f}">'
                f'<span class="lm" style="flex-grow:{lm / scale:.4f}"></span>'
                f'<span class="exec" style="flex-grow:{code / scale:.4f}"></span>'
                f'<span class="idle" style="flex-grow:{idle / scale:.4f}"></span></a>'
            )
        return f'<div class="timeline" title="iterations over time">{"".join(bars)}</div>'

    def iteration(self, run: Run, it: Iteration) -> str:
        lm = it.lm or {}
        stats = [f"LM {lm.get('seconds', 0):.2f}s"] if lm else []
        if lm:
            stats.append(_tokens((lm.get("input_tokens", 0), lm.get("output_tokens", 0))))
        stats.append(f"{len(it.cells)} code block(s)")
        if it.failed:
            stats.append('<span class="badge err">error</span>')
        parts = [
            f'<details class="iteration" open id="it-{_e(run.run_id)}-{it.number}">',
            f"<summary>Iteration {it.number}<span class='stats'>{' · '.join(stats)}</span></summary>",
        ]
        if lm.get("text"):
            parts.append(
                f'<details class="reply"><summary>model reply ({len(lm["text"]):,} chars)'
                f"</summary><pre>{_e(lm['text'])}</pre></details>"
            )
        parts.extend(self.cell(it, cell) for cell in it.cells)
        parts.append("</details>")
        return "\n".join(parts)

    def cell(self, it: Iteration, cell: Cell) -> str:
        data = cell.data
        error = data.get("error")
        head = f"block {data.get('block', '?')} · {data.get('seconds', 0) or 0:.2f}s"
        if data.get("restarted"):
            head += " · sandbox restarted"
        parts = [
            f'<div class="cell{" error" if error else ""}" data-iteration="{_e(it.number)}" '
            f'data-block="{_e(data.get("block", ""))}">',
            f'<div class="cell-head">{_e(head)}</div>',
            f'<div class="code">{self.highlight(data.get("code", ""))}</div>',
        ]
        if data.get("stdout"):
            parts.append(f'<pre class="out">{_e(data["stdout"])}</pre>')
        if data.get("stderr"):
            parts.append(f'<pre class="stderr">{_e(data["stderr"])}</pre>')
        if error:
            parts.append(f'<pre class="error">{_e(error)}</pre>')
        if cell.subcalls:
            parts.append(self.subcalls(cell.subcalls))
        parts.append("</div>")
        return "\n".join(parts)

    def subcalls(self, calls: list[Subcall]) -> str:
        kinds: dict[str, int] = {}
        for call in calls:
            kinds[call.started.get("call", "?")] = kinds.get(call.started.get("call", "?"), 0) + 1
        errors = sum(1 for c in calls if c.error)
        summary = ", ".join(f"{n} {k}" for k, n in kinds.items())
        if errors:
            summary += f', <span class="badge err">{errors} failed</span>'
        opened = " open" if len(calls) <= SUBCALLS_SHOWN_OPEN or errors else ""
        items = "\n".join(self.subcall(c) for c in calls)
        return (
            f'<details class="subcalls"{opened}><summary>sub-calls: {summary}</summary>'
            f'<ul class="subcall-list">{items}</ul></details>'
        )

    def subcall(self, call: Subcall) -> str:
        done = call.finished or {}
        kind = call.started.get("call", "?")
        line = [f"<b>{_e(kind)}</b>"]
        if done:
            line.append(f"{done.get('seconds', 0) or 0:.2f}s")
            if done.get("input_tokens") is not None:
                line.append(_tokens((done.get("input_tokens", 0), done.get("output_tokens", 0))))
        else:
            line.append("(did not finish)")
        if call.child is not None:
            line.append(
                f'child run <a href="#run-{_e(call.child.run_id)}">{_e(call.child.run_id)}</a>'
            )
        parts = [
            f'<li class="subcall{" error" if call.error else ""}" data-call="{_e(kind)}">',
            " · ".join(line),
            f'<div class="preview">{_e(call.started.get("prompt_preview", ""))}</div>',
        ]
        if call.error:
            parts.append(f'<pre class="error">{_e(call.error)}</pre>')
        if call.child is not None:
            parts.append(self.run(call.child))
        parts.append("</li>")
        return "\n".join(parts)


def render_html(
    events: list[dict[str, Any]], title: str = "rlm trajectory", refresh: int = 0
) -> str:
    """The page for ``events`` (as ``RLMLogger.read`` returns them)."""
    roots = build_runs(events)
    renderer = _Renderer()
    totals = [r.tree_usage for r in roots if r.tree_usage]
    cost = sum(t[3] for t in totals if t[3] is not None)
    meta = (
        f"{len(roots)} root run(s) · {len(events):,} events · "
        f"{sum(t[1] + t[2] for t in totals):,} tokens" + (f" · ${cost:.4f}" if cost else "")
    )
    failed = sum(1 for e in events if e.get("kind") == "cell_executed" and e.get("error"))
    if failed:
        meta += f' · <span class="badge err">{failed} failing code block(s)</span>'
    head_refresh = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    body = "\n".join(renderer.run(r) for r in roots) or "<p>This log has no runs.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">{head_refresh}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_asset("viewer.css")}
{renderer.highlight.css()}</style>
</head><body>
<h1>{_e(title)}</h1>
<div class="page-meta">{meta}</div>
<div class="toolbar"><button id="expand-all">expand all</button><button id="collapse-all">collapse all</button></div>
{body}
<script>{_asset("viewer.js")}</script>
</body></html>
"""


def render_log(log_file: str, output: str | None = None) -> str:
    """Writes the page for ``log_file`` (default: next to it, ``.html``) and returns its path."""
    events = RLMLogger.read(log_file)
    output = output or os.path.splitext(log_file)[0] + ".html"
    page = render_html(events, title=os.path.basename(log_file))
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(page)
    return output


def serve_log(log_file: str, port: int, host: str = "127.0.0.1") -> None:
    """Serves the page on ``http://host:port/``, re-rendered on every request, so a log that is
    still being written shows the run's progress (the page reloads itself until it finishes)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            events = RLMLogger.read(log_file)
            unfinished = any(not r.finished for r in build_runs(events))
            page = render_html(events, os.path.basename(log_file), refresh=2 if unfinished else 0)
            data = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with http.server.ThreadingHTTPServer((host, port), Handler) as server:
        url = f"http://{host}:{server.server_port}/"
        print(
            f"rlm view: serving {log_file} on {url} (Ctrl-C to stop)", file=sys.stderr, flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()


# ---- command line --------------------------------------------------------------------------------


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rlm view``."""
    parser = subparsers.add_parser(
        "view",
        help="render a JSONL trajectory log as one self-contained HTML page",
        description="Writes LOGFILE's trajectory as HTML (iterations, code, output, sub-call tree, "
        "tokens, cost, errors); with --serve, serves it live instead.",
    )
    parser.add_argument("log_file", metavar="LOGFILE", help="a JSONL log written by RLMLogger")
    parser.add_argument("-o", "--output", help="HTML file to write (default: LOGFILE.html)")
    parser.add_argument(
        "--serve", type=int, metavar="PORT", help="serve on http://127.0.0.1:PORT/ (0: any port)"
    )
    parser.set_defaults(handler=_view_command)


def _view_command(args: argparse.Namespace) -> int:
    from rlm.errors import ConfigurationError

    if not os.path.isfile(args.log_file):
        raise ConfigurationError(
            f"no log file {args.log_file!r}; write one with RLM(logger=RLMLogger('logs')) or "
            "`rlm run --log-dir logs ...`"
        )
    if args.serve is not None:
        serve_log(args.log_file, args.serve)
        return 0
    print(render_log(args.log_file, args.output))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rlm.viewer ...``: ``rlm view ...`` without going through ``rlm.cli``."""
    parser = argparse.ArgumentParser(prog="rlm")
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["view", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
