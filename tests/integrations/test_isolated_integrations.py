"""The DSPy and verifiers integrations run their suites in a venv of their own.

``verifiers`` pins ``openai<3`` and pulls ``prime-sandboxes``; ``dspy`` pulls ``litellm``:
``.ci/sdk-venvs.sh`` makes ``.venv-dspy`` and ``.venv-verifiers`` (rlm installed editable plus that
one framework), and this test runs ``tests/integrations/test_<name>.py`` inside each. A skip
there is a failure when CI requires the venvs and docker (``RLM_REQUIRE_SDK_VENVS=1``,
``RLM_REQUIRE_DOCKER=1``). Both runs start when collection ends and go on beside the rest of
the session; their tests, at the end, check what they reported (``tests/suite_runs.py``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import suite_runs

ROOT = pathlib.Path(__file__).resolve().parents[2]
INTEGRATIONS = ["dspy", "verifiers"]
TIMEOUT = 1200
#: more of the suite to run in that venv: verifiers pins openai<3, so rlm's clients are checked
#: on openai 2.x there (the gemini SDK is not installed in it)
ALSO = {"verifiers": ["tests/test_clients.py", "-k", "not gemini"]}


def _command(integration: str) -> tuple[list[str], dict[str, Any]]:
    """The run of ``integration``'s suite in its venv (skips or fails where that cannot be)."""
    suite = ROOT / "tests" / "integrations" / f"test_{integration}.py"
    if not suite.exists():
        pytest.skip(f"no {integration} suite in this tree")
    venv = ROOT / f".venv-{integration}"
    if pathlib.Path(sys.prefix).resolve() == venv.resolve():
        pytest.skip(f"already running in .venv-{integration}: its suite runs directly")
    python = venv / "bin" / "python"
    if not python.exists():
        message = f"{python} missing: run .ci/sdk-venvs.sh to test {integration} in its own venv"
        if os.environ.get("RLM_REQUIRE_SDK_VENVS") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    args = [
        str(python),
        *("-m", "pytest", "-q", "-p", "no:cacheprovider"),
        str(suite),
        *ALSO.get(integration, []),
    ]
    return args, {"cwd": ROOT, "env": {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}}


SUITE_RUNS = suite_runs.Plan("integration", _command, timeout=TIMEOUT)


@pytest.mark.suite_run
@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_integration_suite_in_its_own_venv(
    integration: str, request: pytest.FixtureRequest
) -> None:
    completed = suite_runs.result(request, integration)
    summary = suite_runs.summary_of_green(completed)
    assert " passed" in summary, summary
    if (
        os.environ.get("RLM_REQUIRE_SDK_VENVS") == "1"
        and os.environ.get("RLM_REQUIRE_DOCKER") == "1"
    ):
        assert "skipped" not in summary, completed.stdout[-4000:]


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_frameworks_are_imported_only_when_used(integration: str) -> None:
    venv_python = ROOT / f".venv-{integration}" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    code = f"import sys, rlm; print({integration!r} in sys.modules, 'litellm' in sys.modules)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_a_missing_framework_says_which_extra_to_install(integration: str) -> None:
    import importlib.util

    if importlib.util.find_spec(integration) is not None:
        pytest.skip(f"{integration} is installed in this venv")
    with pytest.raises(ImportError, match=rf"pip install 'rlm\[{integration}\]'"):
        __import__(f"rlm.integrations.{integration}")
