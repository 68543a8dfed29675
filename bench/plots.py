"""PNG plots of a suite run (matplotlib, headless). Imported only when matplotlib is installed."""

from __future__ import annotations

import math
import pathlib
import statistics
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or servers
import matplotlib.pyplot as plt

from .measure import Measurement

Series = tuple[str, str]
"""(system, environment label)."""


def _series(m: Measurement) -> list[tuple[str, list[float]]]:
    out = []
    if m.ours:
        out.append((f"ours · {m.environment}", m.ours))
    if m.reference:
        out.append((f"reference · {m.environment}", m.reference))
    return out


def _summary(out: pathlib.Path, rows: list[Measurement]) -> pathlib.Path | None:
    """One small bar chart per workload: median bars with min–max whiskers per system/env."""
    by_name: dict[str, list[Measurement]] = defaultdict(list)
    for m in rows:
        if not m.group and (m.ours or m.reference):
            by_name[m.name].append(m)
    if not by_name:
        return None
    columns = 3
    rows_n = math.ceil(len(by_name) / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(5 * columns, 3.2 * rows_n), squeeze=False)
    for ax, (name, group) in zip(axes.flat, by_name.items(), strict=False):
        labels, medians, low, high = [], [], [], []
        for m in group:
            for label, values in _series(m):
                median = statistics.median(values)
                labels.append(label)
                medians.append(median)
                low.append(median - min(values))
                high.append(max(values) - median)
        colors = ["tab:blue" if lb.startswith("ours") else "tab:gray" for lb in labels]
        ax.bar(range(len(labels)), medians, yerr=[low, high], color=colors, capsize=3)
        ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=7)
        ax.set_title(name, fontsize=8, wrap=True)
        ax.set_ylabel(group[0].unit, fontsize=8)
    for ax in list(axes.flat)[len(by_name) :]:
        ax.axis("off")
    fig.tight_layout()
    path = out / "summary.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _scaling(
    out: pathlib.Path, rows: list[Measurement], groups: list[str], filename: str, logx: bool
) -> pathlib.Path | None:
    """Median (with min–max band) against the workload size, one line per system/env."""
    panels = [[m for m in rows if m.group == g and m.x is not None] for g in groups]
    panels = [p for p in panels if p]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=True):
        lines: dict[str, list[tuple[float, list[float]]]] = defaultdict(list)
        for m in panel:
            for label, values in _series(m):
                lines[label].append((float(m.x or 0), values))
        for label, points in lines.items():
            points.sort()
            xs = [p[0] for p in points]
            ax.plot(xs, [statistics.median(p[1]) for p in points], marker="o", label=label)
            ax.fill_between(xs, [min(p[1]) for p in points], [max(p[1]) for p in points], alpha=0.2)
        if logx:
            ax.set_xscale("log")
        ax.set_ylabel(panel[0].unit)
        ax.set_title(panel[0].name.split(":")[-1].strip(), fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / filename
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(out: pathlib.Path, rows: list[Measurement]) -> list[pathlib.Path]:
    """Writes summary.png, batched.png and context.png (each only if it has data)."""
    paths = [
        _summary(out, rows),
        _scaling(out, rows, ["batched"], "batched.png", logx=True),
        _scaling(
            out, rows, ["context-time", "context-rss", "context-runner"], "context.png", logx=True
        ),
    ]
    return [p for p in paths if p is not None]
