"""rlm.integrations.dspy: DSPy's CodeInterpreter protocol on our sandboxes, and dspy.RLM on it
against the scripted LM server (DSPy -> litellm -> OpenAI-compatible HTTP).

Runs where DSPy is installed: in ``.venv-dspy`` (``.ci/sdk-venvs.sh``), driven from the main
suite by ``test_isolated_integrations.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import

import pytest

dspy = pytest.importorskip("dspy", reason="DSPy is tested in .venv-dspy (.ci/sdk-venvs.sh)")

from dspy.primitives.code_interpreter import (  # noqa: E402
    CodeExecutionError,
    CodeInterpreter,
    CodeInterpreterError,
    FinalOutput,
)

from rlm.integrations.dspy import SandboxInterpreter  # noqa: E402
from rlm.testing import ScriptedLMServer  # noqa: E402
from rlm.testing.lm_server import RecordedRequest, content_text  # noqa: E402

# ---- the protocol, as DSPy's own interpreter tests state it ---------------------------------


def test_protocol_state_tools_submit_and_errors(environment: str) -> None:
    calls: list[dict] = []

    def add(a: int, b: int) -> int:
        calls.append({"a": a, "b": b})
        return a + b

    interpreter = SandboxInterpreter(environment, tools={"add": add})
    assert isinstance(interpreter, CodeInterpreter)
    interpreter.start()
    interpreter.start()  # idempotent
    try:
        assert interpreter.execute("x = add(a=2, b=3)\nprint(x)") == "5\n"
        assert interpreter.execute("x * 2") == "10\n"  # state persists; a bare expression shows
        assert interpreter.execute("y = 1") is None
        assert interpreter.execute("print(n + 1)", variables={"n": 41}) == "42\n"
        interpreter.tools["mul"] = lambda a, b: a * b  # the tools dict is mutable
        assert interpreter.execute("print(mul(a=6, b=7))") == "42\n"
        assert calls == [{"a": 2, "b": 3}]

        # SUBMIT without output fields: one value; with fields: positional or keyword.
        assert interpreter.execute("SUBMIT(x)") == FinalOutput({"output": 5})
        interpreter.output_fields = [{"name": "answer", "type": "str"}, {"name": "n"}]
        assert interpreter.execute("SUBMIT('hi', x)") == FinalOutput({"answer": "hi", "n": 5})
        with pytest.raises(CodeExecutionError, match="not both"):
            interpreter.execute("SUBMIT('hi', n=x)")
        assert interpreter.execute("SUBMIT(answer='a', n=1)") == FinalOutput(
            {"answer": "a", "n": 1}
        )
        # The code's own `answer` variable is not taken for a submission, and is kept.
        interpreter.execute("answer = {'content': 'x', 'ready': True}")
        assert interpreter.execute("print(answer['content'])") == "x\n"

        with pytest.raises(CodeExecutionError, match="SUBMIT takes exactly these fields"):
            interpreter.execute("SUBMIT(answer='only one')")
        with pytest.raises(CodeExecutionError, match="ZeroDivisionError"):
            interpreter.execute("print('before')\n1 / 0")
        with pytest.raises(SyntaxError):
            interpreter.execute("def broken(:")
        with pytest.raises(CodeExecutionError, match="tool failed"):
            interpreter.tools["bad"] = _raise
            interpreter.execute("bad()")
        with pytest.raises(CodeInterpreterError, match="variable names"):
            interpreter.execute("pass", variables={"SUBMIT": 1})
        assert interpreter.execute("print(x)") == "5\n"  # recoverable errors kept the session
    finally:
        interpreter.shutdown()
    with pytest.raises(CodeInterpreterError, match="shut down"):
        interpreter.start()


def _raise() -> None:
    raise RuntimeError("tool failed")


def test_a_dead_sandbox_is_terminal() -> None:
    interpreter = SandboxInterpreter("local")
    try:
        with pytest.raises(CodeInterpreterError):
            interpreter.execute("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        with pytest.raises(CodeInterpreterError):
            interpreter.execute("print(1)")
    finally:
        interpreter.shutdown()


# ---- dspy.RLM end to end --------------------------------------------------------------------


def _action(reasoning: str, code: str) -> str:
    """A reply in the form of DSPy's ChatAdapter for RLM's action signature."""
    return (
        f"[[ ## reasoning ## ]]\n{reasoning}\n\n"
        f"[[ ## code ## ]]\n```python\n{code}\n```\n\n[[ ## completed ## ]]"
    )


ACTIONS = [
    _action(
        "Look at the context and ask the tool and a sub-model.",
        "n = len(context)\nprint(n, lookup(key='city'), llm_query('Say the capital'))",
    ),
    _action("Try something that fails.", "print(undefined_name)"),
    _action("Submit.", "SUBMIT(answer=f'{lookup(key=\"city\")} {n}')"),
]


def _script(request: RecordedRequest) -> str:
    """Action replies for RLM's predictor, in order; a fixed text for each llm_query."""
    text = " ".join(content_text(m.get("content")) for m in request.messages)
    if "[[ ## code ## ]]" not in text:
        return "SUB-ANSWER"
    return ACTIONS.pop(0)


