"""The README's first command on a machine with no key and no network: the demo (a scripted\nroot, sub-calls to the offline model)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import sys

import pytest

from rlm.broker.clients.local_llama import local_model_available

ROOT = pathlib.Path(__file__).resolve().parent.parent

if not local_model_available():
    reason = "the offline model is not installed: pip install 'rlm[local]'"
    if os.environ.get("RLM_REQUIRE_LOCAL_MODEL") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.mark.slow
def test_the_first_command_in_a_terminal_shows_what_an_rlm_did(tmp_path):
    """The README's first command, typed in a real terminal (pty) with no key and no network:
    the demo runs, the trace shows the iterations, code and sub-calls to the offline model,
    and the exit status is 0 only because the run ended with an answer."""
    pexpect = pytest.importorskip("pexpect")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI", "RLM_", "ANTHROPIC", "GEMINI", "GOOGLE", "NO_COLOR"))
    }
    # No network: any attempt to reach an LM endpoint would fail through this proxy address.
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    env.update(TERM="xterm-256color", COLUMNS="160", LINES="50")
    command = ["-m", "rlm.cli", "run", "What is this project?", "--context-file"]
    child = pexpect.spawn(
        sys.executable,
        [*command, str(ROOT / "README.md"), "--log-dir", str(tmp_path)],
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=600,
        dimensions=(50, 160),
    )
    child.expect(pexpect.EOF)
    child.close()
    screen = ANSI.sub("", child.before)
    assert child.exitstatus == 0, screen[-3000:]
    assert "demo mode" in screen and "not a language model" in screen  # labelled as a script
    assert "iteration 1 of 3" in screen and "iteration 3 of 3" in screen
    assert "llm_query_batched(prompts)" in screen  # the code it ran
    assert re.search(r"↳ \d sub-call\(s\) to SmolLM2-135M-Instruct", screen)
    assert "finished by answer" in screen
    assert "\x1b[" in child.before  # colour on a terminal
    (log,) = tmp_path.glob("*.jsonl")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    calls = [
        call
        for entry in entries
        if entry.get("type") == "iteration"
        for block in entry["code_blocks"]
        for call in block["result"]["rlm_calls"]
    ]
    assert len(calls) >= 3 and {c["root_model"] for c in calls} == {"SmolLM2-135M-Instruct"}
    assert any(c["response"] for c in calls)  # the real model answered
    answer = entries[-1]["final_answer"]
    assert answer and answer in screen  # printed as the answer
