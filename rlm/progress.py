"""``verbose=True``: a readable live trace of a run on stderr, drawn with rich."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape as _escape_markup
from rich.syntax import Syntax

from rlm.events import RLMEvent
from rlm.sanitize import for_terminal


def escape(text: str) -> str:
    """Sandbox or model text made safe for the trace: no rich markup, no terminal escapes."""
    return _escape_markup(for_terminal(text))


CODE_LINES = 12
OUTPUT_LINES = 6
TERMINAL_LINE_CHARS = 160
"""Output lines longer than this are cut on a terminal (marked); a redirected trace keeps them."""


class _Elapsed:
    """Spinner text with the seconds since it started, re-rendered on every refresh."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.monotonic()

    def __rich__(self) -> str:
        return f"{self.label} · {time.monotonic() - self.started:.1f}s"


class _Tally:
    """Sub-calls of one run since its last cell was shown: how many, the most at once, tokens."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.finished = 0
        self.failed = 0
        self.tokens = 0
        self.models: set[str] = set()


class ProgressPrinter:
    """Prints each event as it happens: iterations ("N of M"), the model's plan, code, output,
    the sub-calls each cell made (how many, at most how many at once, tokens), tokens so far.
    Lines of child runs carry their run id, so interleaved children can be told apart. On a
    terminal a spinner shows the time spent waiting for the model and the sub-calls in flight;
    colour only on a terminal, and never with ``NO_COLOR`` set (rich's own rule)."""

    def __init__(self, console: Console | None = None) -> None:
        # soft_wrap: a trace redirected to a file keeps whole lines (rich would wrap at 80).
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self._lock = threading.Lock()
        self._tokens = 0
        self._max_iterations: dict[str, int] = {}
        self._tallies: dict[str, _Tally] = {}
        self._status: Any = None
        self._elapsed = _Elapsed("")

    def _indent(self, event: RLMEvent) -> str:
        indent = "  " * event.depth
        return f"{indent}[dim]{event.run_id[:6]}[/] " if event.depth else indent

    def _tally(self, event: RLMEvent) -> _Tally:
        return self._tallies.setdefault(event.run_id, _Tally())

    def __call__(self, event: RLMEvent) -> None:
        with self._lock:
            getattr(self, f"_on_{event.kind}", lambda e: None)(event)

    # -- the spinner (a terminal only) ------------------------------------------------------

    def _spin(self, text: str) -> None:
        if not self.console.is_terminal:
            return
        if self._status is None:
            self._elapsed = _Elapsed(text)
            self._status = self.console.status(self._elapsed, spinner="dots")
            self._status.start()
        else:  # the same phase goes on: the clock keeps running
            self._elapsed.label = text

    def _stop_spinner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _on_iteration_started(self, event: RLMEvent) -> None:
        if event.depth == 0:
            number = event.data.get("iteration")
            self._spin(f"iteration {number}{self._of(event)}: waiting for the model")

    def _of(self, event: RLMEvent) -> str:
        total = self._max_iterations.get(event.run_id)
        return f" of {total}" if total else ""

    # -- lines --------------------------------------------------------------------------------

    def _on_run_started(self, event: RLMEvent) -> None:
        data = event.data
        if isinstance(data.get("max_iterations"), int):
            self._max_iterations[event.run_id] = data["max_iterations"]
        chars = data.get("context_chars")
        size = f", context {chars:,} chars" if isinstance(chars, int) else ""
        self.console.print(
            f"{self._indent(event)}[bold cyan]▶ run {event.run_id}[/] depth {event.depth} · "
            f"model {escape(str(data.get('model')))} · env {escape(str(data.get('environment')))}"
            f"{size}"
        )

    def _on_lm_response(self, event: RLMEvent) -> None:
        data = event.data
        if event.depth == 0:
            self._stop_spinner()
        self._tokens += data.get("input_tokens", 0) + data.get("output_tokens", 0)
        self.console.print(
            f"{self._indent(event)}[bold]iteration {data['iteration']}{self._of(event)}[/] · "
            f"LM {data['seconds']:.2f}s · "
            f"{data.get('input_tokens', 0):,} in / {data.get('output_tokens', 0):,} out · "
            f"tree total {self._tokens:,} tokens"
        )
        plan = str(data.get("text") or "").split("```", 1)[0].strip().splitlines()
        if plan:
            line = plan[0] if len(plan[0]) <= 200 else plan[0][:200] + "…"
            self.console.print(f"{self._indent(event)}  [italic]» {escape(line)}[/]")

    def _subcall_summary(self, event: RLMEvent) -> None:
        tally = self._tallies.pop(event.run_id, None)
        if tally is None or not (tally.finished or tally.in_flight):
            return
        failed = f", {tally.failed} failed" if tally.failed else ""
        models = f" to {escape(', '.join(sorted(tally.models)))}" if tally.models else ""
        self.console.print(
            f"{self._indent(event)}  [magenta]↳ {tally.finished} sub-call(s){models}, "
            f"up to {tally.peak} at once, {tally.tokens:,} tokens{failed}[/]"
        )

    def _on_cell_executed(self, event: RLMEvent) -> None:
        data = event.data
        code_lines = for_terminal(data["code"]).rstrip().splitlines()
        shown = "\n".join(code_lines[:CODE_LINES])
        if len(code_lines) > CODE_LINES:
            shown += f"\n# ... {len(code_lines) - CODE_LINES} more lines"
        if self.console.is_terminal:
            self.console.print(
                Syntax(shown, "python", theme="ansi_dark", padding=(0, 2 + 2 * event.depth))
            )
        else:  # a file or a pipe: whole lines, never cropped to a terminal's width
            pad = " " * (2 + 2 * event.depth)
            prefix = f"{event.run_id[:6]} " if event.depth else ""
            for line in shown.splitlines():
                self.console.print(pad + prefix + line, markup=False)
        self._subcall_summary(event)  # what the code above made, before what it printed
        output = (data.get("stdout") or "").rstrip().splitlines()
        for line in output[:OUTPUT_LINES]:
            if self.console.is_terminal and len(line) > TERMINAL_LINE_CHARS:
                line = f"{line[:TERMINAL_LINE_CHARS]}… (+{len(line) - TERMINAL_LINE_CHARS:,})"
            self.console.print(f"{self._indent(event)}  [dim]│ {escape(line)}[/]")
        if len(output) > OUTPUT_LINES:
            self.console.print(
                f"{self._indent(event)}  [dim]│ ... {len(output) - OUTPUT_LINES} more lines[/]"
            )
        if data.get("error"):
            last = data["error"].strip().splitlines()[-1]
            self.console.print(f"{self._indent(event)}  [red]✗ {escape(last[:200])}[/]")
        if data.get("restarted"):
            self.console.print(f"{self._indent(event)}  [yellow]↻ sandbox restarted[/]")

    def _in_flight(self) -> int:
        return sum(t.in_flight for t in self._tallies.values())

    def _on_subcall_started(self, event: RLMEvent) -> None:
        tally = self._tally(event)
        tally.in_flight += 1
        tally.peak = max(tally.peak, tally.in_flight)
        self._spin(f"{self._in_flight()} sub-call(s) in flight")

    def _on_subcall_finished(self, event: RLMEvent) -> None:
        tally = self._tally(event)
        tally.in_flight = max(0, tally.in_flight - 1)
        tally.finished += 1
        if event.data.get("model"):
            tally.models.add(str(event.data["model"]))
        used = (event.data.get("input_tokens", 0) or 0) + (event.data.get("output_tokens", 0) or 0)
        tally.tokens += used
        self._tokens += used
        if self._status is not None:
            in_flight = self._in_flight()
            if in_flight:
                self._spin(f"{in_flight} sub-call(s) in flight")
            else:
                self._stop_spinner()
        if event.data.get("error"):
            tally.failed += 1
            self.console.print(
                f"{self._indent(event)}  [red]✗ {event.data['call']} failed: "
                f"{escape(str(event.data['error'])[:200])}[/]"
            )

    def _on_run_finished(self, event: RLMEvent) -> None:
        data = event.data
        self._subcall_summary(event)
        if event.depth == 0:
            self._stop_spinner()
        self._max_iterations.pop(event.run_id, None)
        cost = (data.get("usage") or {}).get("total_cost")
        cost_text = f" · ${cost:.4f}" if cost else ""
        self.console.print(
            f"{self._indent(event)}[bold green]■ run {event.run_id}[/] finished by "
            f"{data.get('finished_by')} in {data.get('seconds', 0):.2f}s{cost_text}"
        )


class VerbosePrinter:
    """The reference package's verbose printer, by name: ``print_*`` methods that write a short
    trace to stderr, each a no-op when ``enabled`` is False. ``RLM(verbose=True)`` uses the live
    event trace (``ProgressPrinter``) instead; this class serves code written against the
    reference that drives a printer itself."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True, highlight=False)

    def _say(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    def print_header(self, *args: Any, **kwargs: Any) -> None:
        values = ", ".join(f"{k}={escape(str(v))}" for k, v in kwargs.items())
        self._say(f"[bold cyan]RLM[/] {values}")

    def print_metadata(self, metadata: Any) -> None:
        data = metadata.to_dict() if hasattr(metadata, "to_dict") else dict(metadata)
        self._say(
            f"[bold cyan]RLM[/] model {escape(str(data.get('root_model')))} · "
            f"env {escape(str(data.get('environment_type')))} · "
            f"max_depth {data.get('max_depth')} · max_iterations {data.get('max_iterations')}"
        )

    def print_iteration_start(self, iteration: int) -> None:
        self._say(f"[bold]iteration {iteration}[/]")

    def print_completion(self, response: Any, iteration_time: float | None = None) -> None:
        timing = f" ({iteration_time:.2f}s)" if iteration_time is not None else ""
        self._say(f"[dim]model{timing}:[/] {escape(str(response))[:2000]}")

    def print_code_execution(self, code_block: Any) -> None:
        self._say(escape(code_block.code))
        result = code_block.result
        if result.stdout:
            self._say(f"[dim]{escape(result.stdout)[:2000]}[/]")
        if result.stderr:
            self._say(f"[red]{escape(result.stderr)[:2000]}[/]")

    def print_subcall(
        self, model: str, prompt_preview: str, response_preview: str, *args: Any, **kwargs: Any
    ) -> None:
        self._say(
            f"  [magenta]↳ {escape(str(model))}[/] {escape(str(prompt_preview))[:120]} → "
            f"{escape(str(response_preview))[:120]}"
        )

    def print_iteration(self, iteration: Any, iteration_num: int) -> None:
        self.print_iteration_start(iteration_num)
        self.print_completion(iteration.response, iteration.iteration_time)
        for block in iteration.code_blocks:
            self.print_code_execution(block)

    def print_budget_exceeded(self, spent: float, budget: float) -> None:
        self._say(f"[red]budget exceeded: ${spent:.4f} of ${budget:.4f}[/]")

    def print_limit_exceeded(self, limit_type: str, details: str) -> None:
        self._say(f"[red]{escape(str(limit_type))} limit reached: {escape(str(details))}[/]")

    def print_compaction_status(self, current_tokens: int, threshold_tokens: int, *_: Any) -> None:
        self._say(f"[dim]context {current_tokens:,} of {threshold_tokens:,} tokens[/]")

    def print_compaction(self) -> None:
        self._say("[yellow]compacting the conversation[/]")

    def print_final_answer(self, answer: Any) -> None:
        self._say(f"[bold green]answer:[/] {escape(str(answer))}")

    def print_summary(
        self, total_iterations: int, total_time: float, usage_summary: Any = None
    ) -> None:
        self._say(f"[bold green]■[/] {total_iterations} iteration(s) in {total_time:.2f}s")
