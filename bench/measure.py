"""One figure of the suite (``Measurement``) and how a driver process is run to produce it."""

from __future__ import annotations

import json
import pathlib
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

DRIVER = pathlib.Path(__file__).resolve().parent / "driver.py"


@dataclass
class Measurement:
    """Samples of one workload in one environment for both systems, plus why a cell is empty.

    ``ours`` and ``reference`` hold one value per fresh process; the table shows their median
    with min and max. ``note`` explains a missing or unusual value (it is printed in the table).
    """

    name: str
    unit: str
    environment: str = "local"
    ours: list[float] = field(default_factory=list)
    reference: list[float] = field(default_factory=list)
    note: str = ""
    group: str = ""
    """Which plot the row belongs to (``batched``, ``context``...); empty for the summary plot."""
    x: float | None = None
    """The workload's size (batch size, context characters) for scaling plots."""
    comparable: bool = True
    """False when the two systems' figures mean different things: no ratio is shown."""

    @staticmethod
    def summary(values: list[float]) -> str:
        if not values:
            return "n/a"
        return f"{statistics.median(values):.4g} ({min(values):.3g}–{max(values):.3g})"

    def median(self, system: str) -> float | None:
        values = getattr(self, system)
        return statistics.median(values) if values else None

    def ratio(self) -> float | None:
        """ours / reference of the medians; None when either is missing or not positive, or the
        row is not comparable."""
        ours, reference = self.median("ours"), self.median("reference")
        if not self.comparable or ours is None or reference is None or ours <= 0 or reference <= 0:
            return None
        return ours / reference

    def row(self) -> str:
        ratio = self.ratio()
        reference = self.summary(self.reference) if self.reference else "—"
        return (
            f"| {self.name} | {self.environment} | {self.unit} | {self.summary(self.ours)} | "
            f"{reference} | {'n/a' if ratio is None else f'{ratio:.2f}×'} | {self.note} |"
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_ours=self.median("ours"), median_reference=self.median("reference"))
        data["ratio"] = self.ratio()
        return data


TABLE_HEADER = (
    "| workload | environment | unit | ours | reference | ours / reference | note |\n"
    "|---|---|---|---|---|---|---|\n"
)


class DriverError(RuntimeError):
    """A driver process failed or printed no result line; the message carries its stderr."""


def run_driver(python: str, workload: str, params: dict[str, Any], timeout: float = 900) -> dict:
    """Runs ``driver.py WORKLOAD PARAMS`` under ``python`` in a fresh process; returns its result.

    A fresh process per sample keeps imports, caches and peak RSS from leaking between samples.
    """
    completed = subprocess.run(
        [python, str(DRIVER), workload, json.dumps(params)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd="/tmp",
    )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line[len("BENCH-RESULT ") :])
    raise DriverError(
        f"{workload} failed under {python} (exit {completed.returncode}):\n"
        f"{completed.stderr[-3000:]}"
    )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) by linear interpolation; ``values`` need not be sorted."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
