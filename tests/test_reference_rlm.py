"""The reference package's ``RLM(...)`` surface, behaving as it does there: callbacks, sampling
arguments, orchestrator and prologue, logger and metadata, error strings and error counting."""

from __future__ import annotations

import os
import re

import pytest

from rlm import RLM, ErrorThresholdExceededError, RLMLogger
from rlm.testing import RecordedRequest, Reply

ANSWER = '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'


def is_root(request: RecordedRequest) -> bool:
    return any(m.get("role") == "system" for m in request.messages)


def test_defaults_match_the_reference():
    import inspect

    parameters = inspect.signature(RLM).parameters
    assert parameters["max_concurrent_subcalls"].default == 4
    assert parameters["orchestrator"].default is True
    for name in (
        "on_subcall_start", "on_subcall_complete", "on_iteration_start",
        "on_iteration_complete", "sampling_args", "sub_sampling_args", "user_prologue",
    ):  # fmt: skip
        assert parameters[name].default is None


def test_callbacks_fire_for_iterations_and_child_runs(lm_server, make_rlm):
    def script(request: RecordedRequest) -> str:
        first = request.messages[1]["content"]
        iteration = sum(m["role"] == "assistant" for m in request.messages)
        if "CHILD" in first:
            return ANSWER
        if iteration == 0:
            return '```repl\nr = rlm_query("CHILD task")\nprint(r)\n```'
        return ANSWER

    lm_server.set_script(script)
    seen: list[tuple] = []
    rlm = make_rlm(
        max_depth=2,
        on_iteration_start=lambda depth, n: seen.append(("it-start", depth, n)),
        on_iteration_complete=lambda depth, n, t: seen.append(("it-done", depth, n, t >= 0)),
        on_subcall_start=lambda depth, model, preview: seen.append(
            ("sub-start", depth, model, preview)
        ),
        on_subcall_complete=lambda depth, model, t, err: seen.append(
            ("sub-done", depth, model, err)
        ),
    )
    assert rlm.completion("data").response == "done"
    assert seen[0] == ("it-start", 0, 1)
    assert ("sub-start", 1, "root-model", "CHILD task") in seen
    assert ("sub-done", 1, "root-model", None) in seen
    assert ("it-start", 1, 1) in seen and ("it-done", 1, 1, True) in seen
    assert seen[-1] == ("it-done", 0, 2, True)
    assert seen.index(("sub-start", 1, "root-model", "CHILD task")) < seen.index(("it-start", 1, 1))


def test_sampling_args_reach_the_root_and_sub_sampling_args_the_sub_calls(lm_server, make_rlm):
    def script(request: RecordedRequest) -> str:
        if not is_root(request):
            return "sub reply"
        if sum(m["role"] == "assistant" for m in request.messages) == 0:
            return '```repl\nprint(llm_query("q"))\n```'
        return ANSWER

    lm_server.set_script(script)
    rlm = make_rlm(sampling_args={"temperature": 0.25}, sub_sampling_args={"temperature": 0.75})
    rlm.completion("data")
    roots = [r for r in lm_server.requests if is_root(r)]
    subs = [r for r in lm_server.requests if not is_root(r)]
    assert {r.body.get("temperature") for r in roots} == {0.25}
    assert [r.body.get("temperature") for r in subs] == [0.75]
    assert subs[0].model == "root-model"  # a twin of the root backend serves the sub-calls


@pytest.mark.parametrize("orchestrator", [True, False])
def test_orchestrator_and_user_prologue(lm_server, make_rlm, orchestrator):
    lm_server.set_script([ANSWER])
    rlm = make_rlm(orchestrator=orchestrator, user_prologue="TIPS: chunk by paragraph")
    rlm.completion("data")
    messages = lm_server.requests[0].messages
    assert ("orchestrator" in messages[0]["content"]) is orchestrator
    assert messages[2] == {"role": "user", "content": "TIPS: chunk by paragraph"}


def test_llm_query_returns_an_error_string_on_a_provider_error(lm_server, make_rlm):
    def script(request: RecordedRequest) -> str | Reply:
        if not is_root(request):
            return Reply("the provider broke", status=400)
        if sum(m["role"] == "assistant" for m in request.messages) == 0:
            return '```repl\nr = llm_query("q")\nprint(type(r).__name__, r[:6])\n```'
        return ANSWER

    lm_server.set_script(script)
    rlm = make_rlm()
    result = rlm.completion("data")
    block = result.metadata["iterations"][0]["code_blocks"][0]["result"]
    assert block["stdout"].startswith("str Error:")
    assert "the provider broke" in block["rlm_calls"][0]["error"]


