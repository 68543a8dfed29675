"""The runner's own life, outside any sandbox: what it does when the host's stream ends.

Each case runs a runner in a process of its own (its end is ``os._exit``), on a stand-in stub
that plays the host: it sends one cell, then ends the session's stream.
"""

from __future__ import annotations

import subprocess
import sys
import time

HOST_ENDS_THE_STREAM = """
import sys, threading, time
from rlm.environments.runner import runner as r
from rlm.protos import rlm_sandbox_pb2 as pb

r.ORPHAN_GRACE_SECONDS = 0.5
sent = []

class Outbox:
    def put(self, message):
        sent.append(message)

class Host:
    def attach(self, on_message, on_end):
        def play():
            on_message(pb.HostMessage(execute=pb.ExecuteRequest(cell_id=1, code=sys.argv[1])))
            time.sleep(0.3)
            on_end(None)
        threading.Thread(target=play, daemon=True).start()
        return Outbox()

runner = r.Runner("unix:/nonexistent", "token")
runner._stub = Host()
code = runner.serve()
print("served", code, [m.WhichOneof("kind") for m in sent], file=sys.__stderr__, flush=True)
sys.exit(code)
"""


def _run(cell: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HOST_ENDS_THE_STREAM, cell],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


def test_a_runner_whose_host_is_gone_ends_after_its_running_cell_gets_a_grace():
    """A cell that would run for a minute is given ``ORPHAN_GRACE_SECONDS`` once the host's
    stream has ended, then the process exits with code 3: a runner never outlives its broker
    for long, whatever its cell does."""
    done, seconds = _run("import time\ntime.sleep(60)")
    assert done.returncode == 3, done.stderr
    assert "served" not in done.stderr  # the cell was still running: the timer ended it
    assert seconds < 30


def test_a_runner_whose_host_is_gone_between_cells_stops_serving():
    """With no cell running, the serving loop sees the end at once and returns 3, after
    sending its hello and the finished cell's result."""
    done, seconds = _run("x = 1")
    assert done.returncode == 3, done.stderr
    assert "served 3 ['hello', 'result']" in done.stderr
    assert seconds < 30
