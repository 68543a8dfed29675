"""The documented targets (``docs/benchmarks.md``), checked against a run: ``--gate``.

Timing belongs here, not in unit tests: a target is a median of fresh processes measured side by
side with its reference or floor, and a missed one is a finding for the bench's report, not a
flaky test. ``python -m bench --gate`` exits 1 when a target the run measured is missed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from .measure import Measurement


@dataclass(frozen=True)
class Target:
    """``measure`` of the row named ``row`` (in ``environment``) must be at most ``limit``."""

    row: str
    environment: str
    limit: float
    measure: str  # "ours": our median; "ratio": our median / the reference's median
    source: str

    def value(self, measurement: Measurement) -> float | None:
        if not measurement.ours:
            return None
        ours = statistics.median(measurement.ours)
        if self.measure == "ours":
            return ours
        if not measurement.reference:
            return None
        return ours / statistics.median(measurement.reference)


CHILDREN = "100 rlm_query_batched children × one 200 ms llm_query: wall time of the batch"

TARGETS = (
    Target(
        "root iteration overhead, 0 ms LM (completion of 30 iterations / 30)",
        "local", 0.5, "ratio", "per-iteration overhead ≤ 0.5× the reference",
    ),
    Target(
        "context 40M chars: load + first cell", "local", 2.0, "ours",
        "a 10M-token (~40M chars) context loads in ≤ 2 s",
    ),
    Target(
        "llm_query_batched(64) / raw aiohttp floor (64 POSTs), same run", "local", 1.15, "ours",
        "llm_query_batched(64) ≤ 1.15× the raw-client floor (issue 12)",
    ),
    Target(CHILDREN, "local", 0.6, "ours", "100 children ≤ 0.6 s locally (issue 12)"),
    Target(CHILDREN, "docker", 1.0, "ours", "100 children ≤ 1.0 s on docker (issue 12)"),
)  # fmt: skip


def check(measurements: Iterable[Measurement]) -> tuple[list[str], bool]:
    """One line per target (met, missed, or not measured in this run), and whether all the
    measured ones were met."""
    by_row = {(m.name, m.environment): m for m in measurements}
    lines, all_met = [], True
    for target in TARGETS:
        measurement = by_row.get((target.row, target.environment))
        what = f"{target.source} [{target.environment}]"
        if measurement is None or (value := target.value(measurement)) is None:
            lines.append(f"not measured  {what}")
            continue
        met = value <= target.limit
        all_met &= met
        unit = "×" if target.measure == "ratio" else f" {measurement.unit}"
        verdict = "met   " if met else "MISSED"
        lines.append(f"{verdict}        {what}: {value:.3g}{unit} (limit {target.limit:g})")
    return lines, all_met
