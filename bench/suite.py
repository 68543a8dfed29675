"""The workloads of ``python -m bench``: each runs the driver in fresh processes per system and
environment and turns the driver's results into ``Measurement`` rows."""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlm.testing import ScriptedLMServer

from . import scripts
from .measure import DriverError, Measurement, percentile, run_driver
from .providers import WARM_POOL_KWARGS, Provider
from .standins import RunningStandIn

WORKLOADS = ("iteration", "single", "batched", "load", "fanout", "children", "cold", "trees")


@dataclass
class SuiteConfig:
    """Sizes and repeats of one suite run (``--quick`` shrinks all of them)."""

    repeats: int = 5
    iterations: int = 30
    single_samples: int = 200
    batch_sizes: list[int] = field(default_factory=lambda: [8, 64, 256])
    latency: float = 0.2
    load_sizes: list[int] = field(
        default_factory=lambda: [1_000_000, 10_000_000, 40_000_000, 100_000_000]
    )
    fanout_children: int = 16
    fanout_leaf_calls: int = 4
    fanout_leaf_latency: float = 0.05
    children: int = 100
    children_latency: float = 0.2
    only: tuple[str, ...] = WORKLOADS
    #: added to every environment's environment_kwargs (ours only: ``--environment-kwargs``)
    environment_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick(cls) -> SuiteConfig:
        return cls(
            repeats=1,
            iterations=5,
            single_samples=50,
            batch_sizes=[8],
            load_sizes=[1_000_000],
            fanout_children=4,
            fanout_leaf_calls=2,
            children=4,
        )


Results = dict[str, list[dict[str, Any]]]
"""system name -> the driver results of each repeat."""