def test_max_errors_counts_iterations_that_wrote_to_stderr(lm_server, make_rlm):
    lm_server.set_script(
        [
            "no code here",  # not an error, as in the reference
            "```repl\nimport sys\nsys.stderr.write('warning: odd data\\n')\n```",
            "```repl\n1/0\n```",
        ]
    )
    rlm = make_rlm(max_errors=2, max_iterations=5)
    with pytest.raises(ErrorThresholdExceededError) as caught:
        rlm.completion("data")
    error = caught.value
    assert (error.error_count, error.threshold) == (2, 2)
    assert "ZeroDivisionError" in error.last_error
    assert len(lm_server.requests) == 3


def test_logger_without_a_directory_keeps_the_trajectory_in_memory(
    lm_server, make_rlm, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    lm_server.set_script(['```repl\nprint("hi")\n```', ANSWER])
    logger = RLMLogger()
    result = make_rlm(logger=logger).completion("data")
    assert list(tmp_path.iterdir()) == []  # no ./logs appeared
    trajectory = logger.get_trajectory()
    assert trajectory is not None and logger.iteration_count == 2
    assert trajectory["run_metadata"]["root_model"] == "root-model"
    assert [it["iteration"] for it in trajectory["iterations"]] == [1, 2]
    assert result.metadata["run_metadata"] == trajectory["run_metadata"]
    assert result.metadata["iterations"] == trajectory["iterations"]
    first = trajectory["iterations"][0]
    assert first["prompt"][0]["role"] == "system" and first["response"].startswith("```repl")
    assert first["code_blocks"][0]["result"]["stdout"] == "hi\n"
    assert trajectory["iterations"][1]["final_answer"] == "done"


def test_logger_with_a_directory_writes_the_reference_file_layout(lm_server, make_rlm, tmp_path):
    lm_server.set_script([ANSWER])
    logger = RLMLogger(log_dir=str(tmp_path / "logs"), file_name="mine")
    make_rlm(logger=logger, environment_kwargs={"cell_timeout": 30}).completion("data")
    (path,) = (tmp_path / "logs").iterdir()
    assert re.fullmatch(r"mine_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{8}\.jsonl", path.name)
    assert logger.log_file_path == str(path)
    metadata, iteration = RLMLogger.read(str(path))
    assert metadata["type"] == "metadata"
    assert set(metadata) >= {
        "timestamp", "root_model", "max_depth", "max_iterations", "backend", "backend_kwargs",
        "environment_type", "environment_kwargs", "other_backends",
    }  # fmt: skip
    assert metadata["environment_kwargs"] == {"cell_timeout": 30}
    assert "test-key" not in path.read_text()  # the API key is not logged
    assert iteration["type"] == "iteration" and iteration["final_answer"] == "done"


def test_no_logger_still_gives_the_trajectory(lm_server, make_rlm):
    lm_server.set_script([ANSWER])
    result = make_rlm().completion("data")
    assert result.metadata["iterations"][0]["final_answer"] == "done"
    assert result.metadata["finished_by"] == "answer"


def test_secrets_are_hidden_in_run_metadata(lm_server):
    lm_server.set_script([ANSWER])
    with RLM(
        backend_kwargs={"model_name": "m", "base_url": lm_server.base_url, "api_key": "sk-123"},
        environment_kwargs={"env": {"X": "1"}},
    ) as rlm:
        result = rlm.completion("data")
    assert result.metadata["run_metadata"]["backend_kwargs"]["api_key"] == "<hidden>"
    assert "sk-123" not in str(result.metadata)


def test_max_concurrent_subcalls_bounds_children(lm_server, make_rlm):
    import threading
    import time

    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def script(request: RecordedRequest) -> str:
        nonlocal in_flight, peak
        first = request.messages[1]["content"]
        if "CHILD" in first:
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.2)
            with lock:
                in_flight -= 1
            return ANSWER
        if sum(m["role"] == "assistant" for m in request.messages) == 0:
            return '```repl\nr = rlm_query_batched([f"CHILD {i}" for i in range(8)])\n```'
        return ANSWER

    lm_server.set_script(script)
    make_rlm(max_depth=2).completion("data")  # the reference's default: 4
    assert peak == 4


def test_rlm_lives_at_the_reference_module_path():
    from rlm.core.rlm import RLM as CoreRLM

    assert CoreRLM is RLM


def test_aclose_after_acompletion_on_the_callers_loop(lm_server):
    import asyncio

    lm_server.set_script([ANSWER])

    async def main() -> str:
        rlm = RLM(
            backend_kwargs={"model_name": "m", "base_url": lm_server.base_url, "api_key": "k"}
        )
        result = await rlm.acompletion("data")
        await rlm.aclose()  # before the fix: "attached to a different loop"
        await rlm.aclose()  # twice is fine
        return result.response

    assert asyncio.run(main()) == "done"


