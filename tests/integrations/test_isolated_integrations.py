"""The DSPy and verifiers integrations run their suites in a venv of their own.

``verifiers`` pins ``openai<3`` and pulls ``prime-sandboxes``; ``dspy`` pulls ``litellm``:
``.ci/sdk-venvs.sh`` makes ``.venv-dspy`` and ``.venv-verifiers`` (rlm installed editable plus that
one framework), and this test runs ``tests/integrations/test_<name>.py`` inside each. A skip
there is a failure when CI requires the venvs and docker (``RLM_REQUIRE_SDK_VENVS=1``,
``RLM_REQUIRE_DOCKER=1``).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
INTEGRATIONS = ["dspy", "verifiers"]
#: more of the suite to run in that venv: verifiers pins openai<3, so rlm's clients are checked
#: on openai 2.x there (the gemini SDK is not installed in it)
ALSO = {"verifiers": ["tests/test_clients.py", "-k", "not gemini"]}


@pytest.mark.parametrize("integration", INTEGRATIONS)
def test_integration_suite_in_its_own_venv(integration: str) -> None:
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
    completed = subprocess.run(
        [
            str(python),
            *("-m", "pytest", "-q", "-p", "no:cacheprovider"),
            str(suite),
            *ALSO.get(integration, []),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    summary = (completed.stdout.strip().splitlines() or ["(no output)"])[-1]
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
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
