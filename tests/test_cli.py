"""The ``rlm`` command line, run as a real subprocess against the scripted server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from rlm.testing.leaks import runner_pids

FINISH = '```repl\nanswer["content"] = "the file has " + str(len(context.split())) + " words"\nanswer["ready"] = True\n```'


def rlm_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_run_prints_the_answer_and_progress(lm_server, tmp_path):
    lm_server.set_script([FINISH])
    context = tmp_path / "notes.txt"
    context.write_text("one two three four")
    result = rlm_cli(
        "run",
        "How many words?",
        "--context-file",
        str(context),
        "--base-url",
        lm_server.base_url,
        "--model",
        "m",
        "--log-dir",
        str(tmp_path / "logs"),
        env={"OPENAI_API_KEY": "k"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the file has 4 words"
    assert "iteration 1" in result.stderr and "LM calls" in result.stderr
    assert list((tmp_path / "logs").glob("*.jsonl"))
    assert "How many words?" in lm_server.requests[0].messages[1]["content"]


def test_missing_key_is_one_clear_line(tmp_path):
    context = tmp_path / "c.txt"
    context.write_text("x")
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "rlm.cli", "run", "q", "-f", str(context), "--backend", "openai"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "OPENAI_API_KEY" in lines[0]


def test_unreachable_endpoint_is_one_clear_line(tmp_path):
    context = tmp_path / "c.txt"
    context.write_text("x")
    result = rlm_cli(
        "run",
        "q",
        "-f",
        str(context),
        "--base-url",
        "http://127.0.0.1:9/v1",
        "-q",
        env={"OPENAI_API_KEY": "k"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--base-url" in lines[0]


def test_help_explains_every_option():
    result = rlm_cli("run", "--help")
    assert result.returncode == 0
    for option in (
        "--context-file",
        "--backend",
        "--model",
        "--base-url",
        "--environment",
        "--max-depth",
        "--max-budget",
    ):
        assert option in result.stdout


def test_ctrl_c_mid_completion_leaves_no_runner(lm_server, tmp_path):
    lm_server.set_script(
        ['```repl\nimport time\nprint("sleeping", flush=True)\ntime.sleep(120)\n```']
    )
    script = tmp_path / "host.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from rlm import RLM
            rlm = RLM(backend="openai", backend_kwargs={{"model_name": "m", "base_url": {lm_server.base_url!r}, "api_key": "k"}})
            rlm.completion("data")
            """
        )
    )
    host = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not runner_pids(parent=host.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        new = set(runner_pids(parent=host.pid))
        assert new, "the runner never started"
        time.sleep(0.5)  # let the cell start sleeping
        host.send_signal(signal.SIGINT)
        _, stderr = host.communicate(timeout=30)
        assert "KeyboardInterrupt" in stderr
    finally:
        if host.poll() is None:
            host.kill()
    deadline = time.monotonic() + 5
    while set(runner_pids()) & new and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(runner_pids()) & new


def test_killed_host_takes_its_runner_with_it(lm_server, tmp_path):
    """SIGKILL gives the host no chance to clean up: the kernel (PDEATHSIG) must."""
    lm_server.set_script(["```repl\nimport time\ntime.sleep(120)\n```"])
    script = tmp_path / "host.py"
    script.write_text(
        f"from rlm import RLM\nRLM(backend='openai', backend_kwargs={{'model_name': 'm', 'base_url': {lm_server.base_url!r}, 'api_key': 'k'}}).completion('d')\n"
    )
    host = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 30
        while not runner_pids(parent=host.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        new = set(runner_pids(parent=host.pid))
        assert new
        host.kill()
        host.wait(10)
    finally:
        if host.poll() is None:
            host.kill()
    deadline = time.monotonic() + 5
    while set(runner_pids()) & new and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not set(runner_pids()) & new
