"""What a cloud sandbox costs, estimated from each provider's published per-second rates.

An estimate, not a bill: it prices what the sandbox reserves (CPU and memory) for as long as it
lived, at the list rates below, as read on 2026-11-30. It leaves out free credits, plan fees,
regional multipliers, disk, network and GPUs, and billing by actual use where that is higher
(Modal bills ``max(request, use)``). Check the sources before relying on a figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rates:
    """USD per second: per CPU unit (Modal: physical core; the others: vCPU) and per GiB."""

    cpu: float
    gib: float
    source: str


RATES: dict[str, Rates] = {
    # Sandbox rates (3x a Function's): $0.00003942 / core / s, $0.00000672 / GiB / s.
    "modal": Rates(0.00003942, 0.00000672, "https://modal.com/pricing"),
    # $0.000014 / vCPU / s, $0.0000045 / GiB / s, disk included.
    "e2b": Rates(0.000014, 0.0000045, "https://e2b.dev/docs/faq/calculate-sandbox-price"),
    # $0.000014 / vCPU / s, $0.0000045 / GiB / s (storage beyond 5 GiB extra).
    "daytona": Rates(0.000014, 0.0000045, "https://www.daytona.io/pricing"),
    # Prime publishes no per-second sandbox rate (https://docs.primeintellect.ai/sandboxes):
    # its rows say so instead of guessing.
}


def reserved(provider: str, environment: Any) -> tuple[float, float]:
    """(CPU units, GiB) the provider bills ``environment``'s sandbox for, from its settings or
    the provider's documented defaults."""
    if provider == "modal":
        # Modal's default request is 0.125 physical cores.
        return float(environment.cpu or 0.125), environment.memory / 1024
    if provider == "e2b":
        # The template decides; E2B's default sandbox is 2 vCPU and 512 MiB.
        return 2.0, 0.5
    if provider == "daytona":
        # Daytona's default sandbox has 1 vCPU.
        return float(environment.cpu or 1), float(environment.memory_gb)
    return float(getattr(environment, "cpu_cores", 1.0)), float(
        getattr(environment, "memory_gb", None) or environment.memory_mb / 1024
    )


def estimate_usd(provider: str, cpu: float, gib: float, seconds: float) -> float | None:
    """The list price of ``cpu`` units and ``gib`` GiB for ``seconds``; None where the provider
    publishes no rate."""
    rates = RATES.get(provider)
    if rates is None:
        return None
    return seconds * (cpu * rates.cpu + gib * rates.gib)


__all__ = ["RATES", "Rates", "estimate_usd", "reserved"]
