"""Whole completions on every cloud adapter, checked against its stand-in's call log.

By default (``child_sandbox="shared"``) an RLM tree gets one cloud sandbox, every session a
runner forked in it, every runner's connection riding the tree's one relay; ``"own"`` gives each
session a sandbox of its own.

Each provider's fixture module (``standin_<name>.py``) says how to read its stand-in's log:
``sandbox_creates``, ``sandbox_deletes``, ``file_uploads``, ``relay_calls``, ``runner_pids`` and
``kill_calls``, and, where the
stand-in can tell, ``inband_bytes`` (what travelled over stdin or command lines). Provider-specific
behaviour (request fields, kill mechanics, credentials) stays in ``test_<name>.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from conftest import CLOUD_PROVIDERS, start_environment, usable_cloud_fixture
from test_e2e import depth_script
from test_tree_sandbox import fanout_script

from rlm.broker.loop import run_sync
from rlm.environments import environment_class
from rlm.errors import LMAuthenticationError
from rlm.testing import Reply
from rlm.testing.leaks import alive

CONTEXT_BYTES = 50 * 1024 * 1024


@pytest.fixture(params=CLOUD_PROVIDERS)
def cloud(request: pytest.FixtureRequest) -> Iterator[tuple[str, ModuleType, Any, dict[str, Any]]]:
    """(provider name, its fixture module, the running stand-in, the environment_kwargs)."""
    module = usable_cloud_fixture(request.param)
    with module.running_standin() as (server, kwargs):
        yield request.param, module, server, kwargs


def assert_all_gone(server: Any) -> None:
    assert server.live_sandboxes() == [], "sandboxes left running"
    assert server.live_pids() == [], "sandbox processes left running"


def test_own_mode_runs_each_level_in_its_own_sandbox(cloud, lm_server, make_rlm):
    name, log, server, kwargs = cloud
    lm_server.set_script(depth_script())
    rlm = make_rlm(
        max_depth=3, environment=name, environment_kwargs={"child_sandbox": "own", **kwargs}
    )
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: grand got: leaf answe"
    assert result.usage_summary.total_calls == 7 == lm_server.usage_total()["calls"]
    # Root, child and grandchild each had a sandbox of their own, all removed by now.
    assert log.sandbox_creates(server) == 3
    assert log.sandbox_deletes(server) == 3
    assert_all_gone(server)
    # Each runner went in through the file API; the relay rode the exec's stdin.
    assert len(log.file_uploads(server)) == 3
    assert log.relay_calls(server)


def test_a_tree_of_twelve_children_creates_one_sandbox(cloud, lm_server, make_rlm):
    """A depth-2 ``rlm_query_batched`` over 12 children: one cloud sandbox for the whole tree,
    each session a process with a work directory of its own; nothing is left once it ends."""
    name, log, server, kwargs = cloud
    report = (
        "import os\nv = llm_query('q')\n"
        'answer["content"] = f"{os.getpid()} {os.getcwd()} {os.getppid()}"\nanswer["ready"] = True'
    )
    lm_server.set_script(fanout_script({f"c{i}": report for i in range(12)}))
    rlm = make_rlm(
        max_depth=2, max_concurrent_subcalls=12, environment=name, environment_kwargs=kwargs
    )
    result = rlm.completion("ROOT")
    replies = [reply.split() for reply in result.response.split("|")]
    assert len(replies) == 12 and all(len(reply) == 3 for reply in replies), result.response
    pids, workdirs, parents = (set(column) for column in zip(*replies, strict=True))
    assert len(pids) == 12, "each child session is a process of its own"
    assert len(workdirs) == 12, "each child session has a work directory of its own"
    assert len(parents) == 1, "every runner was forked by the tree's one fork server"
    assert log.sandbox_creates(server) == 1
    rlm.close()
    assert log.sandbox_deletes(server) == 1
    assert_all_gone(server)
    # One runner upload for the whole tree.
    assert len(log.file_uploads(server)) == 1


def test_siblings_see_neither_variables_nor_files(cloud, broker, handler):
    name, log, server, kwargs = cloud
    first = start_environment(name, broker, handler, **kwargs)
    second = start_environment(name, broker, handler, **kwargs)
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
        assert log.sandbox_creates(server) == 1, "both sessions share the tree's sandbox"
    finally:
        run_sync(first.aclose())
        run_sync(second.aclose())
        run_sync(broker.aclose_resources())
    assert log.sandbox_deletes(server) == 1
    assert_all_gone(server)


def test_a_crashing_child_fails_alone_and_its_siblings_finish(cloud, lm_server, make_rlm):
    name, log, server, kwargs = cloud
    answer = 'answer["content"] = "{}"\nanswer["ready"] = True'
    lm_server.set_script(
        fanout_script(
            {
                # Killed by SIGKILL (as by the OOM killer) in every cell: restarted, then given up.
                "crash": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
                "ok1": 'v = llm_query("q")\n' + answer.format("ok1"),
                "ok2": answer.format("ok2"),
            }
        )
    )
    rlm = make_rlm(
        max_depth=2,
        max_iterations=8,
        max_concurrent_subcalls=3,
        environment=name,
        environment_kwargs=kwargs,
    )
    result = rlm.completion("ROOT")
    crashed, ok1, ok2 = result.response.split("|")
    assert crashed.startswith("Error: ") and "restarted more than" in crashed, crashed
    assert (ok1, ok2) == ("ok1", "ok2")
    assert log.sandbox_creates(server) == 1, "a crashed child's restarts fork, they create nothing"
    rlm.close()
    assert log.sandbox_deletes(server) == 1
    assert_all_gone(server)


def test_50mb_context_goes_through_the_file_api(cloud, lm_server, make_rlm):
    name, log, server, kwargs = cloud
    context = "x" * (CONTEXT_BYTES - 6) + "NEEDLE"
    lm_server.set_script(
        [
            '```repl\nanswer["content"] = f"{len(context)} {context[-6:]}"\nanswer["ready"] = True\n```'
        ]
    )
    rlm = make_rlm(environment=name, environment_kwargs=kwargs)
    result = rlm.completion(context)
    assert result.response == f"{CONTEXT_BYTES} NEEDLE"
    uploads = log.file_uploads(server)
    # The runner zipapp, then the context in parts under the provider's per-file cap.
    parts = math.ceil(CONTEXT_BYTES / environment_class(name).part_bytes())
    assert parts > 1 and len(uploads) == 1 + parts, uploads
    if hasattr(log, "inband_bytes"):
        assert log.inband_bytes(server) < 1024 * 1024, "the context travelled in band"


def test_30mb_from_the_runner_reaches_the_host_through_the_relay(cloud, lm_server, make_rlm):
    """A 30 MB sub-call prompt travels back over the exec stream: tens of MB of relay frames,
    through the provider's output path (and, with RLM_STANDIN_SHAPING, its latency, bandwidth
    and a drop). (An answer is capped at 16 MiB: the prompt of an llm_query carries more.)"""
    name, _log, server, kwargs = cloud
    size = 30 * 1000 * 1000

    def script(request):
        if not any(m.get("role") == "system" for m in request.messages):
            return f"{len(request.prompt)} {request.prompt[-4:]}"
        return (
            f'```repl\nanswer["content"] = llm_query("y" * {size - 3} + "END")\n'
            'answer["ready"] = True\n```'
        )

    lm_server.set_script(script)
    rlm = make_rlm(environment=name, environment_kwargs=kwargs)
    result = rlm.completion("small context")
    assert result.response == f"{size} yEND"
    rlm.close()
    assert_all_gone(server)


def test_sandbox_removed_when_the_completion_raises(cloud, lm_server, make_rlm):
    name, log, server, kwargs = cloud
    lm_server.set_script(['```repl\nx = 1\nprint("running")\n```', Reply("nope", status=401)])
    rlm = make_rlm(environment=name, environment_kwargs=kwargs)
    with pytest.raises(LMAuthenticationError):
        rlm.completion("data")
    assert log.sandbox_creates(server) == 1
    # The tree's sandbox serves the RLM's next completions too; closing the RLM removes it.
    rlm.close()
    assert log.sandbox_deletes(server) == 1
    assert_all_gone(server)


def test_runaway_cell_interrupted_then_a_stubborn_one_killed(cloud, broker, handler):
    """With a sandbox of its own, the stubborn runner is killed through the provider's API."""
    name, log, server, kwargs = cloud
    env = start_environment(name, broker, handler, child_sandbox="own", **kwargs)
    try:
        (runner,) = log.runner_pids(server)
        run_sync(env.execute("kept = 1"))
        result = run_sync(env.execute("while True: pass", timeout=1.0))
        assert result.interrupted and not result.restarted
        assert log.runner_pids(server) == [runner], "an interrupt must not restart the runner"
        assert run_sync(env.execute("print(kept)")).stdout == "1\n"

        code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
        result = run_sync(env.execute(code, timeout=1.0))
        assert result.restarted
        assert log.kill_calls(server), "the stubborn runner is killed through the provider's API"
        (new_runner,) = log.runner_pids(server)
        assert new_runner != runner and not alive(runner)
        assert run_sync(env.execute("print('back')")).stdout == "back\n"
    finally:
        run_sync(env.aclose())
    assert_all_gone(server)


@pytest.mark.live
@pytest.mark.parametrize("name", CLOUD_PROVIDERS)
def test_live_depth_one_completion(name, lm_server, make_rlm):
    """Against the real provider: runs only with RLM_LIVE_<NAME>=1 and its credentials."""
    module = usable_cloud_fixture(name)
    if not module.live_requested():
        pytest.skip(f"live {name} test: set {module.LIVE_REQUIREMENT}")
    lm_server.set_script(depth_script())
    rlm = make_rlm(max_depth=2, environment=name, environment_kwargs=module.live_kwargs())
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: leaf answer"
