"""Suites that run in a pytest process of their own (a provider's or a framework's venv, or the
cloud contract suite with the stand-ins' link shaped): started as soon as collection ends, run
beside the rest of the session, and awaited by their tests at its end.

Such a suite spends most of its wall time waiting (on sandboxes, stand-ins and, when shaped, on
the link's delays), so waiting for each in turn left the machine idle for minutes. A module
declares its runs with :class:`Plan` (``SUITE_RUNS``) and marks the tests that check them
``@pytest.mark.suite_run``; ``tests/conftest.py`` then moves those tests to the end of the
session and starts, when collection ends, the run of every one selected, at most
:data:`AT_ONCE` at a time. Each test waits for its own run and checks its result exactly as it
did with ``subprocess.run``. A run's output goes to files, not pipes, and each run is a session
(process group) of its own, killed whole if its timeout passes or the session ends first.

A sub-suite checks its own leaks (runners and containers of its own pid); tests in this process
that look for runners of their own use :func:`our_runner_pids`, which leaves out those of the
runs in flight.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

import pytest

from rlm.testing.leaks import runner_pids

#: runs in flight at once (they mostly wait, but each has bursts of work: two cores here)
AT_ONCE = 3

#: ``command(value)``: the run's arguments and Popen keywords; it may skip or fail the test
#: instead (``pytest.skip``/``pytest.fail``), as the test then does, and nothing is started
Command = Callable[[Any], tuple[Sequence[str], dict[str, Any]]]


@dataclass(frozen=True)
class Plan:
    """A module's runs: one per value of its tests' parameter ``argname``."""

    argname: str
    command: Command
    timeout: float


@dataclass
class SuiteRun:
    args: list[str]
    popen: dict[str, Any]
    timeout: float
    process: subprocess.Popen[bytes] | None = None
    stdout: IO[bytes] | None = None
    stderr: IO[bytes] | None = None
    deadline: float = 0.0

    def start(self) -> None:
        # Closed once read (wait) or when the run is killed (kill).
        self.stdout = tempfile.TemporaryFile()  # noqa: SIM115
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.deadline = time.monotonic() + self.timeout
        self.process = subprocess.Popen(
            self.args,
            stdout=self.stdout,
            stderr=self.stderr,
            start_new_session=True,
            **self.popen,
        )

    def wait(self) -> subprocess.CompletedProcess[str]:
        """What ``subprocess.run(..., capture_output=True, text=True, timeout=...)`` returns
        (and raises: ``TimeoutExpired`` once the timeout has passed since the run started)."""
        assert self.process is not None and self.stdout and self.stderr
        try:
            self.process.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise subprocess.TimeoutExpired(self.args, self.timeout) from None
        return subprocess.CompletedProcess(
            self.args, self.process.returncode, _read(self.stdout), _read(self.stderr)
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.process is not None
            # A session of its own: the whole group goes (its runners included).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        for handle in (self.stdout, self.stderr):
            if handle is not None:
                handle.close()


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    text = handle.read().decode(errors="replace")
    handle.close()
    return text


class _Runs:
    """The session's runs: queued in order, started :data:`AT_ONCE` at a time by a thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, SuiteRun] = {}
        self.queue: list[str] = []
        self.pump: threading.Thread | None = None
        self.stopped = threading.Event()

    def add(self, key: str, run: SuiteRun) -> None:
        with self.lock:
            if key in self.runs:
                return
            self.runs[key] = run
            self.queue.append(key)
            if self.pump is None:
                self.pump = threading.Thread(target=self._pump, name="suite-runs", daemon=True)
                self.pump.start()

    def _pump(self) -> None:
        while not self.stopped.wait(0.2):
            with self.lock:
                while self.queue and sum(r.running() for r in self.runs.values()) < AT_ONCE:
                    self.runs[self.queue.pop(0)].start()

    def take(self, key: str) -> SuiteRun:
        """The run ``key``, started now if it was still queued (its test needs it)."""
        with self.lock:
            run = self.runs.pop(key)
            if key in self.queue:
                self.queue.remove(key)
                run.start()
            return run

    def running_pids(self) -> list[int]:
        with self.lock:
            runs = list(self.runs.values())
        return [run.process.pid for run in runs if run.process is not None and run.running()]

    def stop(self) -> None:
        self.stopped.set()
        with self.lock:
            runs, self.runs, self.queue = list(self.runs.values()), {}, []
        for run in runs:
            run.kill()


_RUNS = _Runs()


def plan_of(item: pytest.Item) -> Plan | None:
    """The :class:`Plan` of a test marked ``suite_run`` (its module's ``SUITE_RUNS``)."""
    if item.get_closest_marker("suite_run") is None:
        return None
    plan = getattr(getattr(item, "module", None), "SUITE_RUNS", None)
    assert isinstance(plan, Plan), f"{item.nodeid}: suite_run needs the module's SUITE_RUNS"
    return plan


def _key(module: Any, value: Any) -> str:
    return f"{module.__name__}:{value}"


def start_selected(items: Sequence[pytest.Item]) -> None:
    """Queues the run of every selected ``suite_run`` test (those that would skip or fail
    before running anything are left to do so)."""
    for item in items:
        plan = plan_of(item)
        callspec = getattr(item, "callspec", None)
        if plan is None or callspec is None:
            continue
        value = callspec.params[plan.argname]
        try:
            args, popen = plan.command(value)
        except (pytest.skip.Exception, pytest.fail.Exception):
            continue
        module = getattr(item, "module", None)
        _RUNS.add(_key(module, value), SuiteRun(list(args), popen, plan.timeout))


def result(request: pytest.FixtureRequest, value: Any) -> subprocess.CompletedProcess[str]:
    """The finished run of ``value`` for the requesting test (its module's ``SUITE_RUNS``): the
    one queued at collection, else one started now. Skips or fails as its command does."""
    plan = request.module.SUITE_RUNS
    args, popen = plan.command(value)
    key = _key(request.module, value)
    _RUNS.add(key, SuiteRun(list(args), popen, plan.timeout))
    return _RUNS.take(key).wait()


def summary_of_green(completed: subprocess.CompletedProcess[str], stdout_tail: int = 4000) -> str:
    """The last line pytest printed (its summary) in a run that must have passed; fails the
    test with the end of the run's output when it exited non-zero."""
    summary = (completed.stdout.strip().splitlines() or ["(no output)"])[-1]
    assert completed.returncode == 0, completed.stdout[-stdout_tail:] + completed.stderr[-2000:]
    return summary


def running_pids() -> list[int]:
    """The pids of the runs in flight."""
    return _RUNS.running_pids()


def our_runner_pids() -> list[int]:
    """The runners descended from this process, less those of the runs in flight."""
    found = set(runner_pids(parent=os.getpid()))
    if found:
        for run in running_pids():
            found -= set(runner_pids(parent=run))
    return sorted(found)


def stop_all() -> None:
    """Kills the runs still queued or in flight (the session is over)."""
    _RUNS.stop()
