"""Writes a suite run to its output folder: ``results.md``, ``results.json`` and PNG plots."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time
from typing import Any

from .measure import TABLE_HEADER, Measurement
from .providers import Provider


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, RAM, OS, Python."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        ram = f"{pages / 2**30:.0f} GiB"
    except (ValueError, OSError):
        ram = "unknown"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram": ram,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def markdown(
    measurements: list[Measurement], providers: list[Provider], repeats: int, reference: bool
) -> str:
    m = machine()
    lines = [
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['ram']} RAM, {m['os']}, "
        f"Python {m['python']}. Each figure: median of {repeats} fresh process(es) (min–max). "
        + (
            "Reference: `rlms` 0.1.3 from PyPI, its local REPL, same driver and scripted server."
            if reference
            else "Reference not run (`--no-reference`)."
        ),
        "",
        TABLE_HEADER + "\n".join(x.row() for x in measurements),
        "",
    ]
    skipped = [p for p in providers if not p.runnable]
    if skipped:
        lines += ["Environments skipped:", ""]
        lines += [f"- `{p.name}`: {p.reason}" for p in skipped]
        lines.append("")
    stand_ins = [p for p in providers if p.runnable and p.kind == "stand-in"]
    if stand_ins:
        lines.append(
            "Stand-in rows run the provider's adapter against a local wire-level stand-in: they "
            "test the adapter's overhead, not the provider's latency."
        )
    return "\n".join(lines) + "\n"


def write(
    out: pathlib.Path,
    measurements: list[Measurement],
    providers: list[Provider],
    repeats: int,
    reference: bool,
) -> list[pathlib.Path]:
    """Writes everything; returns the paths written (plots only when matplotlib is installed)."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(measurements, providers, repeats, reference)
    (out / "results.md").write_text(table)
    payload = {
        "machine": machine(),
        "repeats": repeats,
        "providers": [p.__dict__ for p in providers],
        "measurements": [x.to_dict() for x in measurements],
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    written = [out / "results.md", out / "results.json"]
    try:
        from .plots import plot_all
    except ImportError as error:
        note = f"plots skipped: {error.name} is not installed (pip install 'rlm[bench]')"
        print(f"bench: {note}")
        (out / "plots-skipped.txt").write_text(note + "\n")
        return written
    return written + plot_all(out, measurements)
