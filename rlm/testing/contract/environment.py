"""The contract every environment passes, and the warm pool's for those that have one."""

from __future__ import annotations

import json

import grpc
import pytest

from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.base import CHUNK_CHARS, ToolSpec
from rlm.environments.relay import RelayedSandboxEnvironment
from rlm.errors import SandboxError
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.protos import rlm_sandbox_pb2_grpc as pb_grpc
from rlm.testing.contract.fixtures import (
    Adapter,
    ContractFixtures,
    MakeEnv,
    RecordingHandler,
    completion_rlm,
    run,
)
from rlm.testing.lm_server import RecordedRequest, ScriptedLMServer
from rlm.testing.scripts import is_root_request, iteration_of


class EnvironmentContract(ContractFixtures):
    """What every environment does: the REPL's semantics, contexts, callbacks to the host, tools,
    limits, recovery, secrets and tokens, closing, and a whole completion through ``RLM``."""

    def test_state_persists_between_cells(self, make_env: MakeEnv) -> None:
        env = make_env()
        assert run(env, "x = 41").ok
        result = run(env, "x += 1\nprint(x)")
        assert result.stdout == "42\n"
        assert "x" in result.variables

    def test_last_expression_is_shown_and_errors_are_tracebacks(self, make_env: MakeEnv) -> None:
        env = make_env()
        assert run(env, "1 + 1").stdout == "2\n"
        result = run(env, "def f():\n    return 1 / 0\nf()")
        assert "ZeroDivisionError" in result.error
        assert "<cell" in result.error and "runner.py" not in result.error
        assert "SyntaxError" in run(env, "def broken(:").error
        # The session goes on after errors.
        assert run(env, "print('still here')").stdout == "still here\n"

    def test_stdout_and_stderr_are_captured_per_cell(self, make_env: MakeEnv) -> None:
        env = make_env()
        result = run(env, "import sys\nprint('out')\nprint('err', file=sys.stderr)")
        assert result.stdout == "out\n"
        assert result.stderr == "err\n"
        assert run(env, "pass").stdout == ""

    @pytest.mark.parametrize(
        "code",
        [
            'answer["content"] = "A"\nanswer["ready"] = True',
            'answer.update({"content": "A", "ready": True})',
            'answer = {"content": "A", "ready": True}',
            'answer["ready"] = True\nanswer["content"] = "A"',
        ],
        ids=["items", "update", "rebind", "ready-first"],
    )
    def test_answer_detected_by_any_means(self, make_env: MakeEnv, code: str) -> None:
        env = make_env()
        assert not run(env, "x = 1").answer_ready
        result = run(env, code)
        assert result.answer_ready
        assert result.answer_content == "A"

    def test_context_kinds_load(self, make_env: MakeEnv) -> None:
        env = make_env()
        run_sync(env.load_context("héllo wörld", name="context"))
        assert run(env, "print(context)").stdout == "héllo wörld\n"
        run_sync(env.load_context(["a", "b"], name="context_1", aliases=("context",)))
        assert run(env, "print(context, context_1 is context)").stdout == "['a', 'b'] True\n"
        run_sync(env.load_context({"k": [1, 2]}, name="data"))
        assert run(env, "print(data['k'][1])").stdout == "2\n"
        run_sync(env.load_context("", name="empty"))
        assert run(env, "print(repr(empty))").stdout == "''\n"

    def test_big_context_streams_in_chunks(self, make_env: MakeEnv) -> None:
        """A 100 MB context reaches the sandbox whole: as messages of CHUNK_CHARS each over the
        runner's connection, or (relayed sandboxes) by the provider's file upload, the
        connection carrying only a reference to it."""
        env = make_env()
        size = 100 * 1024 * 1024
        text = "a" * (size - 6) + "NEEDLE"
        connection = env._require_connection()
        send, chunks = connection.send, []

        async def counting_send(message: pb.HostMessage) -> None:
            if message.WhichOneof("kind") == "context":
                chunks.append(len(message.context.data))
            await send(message)

        connection.send = counting_send  # type: ignore[method-assign]
        try:
            run_sync(env.load_context(text))
        finally:
            connection.send = send  # type: ignore[method-assign]
        result = run(env, "print(len(context), context[-6:])")
        assert result.stdout == f"{size} NEEDLE\n", result.error
        if isinstance(env, RelayedSandboxEnvironment):
            assert chunks == [0]
        else:
            assert len(chunks) == -(-size // CHUNK_CHARS) and max(chunks) == CHUNK_CHARS
            assert sum(chunks) == size

    def test_callbacks_reach_the_host(self, make_env: MakeEnv, handler: RecordingHandler) -> None:
        env = make_env()
        result = run(
            env,
            "print(llm_query('a'))\n"
            "print(llm_query_batched(['b', 'c']))\n"
            "print(rlm_query('d'))\n"
            "print(rlm_query_batched(['e']))",
        )
        assert result.ok, result.error
        assert result.stdout.splitlines() == [
            "echo:a",
            "['echo:b', 'echo:c']",
            "child:d",
            "['child:e']",
        ]
        assert ("complete", "a") in handler.calls and ("subcall", "e") in handler.calls

    def test_custom_tools_values_and_host_callables(
        self, make_env: MakeEnv, handler: RecordingHandler
    ) -> None:
        env = make_env()
        handler.tools["add"] = lambda a, b: a + b
        run_sync(env.set_variables({"threshold": 3, "names": ["x"]}, [ToolSpec("add", "adds")]))
        result = run(env, "print(threshold, names, add(2, b=5))")
        assert result.stdout == "3 ['x'] 7\n", result.error

    def test_json_tool_results_roundtrip(
        self, make_env: MakeEnv, handler: RecordingHandler
    ) -> None:
        env = make_env()
        handler.tools["lookup"] = lambda key: {"key": key, "values": [1, 2]}
        run_sync(env.set_variables({}, [ToolSpec("lookup", "")]))
        result = run(env, "print(lookup('k'))")
        assert json.loads(result.stdout.replace("'", '"')) == {"key": "k", "values": [1, 2]}

    def test_runaway_cell_is_interrupted_and_state_survives(self, make_env: MakeEnv) -> None:
        env = make_env()
        run(env, "kept = 'yes'")
        result = run(env, "while True: pass", timeout=1.0)
        assert result.interrupted and "TimeoutError" in result.error
        assert not result.restarted
        assert run(env, "print(kept)").stdout == "yes\n"

    def test_cell_ignoring_interrupts_is_killed_and_sandbox_restarts(
        self, make_env: MakeEnv
    ) -> None:
        env = make_env()
        run_sync(env.load_context("the context"))
        run(env, "lost = 1")
        code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    x = 1"
        result = run(env, code, timeout=1.0)
        assert result.restarted and "restarted" in result.error
        after = run(env, "print(context); print('lost' in globals())")
        assert after.stdout == "the context\nFalse\n"

    def test_huge_output_is_capped(self, make_env: MakeEnv) -> None:
        env = make_env(max_output_chars=1000)
        result = run(env, 'print("x" * 10**9)')
        assert result.ok, result.error
        assert len(result.stdout) == 1000
        assert result.stdout_dropped == 10**9 + 1 - 1000

    def test_memory_bomb_is_contained(self, make_env: MakeEnv) -> None:
        env = make_env(memory_mb=512)
        result = run(
            env, "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))"
        )
        assert "MemoryError" in result.error or result.restarted
        assert run(env, "blocks = None\nprint('alive')").stdout == "alive\n"

    def test_dead_runner_is_restarted_with_a_note(self, make_env: MakeEnv) -> None:
        env = make_env()
        result = run(env, "import os\nos._exit(7)")
        assert result.restarted and "died" in result.error
        assert run(env, "print('back')").stdout == "back\n"

    def test_no_host_secrets_in_the_sandbox(
        self, make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
        monkeypatch.setenv("MY_SECRET", "hush")
        monkeypatch.setenv("GH_TOKEN", "ghp_nope")
        env = make_env()
        result = run(env, "import os\nprint(sorted(os.environ))")
        names = json.loads(result.stdout.replace("'", '"'))
        assert not [n for n in names if any(w in n.upper() for w in ("KEY", "TOKEN", "SECRET"))]
        assert "sk-should-not-leak" not in result.stdout

    def test_system_exit_and_input_do_not_break_the_repl(self, make_env: MakeEnv) -> None:
        env = make_env()
        assert "SystemExit" in run(env, "raise SystemExit(3)").error
        assert "EOFError" in run(env, "input()").error
        assert run(env, "print(1)").stdout == "1\n"

    def test_calls_without_the_session_token_are_refused(
        self, make_env: MakeEnv, broker: BrokerServer
    ) -> None:
        make_env()
        with grpc.insecure_channel(broker.address) as channel:
            stub = pb_grpc.BrokerStub(channel)
            for metadata in [(), (("authorization", "Bearer wrong"),)]:
                with pytest.raises(grpc.RpcError) as caught:
                    stub.Complete(pb.CompleteRequest(prompt="x"), metadata=metadata, timeout=5)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as caught:
                wrong = (("authorization", "Bearer wrong"),)
                list(stub.Attach(iter([]), metadata=wrong, timeout=5))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def test_close_is_idempotent_and_execute_after_close_fails(self, make_env: MakeEnv) -> None:
        env = make_env()
        run_sync(env.aclose())
        run_sync(env.aclose())
        with pytest.raises(SandboxError):
            run(env, "1")

    def test_batched_subcalls_overlap_in_a_full_completion(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        """Through ``RLM(environment=...)``: the sub-calls of one ``llm_query_batched`` reach the
        LM at once."""
        prompts = [f"item {i}" for i in range(8)]
        plan = [
            f"```repl\nreplies = llm_query_batched({prompts!r})\nprint(len(replies))\n```",
            '```repl\nanswer["content"] = ",".join(replies)\nanswer["ready"] = True\n```',
        ]

        def script(request: RecordedRequest) -> str:
            if not is_root_request(request):
                return "sub:" + request.prompt
            return plan[iteration_of(request)]

        lm_server.set_script(script)
        lm_server.latency = 0.3
        with completion_rlm(adapter, lm_server) as rlm:
            result = rlm.completion("data")
        assert result.response == ",".join("sub:" + p for p in prompts)
        assert lm_server.max_in_flight >= 8, "the batched sub-calls should run concurrently"


class WarmPoolContract(ContractFixtures):
    """For adapters that pre-start runners (``pool_key`` is not None): ``pool_size`` hands each
    new session a runner started ahead of time, and never one another session used."""

    def test_warm_pool_gives_fresh_isolated_runners(self, make_env: MakeEnv) -> None:
        first = make_env(pool_size=1)
        key = first.pool_key()
        assert first.pool is not None and key is not None, "this adapter has no warm pool"
        run_sync(first.pool.fill(key, first._spawn_runner))
        waiting = [process for _started, process in first.pool._ready[key]]
        second = make_env(pool_size=1)
        assert second.pool is first.pool
        assert second._process in waiting, "the new session did not get the pre-started runner"
        run(first, "mine = 1")
        assert run(second, "print('mine' in globals())").stdout == "False\n"
        assert run(second, "import os\nprint(os.getcwd() == os.environ['HOME'])").stdout == "True\n"
