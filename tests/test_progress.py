"""The verbose trace: whole lines when redirected, and nothing from the sandbox or the model can
drive the user's terminal."""

from __future__ import annotations

import subprocess
import sys

from rlm.sanitize import for_terminal

LONG = "x = '" + "a" * 200 + "'"


def run_traced(lm_server, tmp_path, reply: str) -> str:
    lm_server.set_script([reply, '```repl\nanswer["content"] = "ok"\nanswer["ready"] = True\n```'])
    script = tmp_path / "traced.py"
    script.write_text(
        "from rlm import RLM\n"
        f"kwargs = {{'model_name': 'm', 'base_url': {lm_server.base_url!r}, 'api_key': 'k'}}\n"
        "with RLM(backend_kwargs=kwargs, verbose=True) as rlm:\n"
        "    print(rlm.completion('data').response)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    return result.stderr


def test_a_redirected_trace_keeps_whole_code_and_output_lines(lm_server, tmp_path):
    trace = run_traced(lm_server, tmp_path, f"```repl\n{LONG}\nprint('b' * 300)\n```")
    assert LONG in trace  # not cropped at 80 columns
    assert "b" * 300 in trace  # nor wrapped


def test_terminal_escapes_from_the_sandbox_and_the_model_are_neutralised(lm_server, tmp_path):
    osc52 = "\\x1b]52;c;SGVsbG8=\\x07"  # clipboard write, as Python source
    reply = (
        "```repl\n"
        f"print('title:\\x1b]0;pwned\\x07 clip:{osc52} cursor:\\x1b[2A bidi:\\u202e')\n"
        "import sys\nsys.stderr.write('\\x1b[31mred\\x1b[0m\\n')\n"
        f"# in the code itself: \x1b]0;code-title\x07\n"
        "```"
    )
    trace = run_traced(lm_server, tmp_path, reply)
    assert "\x1b" not in trace and "\x07" not in trace and "\u202e" not in trace
    assert "title:\\x1b]0;pwned\\x07" in trace  # shown, made visible
    assert "\\u202e" in trace


def test_for_terminal_keeps_text_and_newlines():
    assert for_terminal("plain\ttext\nnext line é ✓") == "plain\ttext\nnext line é ✓"
    assert for_terminal("\r\x00\x9b") == "\\x0d\\x00\\x9b"
