"""rlm.integrations.verifiers: a verifiers (0.4) evaluation whose rollouts are RLM completions in
our sandboxes, against the scripted LM server through verifiers' interception endpoint.

Runs where verifiers is installed: in ``.venv-verifiers`` (``.ci/sdk-venvs.sh``), driven from
the main suite by ``test_isolated_integrations.py``. verifiers pins ``openai<3``, so this is
also where rlm's OpenAI client is exercised on openai 2.x.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest
from docker_check import our_containers

pytest.importorskip("verifiers", reason="verifiers is tested in .venv-verifiers (.ci/sdk-venvs.sh)")

import openai
import verifiers.v1 as vf
from verifiers.v1.utils.loaders import load_environment

from rlm.broker.server import BrokerServer
from rlm.integrations.oolong import (
    OolongTaskset,
    OolongTasksetConfig,
    count_reward,
    make_record_log,
)
from rlm.integrations.verifiers import (
    RLMSandboxHarness,
    RLMSandboxHarnessConfig,
    close_shared_pools,
    shared_pool,
)
from rlm.testing import ScriptedLMServer
from rlm.testing.leaks import runner_pids
from rlm.testing.lm_server import RecordedRequest, content_text

QUESTION = re.compile(r"have the label '(\w+)'")


def _script(request: RecordedRequest) -> str:
    """A root model that counts the asked label in code and asks one sub-question; each
    sub-call (llm_query) gets a fixed reply."""
    text = "\n".join(content_text(m.get("content")) for m in request.messages)
    asked = QUESTION.search(text)
    if asked is None:
        return "SUB-REPLY"
    return (
        "```repl\n"
        f"n = sum(1 for line in context.splitlines() if 'label: {asked.group(1)} |' in line)\n"
        "note = llm_query('Summarise: ' + context[:200])\n"
        "print(n, note)\n"
        "answer['content'] = str(n)\n"
        "answer['ready'] = True\n"
        "```"
    )


async def _evaluate(
    environment: str,
    base_url: str,
    tasks: int,
    rollouts: int,
    harness: RLMSandboxHarnessConfig | None = None,
) -> list:
    os.environ["RLM_TEST_LM_KEY"] = "test-key"
    config = vf.SingleAgentEnvConfig(
        taskset=OolongTasksetConfig(num_tasks=tasks, records=300, seed=7),
        agent=vf.AgentConfig(
            runtime=vf.SubprocessConfig(),
            harness=harness or RLMSandboxHarnessConfig(environment=environment, max_iterations=3),
        ),
    )
    env = load_environment(config)
    ctx = vf.ModelContext(
        model="root-model",
        client=vf.EvalClientConfig(base_url=base_url, api_key_var="RLM_TEST_LM_KEY"),
    )
    async with env.serving():
        slots = [slot for task in env.taskset for slot in env.slots(task, rollouts)]
        return await asyncio.gather(*(env.run_slot(slot, ctx) for slot in slots))


def test_evaluation_records_rewards_trajectories_and_usage(environment: str) -> None:
    tasks, rollouts = 2, 2
    with ScriptedLMServer(_script) as server:
        episodes = asyncio.run(_evaluate(environment, server.base_url, tasks, rollouts))
    assert len(episodes) == tasks * rollouts
    for episode in episodes:
        assert episode.ok, episode.errors
        (trace,) = episode.traces
        assert trace.ok, trace.errors
        gold = trace.task.data.answer
        assert trace.root_reply == str(gold)
        assert trace.rewards["count_accuracy"].score == 1.0
        # The trajectory as verifiers records it: the root turn (the code) and the sub-call,
        # each a model call with its own usage, all through the rollout's endpoint.
        assert len(trace.calls) == 2
        assert all(call.usage and call.usage.prompt_tokens > 0 for call in trace.calls)
        assert any("```repl" in (m.content or "") for m in trace.assistant_messages)
        assert trace.metrics["rlm_iterations"] == 1
        assert trace.metrics["rlm_sub_calls"] == 1
        assert trace.metrics["rlm_input_tokens"] == sum(c.usage.prompt_tokens for c in trace.calls)
        assert trace.metrics["rlm_output_tokens"] == sum(
            c.usage.completion_tokens for c in trace.calls
        )
        assert trace.info["rlm"]["environment"] == environment
    assert len(server.requests) == 2 * tasks * rollouts
    close_shared_pools()
    assert not runner_pids(parent=os.getpid())
    if environment == "docker":
        assert not our_containers(os.getpid())


class _Peak:
    """Samples ``count()`` every 20 ms in a thread while in use; ``value`` is the highest."""

    def __init__(self, count: Callable[[], int]) -> None:
        self.count = count
        self.value = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.value = max(self.value, self.count())

    def __enter__(self) -> _Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


@pytest.fixture
def brokers_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[BrokerServer]]:
    """Every BrokerServer started while the test runs."""
    started: list[BrokerServer] = []
    original = BrokerServer.start

    async def start(self: BrokerServer) -> None:
        started.append(self)
        await original(self)

    monkeypatch.setattr(BrokerServer, "start", start)
    yield started


def test_concurrent_rollouts_share_one_broker_and_a_bounded_warm_pool(
    environment: str, brokers_started: list[BrokerServer]
) -> None:
    """Eight rollouts at once, two rounds: one broker for all of them, at most ``max_sandboxes``
    sandboxes alive at any time (warm ones included), each rollout's model calls, answer and
    usage its own, and nothing left running once the pools are closed."""
    tasks, rollouts, max_sandboxes = 4, 2, 4
    harness = RLMSandboxHarnessConfig(
        environment=environment, max_iterations=3, pool_size=2, max_sandboxes=max_sandboxes
    )
    me = os.getpid()

    def sandboxes() -> int:
        if environment == "docker":
            return len(our_containers(me))
        return len(runner_pids(parent=me))

    try:
        with ScriptedLMServer(_script) as server, _Peak(sandboxes) as peak:
            rounds = [
                asyncio.run(_evaluate(environment, server.base_url, tasks, rollouts, harness))
                for _ in range(2)
            ]
        pool = shared_pool(harness)
        assert pool.started_sandboxes >= tasks * rollouts * 2
        assert 0 < pool.peak_sandboxes <= max_sandboxes
    finally:
        close_shared_pools()
    assert len(brokers_started) == 1
    assert 0 < peak.value <= max_sandboxes
    for episodes in rounds:
        assert len(episodes) == tasks * rollouts
        for episode in episodes:
            assert episode.ok, episode.errors
            (trace,) = episode.traces
            assert trace.ok, trace.errors
            data = trace.task.data
            assert trace.root_reply == str(data.answer)
            assert trace.rewards["count_accuracy"].score == 1.0
            # verifiers attributes a model call to the rollout whose secret it carries: each
            # rollout holds exactly its own root turn and its own sub-call.
            assert len(trace.calls) == 2
            sent = "\n".join(str(node.message.content) for node in trace.nodes)
            assert f"have the label '{data.label}'" in sent
            assert "Summarise: " + data.context[:200] in sent
            assert trace.metrics["rlm_sub_calls"] == 1
            assert trace.metrics["rlm_input_tokens"] == sum(
                c.usage.prompt_tokens for c in trace.calls
            )
            assert trace.metrics["rlm_output_tokens"] == sum(
                c.usage.completion_tokens for c in trace.calls
            )
    assert len(server.requests) == 2 * 2 * tasks * rollouts
    assert not runner_pids(parent=me)
    if environment == "docker":
        assert not our_containers(me)


def test_a_wrong_answer_scores_as_oolong_does() -> None:
    assert count_reward("There are 12 such records", 12) == 1.0
    assert count_reward("11", 12) == 0.75
    assert count_reward("no number", 12) == 0.0
    rng = __import__("random").Random(1)
    context, labels = make_record_log(rng, 50)
    assert len(context.splitlines()) == 50 == len(labels)


def test_taskset_is_deterministic_and_offline() -> None:
    config = OolongTasksetConfig(num_tasks=3, records=100, seed=3)
    first = [task.data for task in OolongTaskset(config)]
    second = [task.data for task in OolongTaskset(config)]
    assert first == second
    for data in first:
        assert data.answer == data.context.count(f"label: {data.label} |")


def test_plugin_ids_resolve_to_our_taskset_and_harness() -> None:
    from verifiers.v1.utils.loaders import default_harness_id, harness_class, taskset_class

    assert taskset_class("rlm_oolong") is OolongTaskset
    assert harness_class("rlm_oolong") is RLMSandboxHarness
    assert default_harness_id("rlm_oolong") == "rlm_oolong"


def test_rlm_openai_client_runs_on_openai_2() -> None:
    # verifiers pins openai<3: the evaluation above went through rlm's client on this version.
    assert openai.__version__.startswith("2."), openai.__version__


def test_the_readme_vf_eval_command_runs(tmp_path) -> None:
    """The README's ``vf-eval @ docs/verifiers-rlm-oolong.toml``, run as a user would, with the
    config's endpoint pointed at the scripted server, its sizes cut down and the sandbox local."""
    import pathlib
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    text = (root / "docs" / "verifiers-rlm-oolong.toml").read_text()
    with ScriptedLMServer(_script) as server:
        changes = {
            "https://api.openai.com/v1": server.base_url,
            '"OPENAI_API_KEY"': '"RLM_TEST_LM_KEY"',
            "num_rollouts = 4": "num_rollouts = 1",
            "limit = 8": "limit = 2",
            "num_tasks = 20": "num_tasks = 2",
            "records = 2000": "records = 300",
            'environment = "docker"': 'environment = "local"',
        }
        for before, after in changes.items():
            assert text.count(before) == 1, f"docs/verifiers-rlm-oolong.toml: {before!r}"
            text = text.replace(before, after)
        config = tmp_path / "eval.toml"
        config.write_text(text)
        done = subprocess.run(
            [str(pathlib.Path(sys.executable).parent / "vf-eval"), "@", str(config)],
            capture_output=True, text=True, cwd=tmp_path, timeout=600,
            env={**os.environ, "RLM_TEST_LM_KEY": "test-key"},
        )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "reward 1.00" in done.stdout and "count_accuracy 1.00" in done.stdout
    assert len(server.requests) == 4  # 2 rollouts: a root turn and a sub-call each
    assert not runner_pids(parent=os.getpid())  # vf-eval's process ended: nothing left