class Suite:
    """Runs the selected workloads for every runnable provider against one scripted server."""

    def __init__(
        self,
        config: SuiteConfig,
        systems: dict[str, str],
        providers: list[Provider],
        server: ScriptedLMServer,
        standins: dict[str, RunningStandIn] | None = None,
    ) -> None:
        self.config = config
        self.systems = systems
        self.providers = [p for p in providers if p.runnable]
        self.server = server
        #: cloud providers run against a stand-in started by this process (``--standins``)
        self.standins = standins or {}
        self.measurements: list[Measurement] = []

    # ---- plumbing ------------------------------------------------------------------------------

    def _collect(
        self,
        workload: str,
        params: dict[str, Any],
        provider: Provider,
        after_each: Callable[[], None] | None = None,
        ours_only: bool = False,
    ) -> tuple[Results, dict[str, str]]:
        """Driver results per system (the reference runs only in ``local``, and not at all for
        a workload that is ``ours_only``), and failures. ``after_each`` runs after each of our
        repeats (a paired measurement, same conditions)."""
        results: Results = {}
        failures: dict[str, str] = {}
        for system, python in self.systems.items():
            if system == "reference" and (ours_only or provider.name != "local"):
                continue
            standin = self.standins.get(provider.name)
            params_for = {
                **params,
                "base_url": self.server.base_url,
                "environment": provider.name,
                "environment_kwargs": {
                    **(standin.environment_kwargs if standin is not None else {}),
                    **(self.config.environment_kwargs if system == "ours" else {}),
                    **(params.get("environment_kwargs") or {}),
                },
            }
            if system == "ours" and standin is not None and standin.python is not None:
                python = standin.python  # the provider's SDK lives in a venv of its own
            try:
                results[system] = []
                for _ in range(self.config.repeats):
                    results[system].append(run_driver(python, workload, params_for))
                    if after_each is not None and system == "ours":
                        after_each()
            except DriverError as error:
                if system == "ours" and provider.name == "local":
                    raise  # our own local run failing is a bug, not a data point
                last = str(error).strip().splitlines()[-1][:200]
                failures[system] = f"{system} failed: {last}"
                print(f"bench: {error}", file=sys.stderr)
        return results, failures

    def _add(
        self,
        m: Measurement,
        results: Results,
        failures: dict[str, str],
        pick: Callable[[dict[str, Any]], float | None],
    ) -> Measurement:
        for system, runs in results.items():
            values = [pick(run) for run in runs]
            getattr(m, system).extend(v for v in values if v is not None)
        notes = [m.note, *failures.values()]
        m.note = "; ".join(n for n in notes if n)
        self.measurements.append(m)
        print(m.row(), file=sys.stderr)
        return m

    def run(self) -> list[Measurement]:
        for provider in self.providers:
            for workload in WORKLOADS:
                if workload in self.config.only:
                    getattr(self, f"_{workload}")(provider)
        return self.measurements

    # ---- workloads -----------------------------------------------------------------------------

    def _iteration(self, provider: Provider) -> None:
        n = self.config.iterations
        self.server.set_script(scripts.iteration_script(n))
        results, failures = self._collect("iteration_overhead", {"iterations": n}, provider)
        self._add(
            Measurement(
                f"root iteration overhead, 0 ms LM (completion of {n} iterations / {n})",
                "ms / iteration",
                provider.label,
            ),
            results,
            failures,
            lambda r: r["per_iteration"] * 1000,
        )
        self._add(
            Measurement(
                "root iteration overhead, marginal: (T(N) - T(1)) / (N - 1)",
                "ms / iteration",
                provider.label,
                note="reference: meaningless (a fixed ~0.5 s per completion dominates T(1))",
                comparable=False,
            ),
            results,
            failures,
            lambda r: r["marginal_per_iteration"] * 1000,
        )

    def _single(self, provider: Provider) -> None:
        samples = self.config.single_samples
        self.server.set_script(scripts.single_call_script(samples))
        results, failures = self._collect("single_call", {}, provider)
        for q in (50, 99):
            self._add(
                Measurement(
                    f"llm_query round trip, 0 ms LM (p{q} of {samples})", "ms", provider.label
                ),
                results,
                failures,
                lambda r, q=q: percentile(r["samples"], q) * 1000,
            )

    def _batched(self, provider: Provider) -> None:
        latency = self.config.latency
        for n in self.config.batch_sizes:
            self.server.set_script(scripts.batched_script(n, latency))
            floors: list[float] = []
            params = {"base_url": self.server.base_url, "n": n, "prompt": scripts.FLOOR_PROMPT}

            def floor(params: dict[str, Any] = params, floors: list[float] = floors) -> None:
                floors.append(run_driver(sys.executable, "raw_floor", params)["seconds"])

            results, failures = self._collect("batched", {}, provider, after_each=floor)
            m = Measurement(
                f"llm_query_batched({n}), {latency * 1000:g} ms LM",
                "× one call",
                provider.label,
                group="batched",
                x=n,
            )
            self._add(m, results, failures, lambda r: r["cell_seconds"] / latency)
            self._floor_ratio(n, results, floors, provider)

    def _floor_ratio(
        self, n: int, results: Results, floors: list[float], provider: Provider
    ) -> None:
        """The batch's cell time over the floor (``n`` raw aiohttp POSTs from a fresh process,
        ``driver.raw_floor``), each of our repeats against the floor sample taken right after
        it; the reference's against the median floor."""
        m = Measurement(
            f"llm_query_batched({n}) / raw aiohttp floor ({n} POSTs), same run",
            "× floor",
            provider.label,
            note=f"floor {Measurement.summary([f * 1000 for f in floors])} ms" if floors else "",
        )
        for system, runs in results.items():
            if system == "ours":
                pairs = zip(runs, floors, strict=False)
            else:
                pairs = ((r, statistics.median(floors)) for r in runs if floors)
            getattr(m, system).extend(r["cell_seconds"] / f for r, f in pairs)
        self.measurements.append(m)
        print(m.row(), file=sys.stderr)

    def _load(self, provider: Provider) -> None:
        self.server.set_script(scripts.load_script())
        for chars in self.config.load_sizes:
            results, failures = self._collect("context_load", {"chars": chars}, provider)
            for system, runs in results.items():
                for run in runs:
                    if run["response"] != str(chars):
                        raise RuntimeError(f"{system} answered {run['response']!r} for {chars}")
            size = f"{chars / 1e6:g}M chars"
            self._add(
                Measurement(
                    f"context {size}: load + first cell",
                    "s",
                    provider.label,
                    group="context-time",
                    x=chars,
                ),
                results,
                failures,
                lambda r: r["seconds"],
            )
            rss = self._add(
                Measurement(
                    f"context {size}: peak host RSS",
                    "MB",
                    provider.label,
                    group="context-rss",
                    x=chars,
                ),
                results,
                failures,
                lambda r: r["peak_rss_mb"],
            )
            ours = rss.median("ours")
            if ours is not None:
                rss.note = "; ".join(
                    n for n in (rss.note, f"ours = {ours * 2**20 / chars:.2f}× context") if n
                )
            self._add(
                Measurement(
                    f"context {size}: runner peak RSS (child VmHWM)",
                    "MB",
                    provider.label,
                    note="the sandbox's runner process when it is our child; "
                    "reference: in-process REPL, no child",
                    group="context-runner",
                    x=chars,
                ),
                {k: v for k, v in results.items() if k == "ours"},
                {},
                lambda r: r["runner_peak_rss_mb"],
            )

    def _fanout(self, provider: Provider) -> None:
        c = self.config
        self.server.set_script(
            scripts.fanout_script(c.fanout_children, c.fanout_leaf_calls, c.fanout_leaf_latency)
        )
        params = {"max_concurrent_subcalls": c.fanout_children}
        results, failures = self._collect("fanout", params, provider)
        for system, runs in results.items():
            wrong = [r["children_ok"] for r in runs if r["children_ok"] != c.fanout_children]
            if wrong:
                failures[system] = (
                    f"{system}: only {wrong[0]}/{c.fanout_children} children answered"
                )
        ideal = c.fanout_leaf_calls * c.fanout_leaf_latency
        self._add(
            Measurement(
                f"depth-2 fan-out: {c.fanout_children} rlm_query children × "
                f"{c.fanout_leaf_calls} llm_query ({c.fanout_leaf_latency * 1000:g} ms LM)",
                "s",
                provider.label,
                note=f"max_depth=2, max_concurrent_subcalls={c.fanout_children}; ideal {ideal:g} s",
            ),
            results,
            failures,
            lambda r: r["cell_seconds"],
        )

    def _children(self, provider: Provider) -> None:
        c = self.config
        self.server.set_script(scripts.fanout_script(c.children, 1, c.children_latency))
        params = {"max_concurrent_subcalls": c.children}
        standin = self.standins.get(provider.name)
        created: list[int] = []

        def count_creates() -> None:
            if standin is not None:
                created.append(standin.sandboxes_created() - sum(created))

        results, failures = self._collect("children", params, provider, after_each=count_creates)
        for run, count in zip(results.get("ours", []), created, strict=False):
            run["containers"] = count
        for system, runs in results.items():
            wrong = [r["children_ok"] for r in runs if r["children_ok"] != c.children]
            if wrong:
                failures[system] = f"{system}: only {wrong[0]}/{c.children} children answered"
        title = (
            f"{c.children} rlm_query_batched children × one "
            f"{c.children_latency * 1000:g} ms llm_query"
        )
        setting = f"max_depth=2, max_concurrent_subcalls={c.children}"
        rows = [
            ("wall time of the batch", "s", "cell_seconds", f"{setting}; ideal ~0.2 s"),
            ("sessions started", "count", "sandboxes", "ours: SandboxEnvironment starts"),
            (
                "sandboxes created",
                "count",
                "containers",
                "docker: docker-py creates; cloud stand-ins: creates in their call log",
            ),
            ("host threads at peak", "count", "peak_threads", "driver process, /proc Threads"),
        ]
        for label, unit, key, note in rows:
            self._add(
                Measurement(f"{title}: {label}", unit, provider.label, note=note),
                {
                    s: runs
                    for s, runs in results.items()
                    if key not in ("sandboxes", "containers") or s == "ours"
                },
                dict(failures),
                lambda r, key=key: r[key],
            )

    def _trees(self, provider: Provider) -> None:
        """The second of two trees on one SandboxPool: its root session's start, with no pool
        (its sandbox created then) and with ``pool_size=1`` (taken ready from the pool)."""
        self.server.set_script(scripts.finish_script())
        for name, kwargs, note in (
            ("cold, no pool", {}, "the sandbox is created when the tree starts"),
            (
                "from the warm pool (pool_size=1)",
                {"pool_size": 1},
                "made ready while the first tree ran; 1 s settle after it",
            ),
        ):
            params = {"environment_kwargs": kwargs, "settle_seconds": 1.0}
            # ours only: the reference has no warm pool (no SandboxPool) and no tree sandbox
            results, failures = self._collect("tree_starts", params, provider, ours_only=True)
            self._add(
                Measurement(
                    f"tree start, {name}: `startup_seconds` of the second tree's root session",
                    "ms",
                    provider.label,
                    note=note,
                ),
                results,
                failures,
                lambda r: r["tree_start_seconds"][1] * 1000,
            )

    def _cold(self, provider: Provider) -> None:
        self.server.set_script(scripts.finish_script())
        results, failures = self._collect("cold_start", {}, provider)
        rows = [
            ("cold start: `import rlm`", "s", "import_seconds", 1, ""),
            (
                "cold start: RLM() + first 1-iteration completion, 0 ms LM",
                "s",
                "first_seconds",
                1,
                "includes one LM round trip (~2 ms)",
            ),
            (
                "warm: next 1-iteration completion (new sandbox)",
                "ms",
                "warm_seconds",
                1000,
                "pool off (default): a fresh sandbox per completion"
                if provider.name in WARM_POOL_KWARGS
                else "no warm pool: a fresh sandbox per completion",
            ),
        ]
        for name, unit, key, scale, note in rows:
            self._add(
                Measurement(name, unit, provider.label, note=note),
                results,
                failures,
                lambda r, key=key, scale=scale: r[key] * scale,
            )
        self._add(
            Measurement(
                "sandbox start (`startup_seconds` of the first sandbox)",
                "ms",
                provider.label,
                note="ours only: the reference's local REPL starts in-process",
            ),
            {k: v for k, v in results.items() if k == "ours"},
            {},
            lambda r: (
                statistics.median(r["sandbox_start_seconds"][:1]) * 1000
                if r["sandbox_start_seconds"]
                else None
            ),
        )
        pool_kwargs = WARM_POOL_KWARGS.get(provider.name)
        if pool_kwargs is None:
            return
        params = {"environment_kwargs": pool_kwargs, "settle_seconds": 1.0}
        results, failures = self._collect("cold_start", params, provider)
        self._add(
            Measurement(
                f"warm-pool acquire ({', '.join(f'{k}={v}' for k, v in pool_kwargs.items())}): "
                "`startup_seconds` of the second sandbox",
                "ms",
                provider.label,
                note="the pool refilled for 1 s after the first completion",
            ),
            {k: v for k, v in results.items() if k == "ours"},
            failures,
            lambda r: (
                r["sandbox_start_seconds"][1] * 1000
                if len(r["sandbox_start_seconds"]) > 1
                else None
            ),
        )