@pytest.mark.parametrize("name", ["llm_query", "context", "answer", "history", "SHOW_VARS"])
def test_reserved_tool_names_are_refused(lm_server, name):
    with pytest.raises(ValueError, match="reserved"):
        RLM(
            backend_kwargs={"model_name": "m", "base_url": lm_server.base_url, "api_key": "k"},
            custom_tools={name: lambda: 1},
        )


def test_tool_values_and_return_values_of_any_picklable_type(lm_server, make_rlm):
    import datetime
    from fractions import Fraction

    def when(days: int) -> datetime.date:
        """A date some days after the start."""
        return datetime.date(2024, 1, 1) + datetime.timedelta(days=days)

    lm_server.set_script(
        [
            "```repl\nd = when(3)\nanswer['content'] = f'{type(d).__name__} {d.isoformat()} "
            "{type(RATIO).__name__} {RATIO + 1} {sorted(TAGS)}'\nanswer['ready'] = True\n```"
        ]
    )
    rlm = make_rlm(custom_tools={"when": when, "RATIO": Fraction(1, 3), "TAGS": {"b", "a"}})
    assert rlm.completion("x").response == "date 2024-01-04 Fraction 4/3 ['a', 'b']"


def test_tool_arguments_from_the_sandbox_are_never_unpickled_on_the_host(lm_server, make_rlm):
    received = []

    def echo(value):
        """Returns what it got."""
        received.append(value)
        return "ok"

    lm_server.set_script(
        [
            "```repl\nclass Evil:\n    def __reduce__(self):\n        import os\n"
            "        return (os.system, ('touch /tmp/rlm-pwned',))\n"
            "try:\n    echo(Evil())\nexcept Exception as e:\n    print(type(e).__name__)\n```",
            "```repl\nanswer['content'] = echo([1, 'two'])\nanswer['ready'] = True\n```",
        ]
    )
    rlm = make_rlm(custom_tools={"echo": echo})
    assert rlm.completion("x").response == "ok"
    assert received == [[1, "two"]]  # only JSON crossed to the host


def test_setup_code_runs_in_the_sandbox_before_the_first_cell(lm_server, make_rlm):
    lm_server.set_script(
        ["```repl\nanswer['content'] = f'{secret} {os.getpid() != HOST_PID}'\n"
         "answer['ready'] = True\n```"]
    )  # fmt: skip
    setup = f"import os\nsecret = 'from-setup'\nHOST_PID = {os.getpid()}"
    rlm = make_rlm(environment_kwargs={"setup_code": setup})
    assert rlm.completion("x").response == "from-setup True"


def test_setup_code_that_raises_is_a_configuration_error(lm_server, make_rlm):
    from rlm.errors import ConfigurationError

    lm_server.set_script([ANSWER])
    rlm = make_rlm(environment_kwargs={"setup_code": "1/0"})
    with pytest.raises(ConfigurationError, match="ZeroDivisionError"):
        rlm.completion("x")
    assert lm_server.requests == []


def test_a_script_that_never_closes_anything_exits_quietly(lm_server, tmp_path):
    """The reference's examples never call close(): nothing may be reported at exit."""
    import subprocess
    import sys

    lm_server.set_script(["plain reply", ANSWER])
    script = tmp_path / "script.py"
    script.write_text(
        "from rlm import RLM\nfrom rlm.clients import get_client\n"
        f"kwargs = {{'model_name': 'm', 'base_url': {lm_server.base_url!r}, 'api_key': 'k'}}\n"
        "print(get_client('openai', kwargs).completion('hi'))\n"
        "print(RLM(backend='openai', backend_kwargs=kwargs).completion('x').response)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["plain", "reply", "done"]
    assert "Unclosed" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_compaction_window_defaults_to_the_models_known_context(lm_server):
    from rlm.utils.token_utils import get_context_limit

    kwargs = {"base_url": lm_server.base_url, "api_key": "k"}
    with RLM(backend_kwargs={"model_name": "gpt-5-nano", **kwargs}) as known:
        assert known.context_window_tokens == get_context_limit("gpt-5-nano") == 272_000
    with RLM(backend_kwargs={"model_name": "m", "context_window_tokens": 1000, **kwargs}) as own:
        assert own.context_window_tokens == 1000


def test_an_unknown_environment_fails_at_construction_with_a_close_match(lm_server):
    from rlm.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="did you mean 'docker'"):
        RLM(
            backend_kwargs={"model_name": "m", "base_url": lm_server.base_url, "api_key": "k"},
            environment="dockr",
        )
