"""Providers whose SDKs cannot share one environment run their suites in a venv of their own.

``e2b`` needs ``connectrpc>=0.12.1,<0.13`` and ``prime-sandboxes`` needs ``connectrpc<0.12``:
``.ci/sdk-venvs.sh`` makes ``.venv-e2b`` and ``.venv-prime`` (each with rlm and the stand-ins
installed editable plus that one SDK), and this test runs that provider's suites inside it: the
shared contract suite, the shared cloud suite, the throttling suite and its own
``test_<provider>.py``. There the
provider runs, so every selected test must run: a skip is a failure (the live tests, which need
credentials, are deselected). Both runs start when collection ends and go on beside the rest of
the session; their tests, at the end, check what they reported (``tests/suite_runs.py``).
"""

from __future__ import annotations

import os
import pathlib
import sys
from typing import Any

import pytest
import suite_runs

ROOT = pathlib.Path(__file__).resolve().parents[2]
ISOLATED = ["e2b", "prime"]
TIMEOUT = 1800


def _command(provider: str) -> tuple[list[str], dict[str, Any]]:
    """The run of ``provider``'s suites in its venv (skips or fails where that cannot be)."""
    if not (ROOT / "environments" / f"{provider}.py").exists():
        pytest.skip(f"no {provider} adapter in this tree")
    python = ROOT / f".venv-{provider}" / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == (ROOT / f".venv-{provider}").resolve():
        pytest.skip(f"already running in .venv-{provider}: its suite runs directly")
    if not python.exists():
        message = f"{python} missing: run .ci/sdk-venvs.sh to test {provider} in its own venv"
        if os.environ.get("RLM_REQUIRE_SDK_VENVS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    folder = ROOT / "tests" / "environments"
    suites = [
        folder / "test_env_contract.py",
        folder / "test_cloud_contract.py",
        folder / "test_throttling.py",
    ]
    files = [str(p) for p in [*suites, *folder.glob(f"test_*{provider}*.py")]]
    options = ["-q", "-rs", "-p", "no:cacheprovider", "-m", "not live", "-k", provider]
    return [str(python), "-m", "pytest", *options, *files], {"cwd": ROOT}


SUITE_RUNS = suite_runs.Plan("provider", _command, timeout=TIMEOUT)


@pytest.mark.suite_run
@pytest.mark.parametrize("provider", ISOLATED)
def test_provider_suite_in_its_own_venv(provider: str, request: pytest.FixtureRequest) -> None:
    completed = suite_runs.result(request, provider)
    summary = suite_runs.summary_of_green(completed)
    assert " passed" in summary, summary
    skips = [line for line in completed.stdout.splitlines() if line.startswith("SKIPPED")]
    assert "skipped" not in summary and not skips, "\n".join([summary, *skips])
