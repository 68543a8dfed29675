"""``verbose=True``: a readable live trace of a run on stderr, drawn with rich."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax

from rlm.events import RLMEvent

CODE_LINES = 12
OUTPUT_LINES = 6


class ProgressPrinter:
    """Prints each event as it happens: iterations, code, output, sub-calls in flight, tokens."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._tokens = 0

    def _indent(self, event: RLMEvent) -> str:
        return "  " * event.depth

    def __call__(self, event: RLMEvent) -> None:
        with self._lock:
            getattr(self, f"_on_{event.kind}", lambda e: None)(event)

    def _on_run_started(self, event: RLMEvent) -> None:
        data = event.data
        chars = data.get("context_chars")
        size = f", context {chars:,} chars" if isinstance(chars, int) else ""
        self.console.print(
            f"{self._indent(event)}[bold cyan]▶ run {event.run_id}[/] depth {event.depth} · "
            f"model {escape(str(data.get('model')))} · env {data.get('environment')}{size}"
        )

    def _on_lm_response(self, event: RLMEvent) -> None:
        data = event.data
        self._tokens += data.get("input_tokens", 0) + data.get("output_tokens", 0)
        self.console.print(
            f"{self._indent(event)}[bold]iteration {data['iteration']}[/] · LM {data['seconds']:.2f}s · "
            f"{data.get('input_tokens', 0):,} in / {data.get('output_tokens', 0):,} out · "
            f"tree total {self._tokens:,} tokens"
        )

    def _on_cell_executed(self, event: RLMEvent) -> None:
        data = event.data
        code_lines = data["code"].rstrip().splitlines()
        shown = "\n".join(code_lines[:CODE_LINES])
        if len(code_lines) > CODE_LINES:
            shown += f"\n# ... {len(code_lines) - CODE_LINES} more lines"
        self.console.print(
            Syntax(shown, "python", theme="ansi_dark", padding=(0, 2 + 2 * event.depth))
        )
        output = (data.get("stdout") or "").rstrip().splitlines()
        for line in output[:OUTPUT_LINES]:
            self.console.print(f"{self._indent(event)}  [dim]│ {escape(line[:160])}[/]")
        if len(output) > OUTPUT_LINES:
            self.console.print(
                f"{self._indent(event)}  [dim]│ ... {len(output) - OUTPUT_LINES} more lines[/]"
            )
        if data.get("error"):
            last = data["error"].strip().splitlines()[-1]
            self.console.print(f"{self._indent(event)}  [red]✗ {escape(last[:200])}[/]")
        if data.get("restarted"):
            self.console.print(f"{self._indent(event)}  [yellow]↻ sandbox restarted[/]")

    def _on_subcall_started(self, event: RLMEvent) -> None:
        self._in_flight += 1
        if self._in_flight in (1, 8, 32, 128) or self._in_flight % 256 == 0:
            self.console.print(
                f"{self._indent(event)}  [magenta]… {self._in_flight} sub-call(s) in flight[/]"
            )

    def _on_subcall_finished(self, event: RLMEvent) -> None:
        self._in_flight = max(0, self._in_flight - 1)
        self._tokens += event.data.get("input_tokens", 0) or 0
        self._tokens += event.data.get("output_tokens", 0) or 0
        if event.data.get("error"):
            self.console.print(
                f"{self._indent(event)}  [red]✗ {event.data['call']} failed: "
                f"{escape(str(event.data['error'])[:200])}[/]"
            )

    def _on_run_finished(self, event: RLMEvent) -> None:
        data = event.data
        cost = (data.get("usage") or {}).get("total_cost")
        cost_text = f" · ${cost:.4f}" if cost else ""
        self.console.print(
            f"{self._indent(event)}[bold green]■ run {event.run_id}[/] finished by "
            f"{data.get('finished_by')} in {data.get('seconds', 0):.2f}s{cost_text}"
        )
