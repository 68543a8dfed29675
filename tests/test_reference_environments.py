"""The reference ``rlms`` environment API over rlm's sandboxes: ``LMHandler`` + ``LocalREPL`` (the
flow of the reference's ``examples/lm_in_repl.py``), ``DockerREPL``, tools and persistence."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from docker_check import docker_available

from rlm.broker.clients import create_client
from rlm.broker.loop import run_sync
from rlm.core.lm_handler import LMHandler, lookup_handler
from rlm.environments import (
    RESERVED_TOOL_NAMES,
    BaseEnv,
    SupportsCustomTools,
    SupportsPersistence,
    format_tools_for_prompt,
    get_environment,
    parse_custom_tools,
    validate_custom_tools,
)
from rlm.environments.base_env import IsolatedEnv, NonIsolatedEnv
from rlm.environments.docker_repl import DockerREPL
from rlm.environments.local_repl import LocalREPL
from rlm.errors import ConfigurationError
from rlm.testing import Reply, ScriptedLMServer
from rlm.types import REPLResult, RLMChatCompletion, UsageSummary

SETUP_CODE = 'secret = "1424424"\n'
CONTEXT = "This is a test context. It should print out, revealing the magic number to be 4."
CODE = """
response = llm_query("What is 2 + 2? Reply with just the number.")
print(response)
print(type(response).__name__)
print(context)
print("Secret from setup code:", secret)
import os
print("pid", os.getpid())
print("leak", os.environ.get("RLM_TEST_HOST_SECRET"))
"""


@pytest.fixture
def lm_client(lm_server: ScriptedLMServer) -> Iterator[Any]:
    client = create_client(
        "openai",
        {"model_name": "m", "base_url": lm_server.base_url, "api_key": "k", "max_retries": 0},
    )
    yield client
    run_sync(client.aclose())


@pytest.fixture
def handler(lm_client: Any) -> Iterator[LMHandler]:
    with LMHandler(lm_client) as started:
        yield started


def _check_lm_in_repl(
    repl: BaseEnv, lm_server: ScriptedLMServer, sandbox_pid_differs: bool
) -> None:
    result = repl.execute_code(CODE)
    assert isinstance(result, REPLResult)
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:3] == ["4", "str", CONTEXT]
    assert lines[3] == "Secret from setup code: 1424424"
    pid = int(lines[4].split()[1])
    if sandbox_pid_differs:
        assert pid != os.getpid()
    assert lines[5] == "leak None"
    assert lm_server.requests[-1].prompt.startswith("What is 2 + 2?")
    assert [call.response for call in result.rlm_calls] == ["4"]
    assert result.rlm_calls[0].usage_summary.model_usage_summaries["m"].total_calls == 1
    assert repl.locals["response"] == "4"
    assert repl.locals["context"] == CONTEXT == repl.locals["context_0"]
    assert repl.locals["secret"] == "1424424"
    assert repl.locals["os"] == "<module 'os'>"
    assert "llm_query" not in repl.locals
    assert result.execution_time is not None and result.execution_time > 0


def test_lm_in_local_repl(
    lm_server: ScriptedLMServer, handler: LMHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLM_TEST_HOST_SECRET", "do-not-leak")
    lm_server.set_script(["4"])
    with LocalREPL(
        lm_handler_address=handler.address, context_payload=CONTEXT, setup_code=SETUP_CODE
    ) as repl:
        _check_lm_in_repl(repl, lm_server, sandbox_pid_differs=True)
    usage = handler.get_usage_summary()
    assert usage.model_usage_summaries["m"].total_calls == 1
    assert repl.locals == {}


def test_answer_errors_and_state(handler: LMHandler) -> None:
    with LocalREPL(lm_handler_address=handler.address) as repl:
        assert repl.execute_code('answer["content"] = "wip"').final_answer is None
        done = repl.execute_code('answer["content"] = [1, 2]\nanswer["ready"] = True')
        assert done.final_answer == "[1, 2]"
        assert repl.execute_code("y = 2").final_answer is None  # not carried to the next cell
        rebound = repl.execute_code('answer = {"content": "rebound", "ready": True}')
        assert rebound.final_answer == "rebound"
        failed = repl.execute_code("x = 1\nraise ValueError('bad input')")
        assert "ValueError: bad input" in failed.stderr
        assert failed.locals["x"] == 1
        repl.execute_code("context = 'overwritten'\nllm_query = None")
        assert "llm_query" not in repl.locals
        assert repl.execute_code("print(callable(llm_query))").stdout == "True\n"


def test_llm_query_errors_come_back_as_text(
    lm_server: ScriptedLMServer, handler: LMHandler
) -> None:
    lm_server.set_script([Reply("bad prompt", status=400)])
    with LocalREPL(lm_handler_address=handler.address) as repl:
        result = repl.execute_code("r = llm_query('x')\nprint(r[:6])")
        assert result.stderr == ""
        assert result.stdout == "Error:\n"
        assert "bad prompt" in repl.locals["r"]
    with LocalREPL() as unconnected:
        text = unconnected.execute_code("print(llm_query('x'))").stdout
        assert text.startswith("Error:") and "No LM handler configured" in text
    handler.stop()
    assert lookup_handler(handler.address) is None


def test_batched_and_rlm_query(lm_server: ScriptedLMServer, handler: LMHandler) -> None:
    lm_server.set_script(["a", "a", "a"])
    seen: list[tuple[str, str | None]] = []

    def subcall(prompt: str, model: str | None) -> RLMChatCompletion:
        seen.append((prompt, model))
        return RLMChatCompletion("child", prompt, f"child:{prompt}", UsageSummary(), 0.1)

    with LocalREPL(lm_handler_address=handler.address, subcall_fn=subcall) as repl:
        result = repl.execute_code(
            "out = llm_query_batched(['p1', 'p2', 'p3'])\nkid = rlm_query('sub-task')"
        )
        assert result.stderr == ""
        assert repl.locals["out"] == ["a", "a", "a"]
        assert repl.locals["kid"] == "child:sub-task"
        assert seen == [("sub-task", None)]
        assert sorted(c.response for c in result.rlm_calls) == ["a", "a", "a", "child:sub-task"]


def test_other_backend_serves_depth_one(lm_server: ScriptedLMServer, lm_client: Any) -> None:
    class Echo:
        model_name = "echo"

        def completion(self, prompt: Any) -> str:
            return f"echo:{prompt}"

    lm_server.set_script(["from the root model"])
    with LMHandler(lm_client, other_backend_client=Echo()) as handler:
        assert handler.completion("hi") == "from the root model"  # depth 0: the default client
        with LocalREPL(lm_handler_address=handler.address, depth=1) as repl:
            assert repl.execute_code("print(llm_query('q'))").stdout == "echo:q\n"
            handler.register_client("root", lm_client)
            lm_server.set_script(["named"])
            assert repl.execute_code("print(llm_query('q', model='root'))").stdout == "named\n"
        usage = handler.get_usage_summary().model_usage_summaries
        assert (usage["echo"].total_calls, usage["m"].total_calls) == (1, 2)


def test_custom_tools(handler: LMHandler) -> None:
    calls: list[int] = []

    def double(n: int) -> int:
        calls.append(os.getpid())
        return 2 * n

    tools = {"double": {"tool": double, "description": "Doubles n"}, "LIMIT": 7}
    with LocalREPL(lm_handler_address=handler.address, custom_tools=tools) as repl:
        assert isinstance(repl, SupportsCustomTools)
        result = repl.execute_code("print(double(LIMIT))")
        assert result.stdout == "14\n"
        assert calls == [os.getpid()]  # the callable ran on the host
        assert repl.locals["LIMIT"] == 7 and "double" not in repl.locals
    assert format_tools_for_prompt(tools) == "- `double`: Doubles n\n- `LIMIT`: A custom int value"
    assert [t.is_callable for t in parse_custom_tools(tools)] == [True, False]


@pytest.mark.parametrize("name", sorted(RESERVED_TOOL_NAMES))
def test_reserved_tool_names_refused(name: str) -> None:
    with pytest.raises(ValueError, match="reserved"):
        validate_custom_tools({name: 1})
    with pytest.raises(ValueError, match=name):
        LocalREPL(custom_tools={name: lambda: None})


def test_persistence(handler: LMHandler) -> None:
    with LocalREPL(lm_handler_address=handler.address, persistent=True) as repl:
        assert isinstance(repl, SupportsPersistence)
        assert repl.add_context("first") == 0
        assert repl.add_context({"k": [1, 2]}) == 1
        assert repl.get_context_count() == 2
        history = [{"role": "user", "content": "hi"}]
        assert repl.add_history(history) == 0
        history.append({"role": "assistant", "content": "later"})
        assert repl.add_history(history) == 1
        assert repl.get_history_count() == 2
        result = repl.execute_code(
            "print(context, context_1['k'], len(history), len(history_1))\nkept = 5"
        )
        assert result.stdout == "first [1, 2] 1 2\n"
        with LMHandler(handler.default_client) as second:
            repl.update_handler_address(second.address)
            assert repl.lm_handler_address == second.address
            assert repl.execute_code("print(kept)").stdout == "5\n"


def test_compaction_history() -> None:
    with LocalREPL(compaction=True) as repl:
        repl.append_compaction_entry({"type": "summary", "content": "so far"})
        assert repl.execute_code("print(history[0]['content'])").stdout == "so far\n"
        assert repl.locals["history"] == [{"type": "summary", "content": "so far"}]


def test_get_environment_and_bad_arguments() -> None:
    repl = get_environment("local", {"setup_code": "z = 3"})
    try:
        assert isinstance(repl, LocalREPL) and isinstance(repl, NonIsolatedEnv)
        assert not isinstance(repl, IsolatedEnv)
        assert repl.locals["z"] == 3
    finally:
        repl.cleanup()
    with pytest.raises(ValueError, match="unknown environment"):
        get_environment("nowhere", {})
    with pytest.raises(ConfigurationError, match="bad keyword arguments"):
        LocalREPL(no_such_option=True)


def test_handler_accepts_rlm_clients_baselm(lm_server: ScriptedLMServer) -> None:
    from rlm.clients import get_client

    lm_server.set_script(["from baselm"])
    client = get_client(
        "openai", {"model_name": "m", "base_url": lm_server.base_url, "api_key": "k"}
    )
    try:
        with (
            LMHandler(client) as handler,
            LocalREPL(lm_handler_address=handler.address, depth=0) as repl,
        ):
            assert repl.execute_code("print(llm_query('q'))").stdout == "from baselm\n"
        assert client.get_usage_summary().model_usage_summaries["m"].total_calls == 1
    finally:
        client.close()


@pytest.mark.docker
def test_lm_in_docker_repl(
    lm_server: ScriptedLMServer, handler: LMHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = docker_available()
    if reason:
        pytest.skip(reason)
    monkeypatch.setenv("RLM_TEST_HOST_SECRET", "do-not-leak")
    lm_server.set_script(["4"])
    with DockerREPL(
        lm_handler_address=handler.address, context_payload=CONTEXT, setup_code=SETUP_CODE
    ) as repl:
        _check_lm_in_repl(repl, lm_server, sandbox_pid_differs=False)
        hostname = repl.execute_code("import socket\nprint(socket.gethostname())").stdout.strip()
        assert hostname != os.uname().nodename
        container = repl.container_id
        assert container is not None
        assert repl.add_history([{"role": "user", "content": "hi"}]) == 0
        assert repl.execute_code("print(history[0]['content'])").stdout == "hi\n"
    assert repl.container_id is None
    import docker

    with pytest.raises(docker.errors.NotFound):
        docker.from_env().containers.get(container)


def test_handler_batch_keeps_going_past_a_failure() -> None:
    class Picky:
        model_name = "picky"

        def completion(self, prompt: Any) -> str:
            if prompt == "bad":
                raise RuntimeError("boom")
            return f"ok {prompt}"

    with LMHandler(Picky(), batch_max_concurrent=2) as handler:
        results = handler.complete_batch(["a", "bad", "c"])
        assert [r.response for r in results] == ["ok a", "", "ok c"]
        assert results[1].error is not None and "boom" in results[1].error
        assert results[0].error is None
        with LocalREPL(lm_handler_address=handler.address) as repl:
            out = repl.execute_code("print(llm_query_batched(['x', 'bad']))").stdout
            assert out.startswith("['ok x', 'Error: ") and "boom" in out
        assert handler.get_usage_summary().model_usage_summaries["picky"].total_calls == 3


def test_modal_and_daytona_repls_through_their_stand_ins(handler: LMHandler) -> None:
    import standin_daytona
    import standin_modal

    from rlm.environments.daytona_repl import DaytonaREPL
    from rlm.environments.modal_repl import ModalREPL

    for fixture in (standin_modal, standin_daytona):
        if fixture.SKIP_REASON:
            pytest.skip(fixture.SKIP_REASON)
    with (
        standin_modal.running_standin() as (_, modal_kwargs),
        ModalREPL(
            app_name="rlm-compat",
            timeout=600,
            lm_handler_address=handler.address,
            context_payload=["a", "b"],
            **modal_kwargs,
        ) as repl,
    ):
        assert (repl.environment.app_name, repl.environment.sandbox_timeout) == ("rlm-compat", 600)
        assert isinstance(repl, IsolatedEnv)
        assert repl.execute_code("print(len(context))").stdout == "2\n"
    with (
        standin_daytona.running_standin() as (_, daytona_kwargs),
        DaytonaREPL(
            name="compat", memory=2, auto_stop_interval=5, setup_code="v = 9", **daytona_kwargs
        ) as repl,
    ):
        env = repl.environment
        assert (env.memory_gb, env.auto_stop_minutes, env.labels["name"]) == (2, 5, "compat")
        assert repl.locals["v"] == 9


def test_subcall_guards_and_call_order(handler: LMHandler) -> None:
    holder: dict[str, LocalREPL] = {}

    def reenter(prompt: str, model: str | None) -> RLMChatCompletion:
        holder["repl"].execute_code("print('inner')")
        raise AssertionError("execute_code should have refused the reentrant call")

    with LocalREPL(lm_handler_address=handler.address, subcall_fn=reenter) as repl:
        holder["repl"] = repl
        text = repl.execute_code("print(rlm_query('task'))").stdout
        assert text.startswith("Error:") and "Reentrant call" in text
    with LocalREPL(subcall_fn=lambda prompt, model: 12345) as repl:
        result = repl.execute_code("print(rlm_query('task'))")
        assert "must return an RLMChatCompletion" in result.stdout
        assert result.rlm_calls == []

    def slow_first(prompt: str, model: str | None) -> RLMChatCompletion:
        import time

        time.sleep(0.3 if prompt == "p0" else 0.0)
        return RLMChatCompletion("child", prompt, f"r:{prompt}", UsageSummary(), 0.0)

    with LocalREPL(subcall_fn=slow_first, max_concurrent_subcalls=4) as repl:
        result = repl.execute_code("rlm_query_batched(['p0', 'p1', 'p2'])")
        assert [c.response for c in result.rlm_calls] == ["r:p0", "r:p1", "r:p2"]


def test_new_handler_clears_the_previous_answer(handler: LMHandler) -> None:
    with LocalREPL(lm_handler_address=handler.address, persistent=True) as repl:
        assert repl.execute_code("answer['content'] = 'old'; answer['ready'] = True").final_answer
        repl.update_handler_address(handler.address)
        after = repl.execute_code("print(answer['ready'], repr(answer['content']))")
        assert (after.stdout, after.final_answer) == ("False ''\n", None)


def test_comms_utils_requests_single_and_batched_with_a_partial_failure(
    lm_server: ScriptedLMServer, handler: LMHandler
) -> None:
    from rlm.core.comms_utils import LMRequest, send_lm_request, send_lm_request_batched

    def script(request: Any) -> Any:
        if request.prompt == "prompt-1":
            return Reply("boom", status=400)
        return f"ok {request.prompt}"

    lm_server.set_script(script)
    single = send_lm_request(handler.address, LMRequest(prompt="hello"))
    assert single.success and single.chat_completion.response == "ok hello"
    results = send_lm_request_batched(handler.address, ["prompt-0", "prompt-1", "prompt-2"])
    assert [r.success for r in results] == [True, False, True]
    assert results[2].chat_completion.response == "ok prompt-2"
    assert "boom" in results[1].error
    gone = send_lm_request(("127.0.0.1", 999_999), LMRequest(prompt="x"))
    assert not gone.success and "no running LMHandler" in gone.error


def test_ipython_repl_runs_cells_in_a_real_ipython_shell(handler: LMHandler) -> None:
    pytest.importorskip("IPython")
    from rlm.environments.ipython_repl import IPythonREPL

    with IPythonREPL(lm_handler_address=handler.address, context_payload="data") as repl:
        result = repl.execute_code("x = 41\nx + 1")
        assert "42" in result.stdout
        magic = repl.execute_code("%who")
        assert "x" in magic.stdout.split()
        assert repl.execute_code("import os\nprint(os.getpid())").stdout.strip() != str(os.getpid())


@pytest.mark.parametrize("environment", ["local", "docker"])
def test_code_string_tools_as_the_reference_runs_them(handler: LMHandler, environment: str) -> None:
    """Out-of-process REPLs of the reference (docker, the clouds) run a tool given as code; the
    local one keeps it a string."""
    if environment == "docker" and (reason := docker_available()):
        pytest.skip(reason)

    tools = {
        "triple": "def triple(x):\n    return x * 3",
        "double": "lambda x: x * 2",
        "CONST": 7,
        "NOTE": "just text",
    }
    repl = get_environment(
        environment, {"lm_handler_address": handler.address, "custom_tools": tools}
    )
    with repl:
        result = repl.execute_code("print(type(triple).__name__, NOTE)")
        if environment == "docker":
            assert result.stdout.strip() == "function just text"
            assert (
                repl.execute_code("print(triple(CONST), double(CONST))").stdout.strip() == "21 14"
            )
        else:
            assert result.stdout.strip() == "str just text"
