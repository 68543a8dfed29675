"""Whole completions on a cloud adapter, checked against what its provider recorded.

For :class:`~rlm.environments.relay.RelayedSandboxEnvironment` adapters tested against a local
stand-in of their provider: the ``adapter`` fixture's :class:`Adapter` carries the stand-in's
record as ``log`` (a :class:`ProviderLog`). By default (``child_sandbox="shared"``) an RLM tree
gets one sandbox: a 12-child fan-out creates one, siblings see neither each other's variables
nor files, a crashing, hanging or memory-hungry child fails alone, three levels of recursion
share it. With ``child_sandbox="own"``: a sandbox per level of recursion, and a stubborn
runner killed through the provider's API. Either way: a 50 MB context through the file API,
30 MB back through the relay, clean-up when a completion raises. With a
warm pool (``pool_size``, ``max_sandboxes``) on a broker shared by several trees: each tree's
sandbox was created ahead, is its own, and the provider never holds more than ``max_sandboxes``;
idle ones and, when the broker closes, waiting ones are destroyed at the provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

from rlm.broker.loop import run_sync, submit
from rlm.broker.server import BrokerScope, BrokerServer
from rlm.environments.base import CellResult, SandboxEnvironment, WarmPool
from rlm.errors import LMAuthenticationError
from rlm.testing.contract.fixtures import (
    Adapter,
    ContractFixtures,
    ProviderLog,
    RecordingHandler,
    completion_rlm,
    run,
    start_environment,
    started_environments,
)
from rlm.testing.lm_server import RecordedRequest, Reply, ScriptedLMServer
from rlm.testing.scripts import depth_script, fanout_script, is_root_request

CONTEXT_BYTES = 50 * 1024 * 1024


def log_of(adapter: Adapter) -> ProviderLog:
    if adapter.log is None:
        raise NotImplementedError("CloudContract needs Adapter(..., log=<the provider's record>)")
    return adapter.log


def own_sandboxes(adapter: Adapter) -> Adapter:
    """The adapter with a sandbox per session (``child_sandbox="own"``)."""
    return dataclasses.replace(adapter, kwargs={**adapter.kwargs, "child_sandbox": "own"})


def assert_all_gone(log: ProviderLog) -> None:
    assert log.live_sandboxes() == [], "sandboxes left running"
    assert log.live_pids() == [], "sandbox processes left running"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Polls ``condition`` (something the pool does in the background) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting after {timeout:g}s for {what}")
        time.sleep(0.05)


class Trees:
    """Trees on one broker, as ``RLM(sandbox_pool=...)`` runs them: each a broker scope whose
    sessions share its sandbox. Whatever is still open is closed on the way out, the broker
    (with its warm pool) last."""

    def __init__(self, adapter: Adapter, handler: RecordingHandler, **kwargs: Any) -> None:
        self.adapter = adapter
        self.handler = handler
        self.kwargs = {**adapter.kwargs, **kwargs}
        self.server = BrokerServer()
        self._open: dict[BrokerScope, list[SandboxEnvironment]] = {}

    def tree(self) -> BrokerScope:
        scope = self.server.scope()
        self._open[scope] = []
        return scope

    def unstarted(self, tree: BrokerScope) -> SandboxEnvironment:
        """A session of ``tree`` (closed with it), not started yet."""
        env = self.adapter.environment(
            broker=tree, handler=self.handler, label="test", **self.kwargs
        )
        self._open[tree].append(env)
        return env

    def session(self, tree: BrokerScope) -> SandboxEnvironment:
        env = self.unstarted(tree)
        run_sync(env.start())
        return env

    def close(self, tree: BrokerScope) -> None:
        """Closes the tree's sessions, then the tree (its sandbox is destroyed)."""
        for env in self._open.pop(tree):
            run_sync(env.aclose())
        run_sync(tree.aclose())

    @property
    def pool(self) -> WarmPool:
        (pool,) = [r for r in self.server.shared_resources() if isinstance(r, WarmPool)]
        return pool

    def __enter__(self) -> Trees:
        run_sync(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for tree in list(self._open):
                self.close(tree)
        finally:
            run_sync(self.server.aclose())


def where(env: SandboxEnvironment) -> tuple[str, str]:
    """The sandbox directory a session runs in and its fork server's pid: a tree's sessions
    share both, two trees share neither."""
    found = run(env, "import os\nprint(os.path.dirname(os.getcwd()), os.getppid())")
    assert found.ok, found
    directory, server_pid = found.stdout.split()
    return directory, server_pid


class CloudContract(ContractFixtures):
    """What a cloud adapter does with its provider, read from the provider's record."""

    def test_a_tree_of_twelve_children_creates_one_sandbox(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        """A depth-2 ``rlm_query_batched`` over 12 children: one sandbox for the whole tree,
        each session a process with a work directory of its own; nothing is left once the
        tree closes."""
        log = log_of(adapter)
        report = (
            "import os\nv = llm_query('q')\n"
            'answer["content"] = f"{os.getpid()} {os.getcwd()} {os.getppid()}"\n'
            'answer["ready"] = True'
        )
        lm_server.set_script(fanout_script({f"c{i}": report for i in range(12)}))
        with completion_rlm(adapter, lm_server, max_depth=2, max_concurrent_subcalls=12) as rlm:
            result = rlm.completion("ROOT")
            assert log.sandbox_creates() == 1
        replies = [reply.split() for reply in result.response.split("|")]
        assert len(replies) == 12 and all(len(reply) == 3 for reply in replies), result.response
        pids, workdirs, parents = (set(column) for column in zip(*replies, strict=True))
        assert len(pids) == 12, "each child session is a process of its own"
        assert len(workdirs) == 12, "each child session has a work directory of its own"
        assert len(parents) == 1, "every runner was forked by the tree's one fork server"
        assert log.sandbox_deletes() == 1
        assert_all_gone(log)
        assert len(log.file_uploads()) == 1, "one runner upload for the whole tree"

    def test_siblings_see_neither_variables_nor_files(
        self, adapter: Adapter, broker: BrokerServer, handler: RecordingHandler
    ) -> None:
        log = log_of(adapter)
        first = start_environment(adapter.environment, broker, handler, **adapter.kwargs)
        second = start_environment(adapter.environment, broker, handler, **adapter.kwargs)
        try:
            made = run_sync(first.execute("secret = 41\nopen('mine.txt', 'w').write('x')"))
            assert made.ok, made
            probe = run_sync(
                second.execute(
                    "import os\nprint('secret' in globals(), os.path.exists('mine.txt'), "
                    "sorted(os.listdir('.')))"
                )
            )
            assert probe.stdout == "False False []\n", probe
            assert run_sync(first.execute("print(secret + 1)")).stdout == "42\n"
            assert log.sandbox_creates() == 1, "both sessions share the tree's sandbox"
        finally:
            run_sync(first.aclose())
            run_sync(second.aclose())
            run_sync(broker.aclose_resources())
        assert log.sandbox_deletes() == 1
        assert_all_gone(log)

    def test_a_crashing_child_fails_alone_and_its_siblings_finish(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        log = log_of(adapter)
        answer = 'answer["content"] = "{}"\nanswer["ready"] = True'
        plans = {
            # Killed by SIGKILL (as by the OOM killer) in every cell: restarted, then given up.
            "crash": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
            "ok1": 'v = llm_query("q")\n' + answer.format("ok1"),
            "ok2": answer.format("ok2"),
        }
        lm_server.set_script(fanout_script(plans))
        settings = {"max_depth": 2, "max_iterations": 8, "max_concurrent_subcalls": 3}
        with completion_rlm(adapter, lm_server, **settings) as rlm:
            result = rlm.completion("ROOT")
        crashed, ok1, ok2 = result.response.split("|")
        assert crashed.startswith("Error: ") and "restarted more than" in crashed, crashed
        assert (ok1, ok2) == ("ok1", "ok2")
        assert log.sandbox_creates() == 1, "a crashed child's restarts fork, they create nothing"
        assert log.sandbox_deletes() == 1
        assert_all_gone(log)

    def test_depth_three_recursion_in_one_sandbox(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        """Root, child and grandchild are sessions of the tree's one sandbox."""
        log = log_of(adapter)
        lm_server.set_script(depth_script())
        with completion_rlm(adapter, lm_server, max_depth=3) as rlm:
            result = rlm.completion("ROOT DATA", root_prompt="go")
            assert log.sandbox_creates() == 1, "three levels, one sandbox"
        assert result.response == "root got: child got: grand got: leaf answe"
        assert log.sandbox_deletes() == 1
        assert_all_gone(log)

    def test_a_hanging_child_is_killed_alone_while_its_sibling_runs(
        self, adapter: Adapter, broker: BrokerServer, handler: RecordingHandler
    ) -> None:
        """A cell that ignores its interrupt has its runner killed and forked again in the same
        sandbox, with the note its loop hands to the model; a sibling's cell running meanwhile
        finishes, and the sibling keeps its state."""
        log = log_of(adapter)
        with started_environments(adapter.environment, broker, handler, adapter.kwargs) as make:
            hung, sibling = make(cell_timeout=1), make()
            assert run_sync(sibling.execute("kept = 'still here'")).ok

            async def both() -> tuple[CellResult, CellResult]:
                return await asyncio.gather(
                    hung.execute(
                        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                        "time.sleep(600)"
                    ),
                    sibling.execute("import time\ntime.sleep(2)\nprint(kept)"),
                )

            stuck, fine = run_sync(both())
            assert stuck.restarted and "ignored the interrupt" in stuck.error, stuck
            assert fine.stdout == "still here\n" and not fine.error, fine
            assert run_sync(hung.execute("print('back')")).stdout == "back\n"
            assert log.sandbox_creates() == 1, "the restart forked a runner, it created nothing"
        assert_all_gone(log)

    def test_a_child_past_its_memory_limit_fails_alone(
        self, adapter: Adapter, broker: BrokerServer, handler: RecordingHandler
    ) -> None:
        """A session's memory limit is its own (the runner's rlimit): the session that grows
        past it gets the error, the sibling keeps its state, and both go on."""
        log = log_of(adapter)
        # One tree's sessions share their settings (a different memory_mb may size a different
        # sandbox); each session's limit is its runner's own.
        kwargs = {**adapter.kwargs, "memory_mb": 512}
        with started_environments(adapter.environment, broker, handler, kwargs) as make:
            hog, sibling = make(), make()
            assert run_sync(sibling.execute("kept = 'still here'")).ok
            grown = run_sync(hog.execute("x = bytearray(2 * 1024**3)\nprint(len(x))"))
            assert "MemoryError" in grown.error or grown.restarted, grown
            assert run_sync(sibling.execute("print(kept)")).stdout == "still here\n"
            assert run_sync(hog.execute("print('back')")).stdout == "back\n"
            assert log.sandbox_creates() == 1
        assert_all_gone(log)

    def test_own_mode_runs_each_level_in_its_own_sandbox(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        log = log_of(adapter)
        lm_server.set_script(depth_script())
        with completion_rlm(own_sandboxes(adapter), lm_server, max_depth=3) as rlm:
            result = rlm.completion("ROOT DATA", root_prompt="go")
        assert result.response == "root got: child got: grand got: leaf answe"
        assert result.usage_summary.total_calls == 7 == lm_server.usage_total()["calls"]
        # Root, child and grandchild each had a sandbox of their own, all removed by now.
        assert log.sandbox_creates() == 3
        assert log.sandbox_deletes() == 3
        assert_all_gone(log)
        # Each runner went in through the file API; the relay rode the exec's stdin.
        assert len(log.file_uploads()) == 3
        assert log.relay_calls()

    def test_50mb_context_goes_through_the_file_api(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        log = log_of(adapter)
        context = "x" * (CONTEXT_BYTES - 6) + "NEEDLE"
        code = 'answer["content"] = f"{len(context)} {context[-6:]}"\nanswer["ready"] = True'
        lm_server.set_script([f"```repl\n{code}\n```"])
        with completion_rlm(adapter, lm_server) as rlm:
            result = rlm.completion(context)
        assert result.response == f"{CONTEXT_BYTES} NEEDLE"
        uploads = log.file_uploads()
        # The runner zipapp, then the context in parts under the provider's per-file cap.
        part_bytes = getattr(adapter.environment, "part_bytes", None)
        assert part_bytes is not None, "a cloud adapter is a RelayedSandboxEnvironment"
        parts = math.ceil(CONTEXT_BYTES / part_bytes())
        assert parts > 1 and len(uploads) == 1 + parts, uploads
        inband = log.inband_bytes()
        if inband is not None:
            assert inband < 1024 * 1024, "the context travelled in band"

    def test_30mb_from_the_runner_reaches_the_host_through_the_relay(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        """A 30 MB sub-call prompt travels back over the exec stream: tens of MB of relay
        frames through the provider's output path. (An answer is capped at 16 MiB: the prompt
        of an llm_query carries more.)"""
        log = log_of(adapter)
        size = 30 * 1000 * 1000

        def script(request: RecordedRequest) -> str:
            if not is_root_request(request):
                return f"{len(request.prompt)} {request.prompt[-4:]}"
            return (
                f'```repl\nanswer["content"] = llm_query("y" * {size - 3} + "END")\n'
                'answer["ready"] = True\n```'
            )

        lm_server.set_script(script)
        with completion_rlm(adapter, lm_server) as rlm:
            result = rlm.completion("small context")
        assert result.response == f"{size} yEND"
        assert_all_gone(log)

    def test_sandbox_removed_when_the_completion_raises(
        self, adapter: Adapter, lm_server: ScriptedLMServer
    ) -> None:
        log = log_of(adapter)
        lm_server.set_script(['```repl\nx = 1\nprint("running")\n```', Reply("nope", status=401)])
        with completion_rlm(adapter, lm_server) as rlm, pytest.raises(LMAuthenticationError):
            rlm.completion("data")
        assert log.sandbox_creates() == 1
        assert log.sandbox_deletes() == 1
        assert_all_gone(log)

    def test_runaway_cell_interrupted_then_a_stubborn_one_killed(
        self, adapter: Adapter, broker: BrokerServer, handler: RecordingHandler
    ) -> None:
        """With a sandbox of its own, the stubborn runner is killed through the provider's API."""
        log = log_of(adapter)
        own = own_sandboxes(adapter)
        env = start_environment(own.environment, broker, handler, **own.kwargs)
        try:
            (runner,) = log.runner_pids()
            run_sync(env.execute("kept = 1"))
            result = run_sync(env.execute("while True: pass", timeout=1.0))
            assert result.interrupted and not result.restarted
            assert log.runner_pids() == [runner], "an interrupt must not restart the runner"
            assert run_sync(env.execute("print(kept)")).stdout == "1\n"

            code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
            result = run_sync(env.execute(code, timeout=1.0))
            assert result.restarted
            assert log.kill_calls(), "the stubborn runner is killed through the provider's API"
            (new_runner,) = log.runner_pids()
            assert new_runner != runner and runner not in log.live_pids()
            assert run_sync(env.execute("print('back')")).stdout == "back\n"
        finally:
            run_sync(env.aclose())
        assert_all_gone(log)

    # ---- a warm pool of tree sandboxes, shared by the trees of one broker --------------------

    def test_a_warm_pool_gives_each_tree_a_sandbox_created_ahead(
        self, adapter: Adapter, handler: RecordingHandler
    ) -> None:
        """``pool_size=1, max_sandboxes=2``: while the first tree runs, the pool creates the
        next tree's sandbox (and starts its runner, fork server and relay); the second tree
        takes it without a create of its own. One tree, one sandbox: its child sessions fork
        there, another tree's never do. Closing a tree destroys its sandbox at the provider
        and the pool refills; closing the broker destroys the one waiting."""
        log = log_of(adapter)
        with Trees(adapter, handler, pool_size=1, max_sandboxes=2) as trees:
            first_tree = trees.tree()
            first = trees.session(first_tree)
            pool = trees.pool
            wait_until(lambda: pool.waiting == 1, "the pool to start a sandbox ahead")
            assert log.sandbox_creates() == 2 and len(log.live_sandboxes()) == 2
            second_tree = trees.tree()
            second = trees.session(second_tree)
            assert log.sandbox_creates() == 2, "the second tree created a sandbox of its own"
            child = trees.session(second_tree)
            assert (pool.started, pool.live, pool.peak_live, pool.waiting) == (2, 2, 2, 0)
            assert where(second) == where(child), "a tree's sessions share its sandbox"
            assert where(first)[0] != where(second)[0], "two trees shared a sandbox directory"
            assert where(first)[1] != where(second)[1], "two trees shared a fork server"
            assert log.sandbox_creates() == 2, "a child session forks, it creates nothing"

            trees.close(first_tree)
            wait_until(lambda: pool.waiting == 1, "the pool to refill once a tree closed")
            assert log.sandbox_deletes() == 1, "the closed tree's sandbox was not destroyed"
            assert log.sandbox_creates() == 3 and len(log.live_sandboxes()) == 2
            trees.close(second_tree)
            assert log.sandbox_deletes() == 2
        assert log.sandbox_creates() == log.sandbox_deletes() == 3
        assert_all_gone(log)

    def test_a_warm_pool_never_holds_more_than_max_sandboxes_at_the_provider(
        self, adapter: Adapter, handler: RecordingHandler
    ) -> None:
        """``max_sandboxes=1``: a second tree waits for the first to close before its sandbox
        is created; the provider never runs two."""
        log = log_of(adapter)
        with Trees(adapter, handler, max_sandboxes=1) as trees:
            first_tree = trees.tree()
            trees.session(first_tree)
            second = trees.unstarted(trees.tree())
            starting = submit(second.start())
            time.sleep(1.0)
            assert not starting.done(), "the second tree started past max_sandboxes"
            assert log.sandbox_creates() == 1 and len(log.live_sandboxes()) == 1
            trees.close(first_tree)
            starting.result(timeout=60)
            assert run(second, "print(6 * 7)").stdout == "42\n"
            assert log.sandbox_creates() == 2 and len(log.live_sandboxes()) == 1
            assert trees.pool.peak_live == 1
        assert_all_gone(log)

    def test_a_pooled_sandbox_the_provider_ended_is_replaced(
        self, adapter: Adapter, handler: RecordingHandler
    ) -> None:
        """A sandbox waiting in the pool that the provider ends on its own (its idle timeout
        running out before the pool's) is not handed to a tree: the tree gets a working
        sandbox created for it. Needs a log with ``end_sandboxes()`` (what the provider does
        when its timeout runs out); skipped for one without."""
        log = log_of(adapter)
        end_sandboxes = getattr(log, "end_sandboxes", None)
        if end_sandboxes is None:
            pytest.skip("this provider log cannot end sandboxes from the provider's side")
        with Trees(adapter, handler, pool_size=1) as trees:
            first_tree = trees.tree()
            trees.session(first_tree)
            pool = trees.pool
            wait_until(lambda: pool.waiting == 1, "the pool to start a sandbox ahead")
            trees.close(first_tree)
            assert len(log.live_sandboxes()) == 1, "only the waiting sandbox is left"
            end_sandboxes()
            assert log.live_sandboxes() == []
            second = trees.session(trees.tree())
            assert run(second, "print(6 * 7)").stdout == "42\n"
            assert log.sandbox_creates() >= 3, "the ended sandbox was handed to the tree"
        assert_all_gone(log)

    def test_idle_sandboxes_of_a_warm_pool_are_destroyed_at_the_provider(
        self, adapter: Adapter, handler: RecordingHandler
    ) -> None:
        """A sandbox waiting longer than ``pool_idle_timeout`` is destroyed (the provider bills
        it while it waits); the tree in use keeps its own."""
        log = log_of(adapter)
        with Trees(adapter, handler, pool_size=1, pool_idle_timeout=1.0) as trees:
            session = trees.session(trees.tree())
            pool = trees.pool
            wait_until(lambda: log.sandbox_creates() == 2, "the pool to start a sandbox ahead")
            wait_until(
                lambda: log.sandbox_deletes() == 1 and pool.live == 1,
                "the idle sandbox to be destroyed",
            )
            assert pool.waiting == 0
            assert len(log.live_sandboxes()) == 1
            assert run(session, "print('still here')").stdout == "still here\n"
        assert log.sandbox_creates() == log.sandbox_deletes()
        assert_all_gone(log)
