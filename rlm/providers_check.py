"""``rlm providers check [NAME...]``: one comparable row per cloud provider.

For each provider it starts a sandbox with the adapter the library uses and runs a short smoke:
the first cell, a trivial cell's round trip, a sub-call's round trip (``llm_query`` back to the
host), a 10 MB and a 50 MB context through the provider's file API, a runaway cell interrupted,
and the teardown. With the provider's credentials in the environment it runs against the real
service (and is billed); without them it runs against the provider's wire-level stand-in, driven
through the same SDK, and every row says so. The stand-ins are not part of the ``rlm`` wheel: they
ship as the ``rlm-standins`` distribution (``pip install ./standins`` from a source checkout), and
a row says how to get them when they are missing. A live row also estimates what its sandbox cost
from the provider's published per-second rates (:mod:`rlm.sandbox_pricing`); a stand-in row costs nothing
and says "stand-in" there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlm.errors import RLMError
from rlm.sandbox_pricing import estimate_usd, reserved

if TYPE_CHECKING:
    from rlm.environments.base import Environment

PROVIDERS = ("modal", "e2b", "daytona", "prime")
#: what each provider's SDK reads for credentials; all present = a live check
CREDENTIALS = {
    "modal": ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"),
    "e2b": ("E2B_API_KEY",),
    "daytona": ("DAYTONA_API_KEY",),
    "prime": ("PRIME_API_KEY",),
}
#: what a row says when the stand-ins are not installed
STANDINS_MISSING = (
    "the stand-ins are not installed (they ship separately as rlm-standins: "
    "pip install ./standins from an rlm source checkout), and no credentials are set"
)
SMOKE_CONTEXT_MB = (10, 50)
ROUND_TRIPS = 5


@dataclass
class Row:
    """One provider's results; a failed step leaves the later measurements empty."""

    provider: str
    target: str
    create_to_first_cell_s: float | None = None
    cell_rtt_ms: float | None = None
    callback_rtt_ms: float | None = None
    upload_mb_s: float | None = None
    teardown_s: float | None = None
    #: how long the sandbox lived (create to the end of its teardown)
    sandbox_s: float | None = None
    #: (CPU units, GiB) the sandbox reserved, as the provider bills them
    reserved: tuple[float, float] | None = None
    failed_step: str | None = None
    error: str = ""

    @property
    def passed(self) -> bool:
        return self.failed_step is None

    @property
    def live(self) -> bool:
        return self.target == "live"

    @property
    def cost_usd(self) -> float | None:
        """The sandbox's estimated list price (live rows with a published rate only)."""
        if not self.live or self.reserved is None or self.sandbox_s is None:
            return None
        return estimate_usd(self.provider, *self.reserved, self.sandbox_s)


HEADER = (
    f"{'provider':<9} {'target':<30} {'create->cell':>12} {'cell RTT':>9} {'callback RTT':>12} "
    f"{'upload':>11} {'teardown':>9} {'cost (est.)':>14}  result"
)


def format_cost(row: Row) -> str:
    """The cost column: an estimate for a live row, "stand-in" for a stand-in's."""
    if not row.live:
        return "stand-in"
    cost = row.cost_usd
    if cost is not None:
        return f"${cost:.4f} est."
    return "no public rate" if row.reserved is not None else "-"


def format_row(row: Row) -> str:
    def number(value: float | None, unit: str, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f} {unit}"

    result = "pass" if row.passed else f"FAIL at {row.failed_step}: {row.error}"
    return (
        f"{row.provider:<9} {row.target:<30} {number(row.create_to_first_cell_s, 's'):>12} "
        f"{number(row.cell_rtt_ms, 'ms', 1):>9} {number(row.callback_rtt_ms, 'ms', 1):>12} "
        f"{number(row.upload_mb_s, 'MB/s', 1):>11} {number(row.teardown_s, 's'):>9} "
        f"{format_cost(row):>14}  {result}"
    )


def has_credentials(name: str) -> bool:
    return all(os.environ.get(variable) for variable in CREDENTIALS[name])


class _EchoHandler:
    """Answers the smoke's sub-calls without a model."""

    async def complete(self, request: Any) -> Any:
        from rlm.protos import rlm_sandbox_pb2 as pb

        return pb.CompleteReply(text=f"echo:{request.prompt}", input_tokens=1, output_tokens=1)

    async def subcall(self, request: Any) -> Any:
        return await self.complete(request)

    async def call_tool(self, request: Any) -> Any:
        raise RLMError(f"the providers check registers no tools (asked for {request.name!r})")


@contextlib.contextmanager
def standin(name: str) -> Iterator[dict[str, Any]]:
    """The provider's stand-in, running (with the developer's settings of that provider hidden
    from its SDK), and the environment_kwargs that reach it."""
    if name not in PROVIDERS:
        raise RLMError(f"no stand-in for {name!r}; choose from {', '.join(PROVIDERS)}")
    from rlm_standins.launch import launch

    with launch(name) as launched:
        yield launched.kwargs


