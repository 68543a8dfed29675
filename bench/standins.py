"""Cloud providers' wire-level stand-ins for the bench (``--standins``).

For each cloud provider asked for that has neither credentials nor a stand-in of its own already
(see ``providers.CLOUD_PROVIDERS``), the bench starts the provider's local stand-in
(``rlm_standins.launch``) and points the drivers at it: the environment its SDK must see is
applied in this process (the drivers inherit it), and ``environment_kwargs`` carry what the
adapter needs. modal's and daytona's stand-ins run in this process; e2b's and prime's SDKs need a
venv of their own (``.ci/sdk-venvs.sh`` makes ``.venv-e2b`` and ``.venv-prime``), so their
stand-in runs in that venv's interpreter (``python -m rlm_standins NAME``) and so do the drivers
of that provider. The stand-in's call log tells how many sandboxes a run created. Stand-in
figures measure the adapter's own overhead, never the provider's latency.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from .providers import CLOUD_PROVIDERS

ROOT = pathlib.Path(__file__).resolve().parent.parent

#: providers whose SDK lives in a venv of its own (made by .ci/sdk-venvs.sh)
VENV_PROVIDERS = ("e2b", "prime")


def venv_python(name: str) -> pathlib.Path:
    """The interpreter of provider ``name``'s SDK venv."""
    return ROOT / f".venv-{name}" / "bin" / "python"


@dataclass
class RunningStandIn:
    """A started stand-in, the ``environment_kwargs`` that reach it, its create count, and the
    interpreter the drivers of this provider run in (None: the bench's own)."""

    name: str
    environment_kwargs: dict[str, Any]
    creates: Callable[[], int]
    python: str | None = None

    def sandboxes_created(self) -> int:
        return self.creates()


@contextlib.contextmanager
def _in_process(name: str) -> Iterator[RunningStandIn]:
    from rlm_standins.launch import launch

    with launch(name) as launched:
        yield RunningStandIn(name, launched.kwargs, launched.sandbox_creates)


def _ask(stdin: IO[str], stdout: IO[str]) -> int:
    stdin.write("creates\n")
    stdin.flush()
    return int(stdout.readline())


@contextlib.contextmanager
def _in_venv(name: str) -> Iterator[RunningStandIn]:
    from rlm_standins.launch import Hermetic

    python = venv_python(name)
    process = subprocess.Popen(
        [str(python), "-m", "rlm_standins", name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/tmp",
    )
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    try:
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"the {name} stand-in in {python} did not start")
        facts = json.loads(line)
        hermetic = Hermetic(
            facts["hermetic"]["prefix"],
            tuple(facts["hermetic"]["names"]),
            facts["hermetic"]["values"],
        )
        with hermetic.applied():
            yield RunningStandIn(
                name, facts["kwargs"], lambda: _ask(stdin, stdout), python=str(python)
            )
    finally:
        stdin.close()  # the stand-in kills its sandboxes and exits
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _starter(name: str) -> Callable[[], contextlib.AbstractContextManager[RunningStandIn]]:
    if name in VENV_PROVIDERS:
        return lambda: _in_venv(name)
    return lambda: _in_process(name)


def unavailable(name: str) -> str:
    """Why provider ``name``'s stand-in cannot start here (empty when it can)."""
    if name in VENV_PROVIDERS:
        if not venv_python(name).exists():
            return f"no {venv_python(name).parent.parent.name} (make it with .ci/sdk-venvs.sh)"
        return ""
    try:
        import rlm_standins  # noqa: F401
    except ImportError:
        return "the stand-ins are not installed (pip install -e ./standins)"
    return ""


def wanted(name: str) -> bool:
    """True for a cloud provider with neither credentials nor a stand-in already configured,
    whose stand-in can start here."""
    if name not in CLOUD_PROVIDERS:
        return False
    credentials, stand_in_var = CLOUD_PROVIDERS[name]
    configured = os.environ.get(stand_in_var) or all(os.environ.get(v) for v in credentials)
    return not configured and not unavailable(name)


@contextlib.contextmanager
def running(names: list[str]) -> Iterator[dict[str, RunningStandIn]]:
    """Starts the stand-ins of the ``names`` that want one (see :func:`wanted`)."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(_starter(name)()) for name in names if wanted(name)}
