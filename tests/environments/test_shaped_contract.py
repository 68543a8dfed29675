"""The cloud contract suite again, for each provider, over a shaped link.

``test_cloud_contract.py`` runs in a subprocess with ``RLM_STANDIN_SHAPING`` set to
:data:`SHAPED`: an 80 ms round trip on every request, 4 MB/s shared by every transfer, one output
stream per stand-in dropped mid-session, and every seventh throttleable request refused (429 with
Retry-After, or RESOURCE_EXHAUSTED with a retry policy). The suite includes the 50 MB context
(host to sandbox, through the file API) and the 30 MB sub-call prompt (runner to host, through the
relay). e2b and prime run in their own venvs (``.ci/sdk-venvs.sh``), like
``test_isolated_sdks.py``. The same suite unshaped runs directly (and stays as fast as before:
the stand-ins install no shaping unless asked). Each provider's run starts when collection ends
and goes on beside the rest of the session; its test, at the end, checks what it reported
(``tests/suite_runs.py``).
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
from typing import Any

import pytest
import suite_runs
from conftest import CLOUD_PROVIDERS, cloud_fixture
from rlm_standins._shaping import ENV_VAR

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHAPED = "rtt=0.08,bandwidth=4e6,drop=200000,throttle=7"
#: the cloud contract tests that run against a stand-in, at least (the live one is deselected)
CONTRACT_TESTS = 5
TIMEOUT = 1200


def _python(provider: str) -> pathlib.Path | str:
    """The interpreter that has the provider's SDK: this one, or its own venv's."""
    module = cloud_fixture(provider)
    if module is not None and module.SKIP_REASON is None:
        return sys.executable
    python = ROOT / f".venv-{provider}" / "bin" / "python"
    if python.exists():
        return python
    message = f"{provider}: no SDK here and no {python} (run .ci/sdk-venvs.sh)"
    if os.environ.get("RLM_REQUIRE_SDK_VENVS") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _command(provider: str) -> tuple[list[str], dict[str, Any]]:
    """The shaped run of ``provider``'s cloud contract tests (skips or fails where its SDK is
    missing)."""
    python = _python(provider)
    args = [
        str(python),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        str(ROOT / "tests" / "environments" / "test_cloud_contract.py"),
        "-k",
        f"{provider} and not live",
    ]
    return args, {"cwd": ROOT, "env": {**os.environ, ENV_VAR: SHAPED}}


SUITE_RUNS = suite_runs.Plan("provider", _command, timeout=TIMEOUT)


@pytest.mark.suite_run
@pytest.mark.parametrize("provider", CLOUD_PROVIDERS)
def test_the_cloud_contract_holds_over_a_shaped_link(
    provider: str, request: pytest.FixtureRequest
) -> None:
    completed = suite_runs.result(request, provider)
    summary = suite_runs.summary_of_green(completed, stdout_tail=6000)
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= CONTRACT_TESTS, summary
    assert "skipped" not in summary and "failed" not in summary, summary