async def _smoke(name: str, row: Row, kwargs: dict[str, Any]) -> None:
    """Runs the smoke, filling ``row``; the step under way is in ``row.failed_step`` until it
    passes."""
    from rlm.broker.server import BrokerServer
    from rlm.environments import environment_class

    broker = BrokerServer()
    await broker.start()
    env: Any = None
    try:
        row.failed_step = "create"
        created = started = time.perf_counter()
        make: Callable[..., Environment] = environment_class(name)
        env = make(broker=broker, handler=_EchoHandler(), label="check", **kwargs)
        await env.start()
        row.reserved = reserved(name, env)
        row.failed_step = "first cell"
        await _expect(env, "print('ready')", "ready\n")
        row.create_to_first_cell_s = time.perf_counter() - started

        row.failed_step = "cell"
        row.cell_rtt_ms = await _median_ms(env, "print(1)", "1\n")
        row.failed_step = "callback"
        row.callback_rtt_ms = await _median_ms(env, "print(llm_query('p'))", "echo:p\n")

        row.failed_step = "upload"
        rates = []
        for megabytes in SMOKE_CONTEXT_MB:
            size = megabytes * 1_000_000
            started = time.perf_counter()
            await env.load_context("u" * (size - 3) + "END")
            await _expect(env, "print(len(context), context[-3:])", f"{size} END\n")
            rates.append(megabytes / (time.perf_counter() - started))
        row.upload_mb_s = max(rates)

        row.failed_step = "kill"
        result = await env.execute("while True: pass", timeout=1.0)
        if not (result.interrupted or result.restarted):
            raise RLMError(f"a runaway cell was not stopped: {result}")
        await _expect(env, "print('alive')", "alive\n")

        row.failed_step = "teardown"
        started = time.perf_counter()
        env, closing = None, env
        await closing.aclose()
        await broker.aclose_resources()  # the sandbox a tree's sessions share goes with the tree
        row.teardown_s = time.perf_counter() - started
        row.sandbox_s = time.perf_counter() - created
        row.failed_step = None
    finally:
        if env is not None:
            with contextlib.suppress(Exception):
                await env.aclose()
        await broker.aclose()


async def _expect(env: Any, code: str, stdout: str) -> None:
    result = await env.execute(code)
    if result.stdout != stdout:
        raise RLMError(f"expected {stdout!r}, got {result.stdout[:200]!r} {result.error or ''}")


async def _median_ms(env: Any, code: str, stdout: str) -> float:
    times = []
    for _ in range(ROUND_TRIPS):
        started = time.perf_counter()
        await _expect(env, code, stdout)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def check(name: str, *, force_standin: bool = False) -> Row:
    """Runs the smoke for one provider: live with its credentials, else on its stand-in."""
    from rlm.broker.loop import run_sync

    live = has_credentials(name) and not force_standin
    missing = " / ".join(CREDENTIALS[name])
    row = Row(name, "live" if live else f"stand-in (no {missing})"[:30])
    try:
        if live:
            run_sync(_smoke(name, row, {}))
        else:
            with standin(name) as kwargs:
                run_sync(_smoke(name, row, kwargs))
    except ImportError as error:
        if (error.name or "").split(".")[0] == "rlm_standins":
            row.failed_step = row.failed_step or "stand-in"
            row.error = f"{STANDINS_MISSING} ({missing})"
        else:
            row.failed_step = row.failed_step or "sdk"
            row.error = f"{error}; pip install 'rlm[{name}]'"
    except (TimeoutError, RLMError, OSError) as error:
        row.failed_step = row.failed_step or "setup"
        row.error = f"{type(error).__name__}: {error}".splitlines()[0][:200]
    return row


def _command(args: argparse.Namespace) -> int:
    names = args.names or list(PROVIDERS)
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown:
        print(f"unknown provider {unknown[0]!r}: choose from {', '.join(PROVIDERS)}")
        return 2
    print(HEADER, flush=True)
    rows = []
    for name in names:
        row = check(name, force_standin=args.standin)
        rows.append(row)
        print(format_row(row), flush=True)
    return 0 if all(row.passed for row in rows) else 1


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rlm providers check``."""
    parser = subparsers.add_parser(
        "providers",
        help="check the cloud sandbox providers (one comparable row each)",
        description="Cloud sandbox providers: `check` runs a short smoke on each.",
    )
    commands = parser.add_subparsers(dest="providers_command", required=True)
    check_parser = commands.add_parser(
        "check",
        help="create a sandbox per provider and time the smoke",
        description="For each provider (default: all): create a sandbox, run the first cell, "
        "time a cell and a sub-call round trip, upload a 10 MB and a 50 MB context, interrupt a "
        "runaway cell and tear down. Live where the provider's credentials are set (billed, "
        "with a cost estimate from the provider's published rates), else against its local "
        "stand-in, as each row says.",
    )
    check_parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(PROVIDERS))
    check_parser.add_argument(
        "--standin", action="store_true", help="use the stand-ins even where credentials are set"
    )
    check_parser.set_defaults(handler=_command)