def test_dspy_rlm_runs_in_our_sandbox(environment: str) -> None:
    looked_up: list[str] = []

    def lookup(key: str) -> str:
        """Looks a key up on the host."""
        looked_up.append(key)
        return "Paris"

    made: list[SandboxInterpreter] = []

    def factory() -> SandboxInterpreter:
        made.append(SandboxInterpreter(environment))
        return made[-1]

    ACTIONS[:] = ACTIONS_TEMPLATE
    with ScriptedLMServer(_script) as server:
        lm = dspy.LM(
            "openai/root-model",
            api_base=server.base_url,
            api_key="test-key",
            cache=False,
            num_retries=0,
        )
        module = dspy.RLM(
            "context, question -> answer",
            max_iters=5,
            tools=[lookup],
            interpreter_factory=factory,
        )
        with dspy.context(lm=lm):
            prediction = module(context="x" * 1234, question="Which city?")
    assert prediction.answer == "Paris 1234"
    assert looked_up == ["city", "city"]
    steps = prediction.trajectory
    assert "1234 Paris SUB-ANSWER" in steps[0]["output"]
    assert "NameError" in steps[1]["output"]  # the error path: shown to the model, run goes on
    assert len(made) == 1 and made[0]._ended  # DSPy shut its interpreter down
    sub_calls = [r for r in server.requests if "[[ ## code ## ]]" not in str(r.messages)]
    assert len(sub_calls) == 1


def test_dspy_configure_route_with_a_pooled_factory() -> None:
    made: list[SandboxInterpreter] = []
    base = SandboxInterpreter.factory("local", pool_size=1)

    def factory() -> SandboxInterpreter:
        made.append(base())
        return made[-1]

    with base, ScriptedLMServer(_script) as server:
        lm = dspy.LM("openai/root-model", api_base=server.base_url, api_key="k", cache=False)
        module = dspy.RLM("context -> answer", max_iters=2)
        answers = []
        for context in ("abc", "abcdef"):  # one interpreter per forward pass, as DSPy does
            ACTIONS[:] = [_action("Answer.", "SUBMIT(answer=str(len(context)))")]
            with dspy.context(lm=lm, interpreter_factory=factory):
                answers.append(module(context=context).answer)
    assert answers == ["3", "6"]
    assert len(made) == 2 and all(i._ended for i in made)
    broker = made[0]._sandbox.aio._shared_broker
    assert broker is not None and broker is made[1]._sandbox.aio._shared_broker


ACTIONS_TEMPLATE = list(ACTIONS)


def test_dspy_sub_agents_run_on_the_host_through_the_facade() -> None:
    # dspy.RLM installs its `dspy` facade in every interpreter: a dspy.Predict built in the
    # sandbox runs on the host (through two host tools), answered by the host's LM.
    def script(request: RecordedRequest) -> str:
        text = "\n".join(content_text(m.get("content")) for m in request.messages)
        if "[[ ## code ## ]]" in text:
            return steps.pop(0)
        return "[[ ## answer ## ]]\nsub-agent says hi\n\n[[ ## completed ## ]]"

    steps = [
        _action("Sub-agent.", "res = dspy.Predict('question -> answer')(question='ping')"),
        _action("Submit.", "SUBMIT(answer=res.answer)"),
    ]
    with ScriptedLMServer(script) as server:
        lm = dspy.LM("openai/root-model", api_base=server.base_url, api_key="k", cache=False)
        with dspy.context(lm=lm):
            module = dspy.RLM(
                "query -> answer", max_iters=3, interpreter_factory=SandboxInterpreter
            )
            prediction = module(query="q")
    assert prediction.answer == "sub-agent says hi"
    assert not steps
