"""What a new user meets in the first hour at the command line (issue 10): runs that end without
an answer, where the log went, errors in the CLI's own words, early checks of settings, binary
contexts, the no-key message, and the comforts (version, config file, iteration N of M, sub-call
counts, run ids, completion, colour)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap

import pytest

from rlm import __version__, cli, config
from rlm.testing import Reply

ANSWER = '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'
NO_ANSWER = '```repl\nprint("still looking")\n```'
FAILING = '```repl\nraise ValueError("broken")\n```'


def rlm_cli(*args: str, env: dict[str, str] | None = None, cwd=None, timeout: float = 120):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RLM_")}
    environment.update({"OPENAI_API_KEY": "k", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "rlm.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=cwd,
    )


@pytest.fixture
def context_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("one two three four")
    return str(path)


def scripted(lm_server, *args: str, **kwargs):
    return rlm_cli(*args, "--base-url", lm_server.base_url, "--model", "m", **kwargs)


# -- runs that end without an answer ------------------------------------------------------------


def test_running_out_of_iterations_exits_non_zero_with_one_reason_line(lm_server, context_file):
    lm_server.set_script([NO_ANSWER, NO_ANSWER, "my last raw reply"])
    result = scripted(lm_server, "run", "q", "-f", context_file, "--max-iterations", "2")
    assert result.returncode == cli.EXIT_NO_ANSWER, result.stderr
    assert result.stdout == ""  # the last raw reply is not passed off as the answer
    reason = result.stderr.strip().splitlines()[-1]
    assert reason.startswith("rlm: no answer:") and "--max-iterations" in reason
    assert "2 iterations" in reason
    assert "[" in result.stderr and " 2 iteration(s), 2 code block(s)" in result.stderr


def test_max_errors_has_a_default_that_stops_a_failing_model(lm_server, context_file):
    assert config.Settings().max_errors == config.DEFAULT_MAX_ERRORS == 5
    lm_server.set_script([FAILING] * 30)
    result = scripted(lm_server, "run", "q", "-f", context_file)
    assert result.returncode == 3, result.stderr
    assert len(lm_server.requests) == config.DEFAULT_MAX_ERRORS
    assert "(--max-errors 5)" in result.stderr.strip().splitlines()[-1]


def test_an_answered_run_exits_zero_and_says_where_the_log_went(lm_server, context_file, tmp_path):
    lm_server.set_script([ANSWER])
    logs = tmp_path / "logs"
    result = scripted(lm_server, "run", "q", "-f", context_file, "--log-dir", str(logs))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    (log,) = logs.glob("*.jsonl")
    assert f"rlm: log written to {log}" in result.stderr


# -- errors in the CLI's words, settings checked before the run starts ---------------------------


def test_an_unknown_price_under_a_budget_names_the_flag_and_the_flag_works(lm_server, context_file):
    lm_server.set_script([ANSWER])
    args = ("run", "q", "-f", context_file, "--max-budget", "1", "-q")
    refused = rlm_cli(*args, "--base-url", lm_server.base_url, "--model", "no-such-price")
    assert refused.returncode == 2
    assert "--price-per-million IN,OUT" in refused.stderr
    assert "backend_kwargs" not in refused.stderr
    priced = rlm_cli(
        *args, "--base-url", lm_server.base_url, "--model", "no-such-price",
        "--price-per-million", "0.5,1.5",
    )  # fmt: skip
    assert priced.returncode == 0, priced.stderr
    assert priced.stdout.strip() == "done"


def test_an_empty_model_name_names_the_flag(lm_server, context_file):
    result = rlm_cli(
        "run", "q", "-f", context_file, "--base-url", lm_server.base_url, "--model", ""
    )
    assert result.returncode == 2
    assert "--model" in result.stderr and "backend_kwargs" not in result.stderr


def test_a_bad_environment_option_is_refused_before_the_run_with_choices(lm_server, context_file):
    result = scripted(
        lm_server,
        "run",
        "q",
        "-f",
        context_file,
        "-e",
        "docker",
        "--environment-kwarg",
        "memory=2g",
    )
    assert result.returncode == 2
    assert "▶ run" not in result.stderr and not lm_server.requests
    line = result.stderr.strip()
    assert "'memory'" in line and "did you mean 'memory_mb'" in line and "mem_limit" in line
    assert "unexpected keyword argument" not in line


def test_a_bad_environment_option_in_the_config_file_names_the_file(
    lm_server, context_file, tmp_path
):
    (tmp_path / "rlm.toml").write_text("[environment_kwargs]\ncell_timout = 5\n")
    result = scripted(lm_server, "run", "q", "-f", context_file, cwd=tmp_path)
    assert result.returncode == 2
    assert "rlm.toml [environment_kwargs]" in result.stderr
    assert "did you mean 'cell_timeout'" in result.stderr


def test_the_config_docstring_example_is_valid(tmp_path):
    lines = config.__doc__.split("::", 1)[1].splitlines()[1:]
    example = []
    for line in lines:
        if line.strip() and not line.startswith("    "):
            break
        example.append(line)
    (tmp_path / "rlm.toml").write_text(textwrap.dedent("\n".join(example)))
    settings = config.load_settings(env={}, cwd=tmp_path)
    settings.check()  # every [environment_kwargs] key is one docker accepts
    assert settings.environment == "docker"
    assert settings.environment_kwargs == {"mem_limit": "2g"}
    assert settings.rlm_kwargs()["backend_kwargs"]["price_per_million"] == (0.15, 0.6)


def test_environment_kwarg_values_are_read_as_json_else_text():
    assert config.parse_key_values(["cpus=2", "mem_limit=4g", "read_only=false"]) == {
        "cpus": 2,
        "mem_limit": "4g",
        "read_only": False,
    }
    with pytest.raises(config.ConfigurationError, match="KEY=VALUE"):
        config.parse_key_values(["mem_limit"])


def test_a_refused_connection_is_reported_at_once_not_retried(context_file):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    result = rlm_cli("run", "q", "-f", context_file, "--base-url", url, "-q")
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"cannot connect to {url}" in line
    assert "attempts" not in line  # no retries
    assert "--base-url" in line and "start the server" in line


# -- the context file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [(b"PK\x03\x04\x00\x00binary", "NUL bytes"), (b"caf\xe9 latin-1", "not UTF-8")],
)
def test_a_binary_context_file_is_refused_unless_accepted(lm_server, tmp_path, data, problem):
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    refused = scripted(lm_server, "run", "q", "-f", str(path))
    assert refused.returncode == 2
    assert problem in refused.stderr and "--accept-binary" in refused.stderr
    assert not lm_server.requests
    lm_server.set_script([ANSWER])
    accepted = scripted(lm_server, "run", "q", "-f", str(path), "--accept-binary", "-q")
    assert accepted.returncode == 0, accepted.stderr
    assert "`context` is a str" in lm_server.requests[0].messages[1]["content"]


# -- no key, no endpoint, no offline model ------------------------------------------------------


def test_no_key_without_the_offline_model_says_what_to_install(
    monkeypatch, capsys, tmp_path, context_file
):
    from rlm.broker.clients import local_llama

    monkeypatch.setattr(local_llama, "local_model_available", lambda: False)
    for name in [n for n in os.environ if n.startswith(("OPENAI", "RLM_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert cli.main(["run", "q", "-f", context_file]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "pip install 'rlm[local]'" in line and "--base-url" in line
    assert "OPENAI_API_KEY" in line


# -- comforts ----------------------------------------------------------------------------------


def test_version():
    result = rlm_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"rlm {__version__}"


def test_bash_completion_completes_commands_and_options():
    script = rlm_cli("completion", "bash").stdout
    probe = textwrap.dedent(
        """
        source /dev/stdin
        complete_words() { COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _rlm_complete; echo "${COMPREPLY[*]}"; }
        complete_words rlm ru
        complete_words rlm run question --max-it
        complete_words rlm docker g
        """
    )
    result = subprocess.run(
        ["bash", "-c", probe], input=script, capture_output=True, text=True, timeout=30
    )
    assert result.stdout.splitlines() == ["run", "--max-iterations", "gc"], result.stderr


def test_the_trace_names_the_config_file_and_counts_iterations_and_sub_calls(
    lm_server, context_file, tmp_path
):
    (tmp_path / "rlm.toml").write_text("max_iterations = 3\n")

    def script(request):
        if request.messages[0]["role"] == "system":
            if len([m for m in request.messages if m["role"] == "assistant"]) == 0:
                return '```repl\nprint(llm_query_batched(["a", "b", "c"]))\n```'
            return ANSWER
        return Reply("sub reply", delay=0.3)

    lm_server.set_script(script)
    result = scripted(lm_server, "run", "q", "-f", context_file, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    trace = result.stderr
    assert f"settings from {tmp_path / 'rlm.toml'}" in trace
    assert "iteration 1 of 3" in trace and "iteration 2 of 3" in trace
    assert f"↳ 3 sub-call(s) to m, up to {lm_server.max_in_flight} at once" in trace
    assert "… 1 sub-call(s) in flight" not in trace


def test_child_run_lines_carry_their_run_id(lm_server, context_file):
    def script(request):
        system = request.messages[0]["content"] if request.messages[0]["role"] == "system" else ""
        done = any(m["role"] == "assistant" for m in request.messages)
        if "child task" in str(request.messages) and not done:
            return '```repl\nprint("in the child")\nanswer["content"] = "c"\nanswer["ready"] = True\n```'
        if system and not done:
            return '```repl\nprint(rlm_query("child task"))\n```'
        return ANSWER

    lm_server.set_script(script)
    result = scripted(lm_server, "run", "q", "-f", context_file, "--max-depth", "2")
    assert result.returncode == 0, result.stderr
    child = re.search(r"▶ run (\w+) depth 1", result.stderr)
    assert child, result.stderr
    child_id = child.group(1)
    lines = [line for line in result.stderr.splitlines() if "in the child" in line]
    assert lines and all(child_id[:6] in line for line in lines)


COLOUR = re.compile(r"\x1b\[(?:[0-9]+;)*(?:3[0-7]|9[0-7]|38;[25];[0-9;]+)m")


def run_in_terminal(lm_server, context_file, **env_vars: str) -> tuple[int, str]:
    """``rlm run`` in a real pty against the scripted server: (exit status, what it showed)."""
    pexpect = pytest.importorskip("pexpect")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLM_")}
    env.pop("NO_COLOR", None)
    env.pop("FORCE_COLOR", None)
    env.update(OPENAI_API_KEY="k", TERM="xterm-256color", **env_vars)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "rlm.cli", "run", "q", "-f", context_file, "--base-url", lm_server.base_url],
        env=env,
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 160),
    )
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


def test_a_terminal_gets_colour_and_a_spinner_with_the_time_spent(lm_server, context_file):
    lm_server.set_script([Reply(ANSWER, delay=0.8)])
    status, screen = run_in_terminal(lm_server, context_file)
    assert status == 0, screen
    assert COLOUR.search(screen)
    assert re.search(r"iteration 1 of 30: waiting for the model · \d+\.\ds", screen)


def test_no_color_is_honoured_on_a_terminal(lm_server, context_file):
    lm_server.set_script([ANSWER])
    status, screen = run_in_terminal(lm_server, context_file, NO_COLOR="1")
    assert status == 0, screen
    assert "iteration 1 of 30" in screen and "done" in screen
    assert not COLOUR.search(screen)


# -- a budget with a model whose price only the endpoint knows ------------------------------------


def test_a_budget_works_with_an_endpoint_that_reports_usage_cost(lm_server, context_file):
    lm_server.set_script([Reply(ANSWER, cost=0.0025)])
    result = scripted_model(
        lm_server, "unpriced-model", "run", "q", "-f", context_file, "--max-budget", "1",
        "--price-per-million", "reported",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "$0.0025]" in result.stderr


def test_a_reply_without_usage_cost_counts_as_the_whole_worst_case(lm_server, context_file):
    lm_server.set_script([NO_ANSWER, ANSWER])  # the endpoint reports no usage.cost after all
    result = scripted_model(
        lm_server, "unpriced-model", "run", "q", "-f", context_file, "--max-budget", "1",
        "--price-per-million", "reported",
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert len(lm_server.requests) == 1  # fail-closed: no second call
    reason = result.stderr.strip().splitlines()[-1]
    assert "usage.cost" in reason and "raise --max-budget" in reason


def scripted_model(lm_server, model: str, *args: str):
    return rlm_cli(*args, "--base-url", lm_server.base_url, "--model", model)


def test_rlm_serve_errors_name_its_own_flags(lm_server):
    env = {"OPENAI_API_KEY": ""}
    no_key = rlm_cli("serve", "--backend", "openai", "--port", "0", env=env, timeout=60)
    assert no_key.returncode == 2
    assert "--lm-api-key" in no_key.stderr and "backend_kwargs" not in no_key.stderr
    bad_option = rlm_cli(
        "serve", "--base-url", lm_server.base_url, "--environment-kwarg", "memory_limit=1",
        "--port", "0", timeout=60,
    )  # fmt: skip
    assert bad_option.returncode == 2
    assert "'memory_limit'" in bad_option.stderr and "its options:" in bad_option.stderr


def test_a_misspelt_environment_is_refused_before_the_run(lm_server, context_file):
    result = scripted(lm_server, "run", "q", "-f", context_file, "--environment", "dockr")
    assert result.returncode == 2
    assert "did you mean 'docker'" in result.stderr and "▶ run" not in result.stderr
    assert not lm_server.requests


def test_verbose_says_where_each_setting_came_from(lm_server, context_file, tmp_path):
    (tmp_path / "rlm.toml").write_text("max_depth = 1\n")
    lm_server.set_script([ANSWER])
    result = scripted(lm_server, "run", "q", "-f", context_file, "--verbose", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rlm:   model: cli" in result.stderr
    assert f"rlm:   max_depth: file {tmp_path / 'rlm.toml'}" in result.stderr
