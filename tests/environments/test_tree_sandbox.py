"""A recursion tree shares its sandbox: every session (root, children, grandchildren) is a process
of its own in the tree's one sandbox (local: forked from the fork server; docker: forked inside
the tree's one container, ``child_sandbox="shared"``, the default).

Contract, for local and docker (runc, and gVisor where usable): siblings cannot see each other's
variables or files unless they share them on purpose; a child that crashes or hangs is reported
to its parent as an error string while its siblings finish; depth-3 recursion works; closing the
tree leaves no process and no container; docker creates exactly one container per tree.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from conftest import docker_variant_id, require_docker_runtime, start_environment
from docker_check import docker_available, our_containers

from rlm.broker.loop import run_sync
from rlm.errors import ConfigurationError
from rlm.testing import Reply
from rlm.testing.scripts import depth_script, fanout_script

VARIANTS = [
    pytest.param(("local", None), id="local"),
    pytest.param(("docker", None), id="docker", marks=pytest.mark.docker),
    pytest.param(("docker", "runsc"), id=docker_variant_id("runsc"), marks=pytest.mark.docker),
]


@pytest.fixture(params=VARIANTS)
def tree_env(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    """(environment name, environment_kwargs) of the variant under test."""
    name, runtime = request.param
    if name == "docker":
        reason = docker_available()
        if reason:
            pytest.skip(f"docker: {reason}")
        require_docker_runtime(runtime)
    return name, ({"runtime": runtime} if runtime else {})


@pytest.fixture
def container_creates(tree_env, monkeypatch) -> list[dict[str, Any]]:
    """Every container this process asks the docker engine to create, as docker-py was called."""
    created: list[dict[str, Any]] = []
    if tree_env[0] != "docker":
        return created
    import docker.models.containers

    original = docker.models.containers.ContainerCollection.create

    def create(self, *args: Any, **kwargs: Any) -> Any:
        created.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(docker.models.containers.ContainerCollection, "create", create)
    return created


def run(env, code: str, timeout: float | None = None):
    return run_sync(env.execute(code, timeout=timeout))


def test_siblings_see_neither_variables_nor_files_unless_shared_on_purpose(
    broker, handler, tree_env, container_creates
):
    name, kwargs = tree_env
    first = start_environment(name, broker, handler, **kwargs)
    second = start_environment(name, broker, handler, **kwargs)
    shared = f"/tmp/rlm-shared-{uuid.uuid4().hex}"
    try:
        run(
            first,
            f"secret = 41\nopen('mine.txt', 'w').write('x')\nopen({shared!r}, 'w').write('hi')",
        )
        probe = run(
            second,
            "import os\nprint('secret' in globals(), os.path.exists('mine.txt'), "
            f"open({shared!r}).read())",
        )
        assert probe.stdout == "False False hi\n", probe
        cwd = [run(env, "import os\nprint(os.getcwd())").stdout for env in (first, second)]
        assert cwd[0] != cwd[1]
        assert run(first, "print(secret + 1)").stdout == "42\n"
        if name == "docker":
            assert len(container_creates) == 1, "both sessions should share one container"
            pids = [run(env, "import os\nprint(os.getpid())").stdout for env in (first, second)]
            assert pids[0] != pids[1], "each session is a process of its own"
    finally:
        run_sync(first.aclose())
        run_sync(second.aclose())
        run_sync(broker.aclose_resources())
        if os.path.exists(shared):
            os.remove(shared)


def test_a_sibling_cannot_read_a_sessions_memory(broker, handler, tree_env):
    """Sessions of one sandbox share a user: each runner is non-dumpable, so a sibling cannot
    read its memory (where its broker token is) through /proc."""
    name, kwargs = tree_env
    first = start_environment(name, broker, handler, **kwargs)
    second = start_environment(name, broker, handler, **kwargs)
    try:
        pid = run(first, "import os\nprint(os.getpid())").stdout.strip()
        code = (
            "try:\n"
            f"    open('/proc/{pid}/mem', 'rb').read(1)\n"
            "except OSError as error:\n"
            "    print(type(error).__name__)"
        )
        assert run(second, code).stdout == "PermissionError\n"
    finally:
        run_sync(first.aclose())
        run_sync(second.aclose())
        run_sync(broker.aclose_resources())


def test_a_session_cannot_write_to_the_fork_servers_control_stream(broker, handler, tree_env):
    """The fork server's stdout carries its reports to the host (``P``, ``X``, ``E`` lines): a
    session must not be able to forge them through /proc (the server is non-dumpable)."""
    name, kwargs = tree_env
    if name != "docker":
        pytest.skip(
            "the local fork server reports on a pipe of the host's, out of the runners' reach"
        )
    if kwargs.get("runtime") == "runsc":
        pytest.skip(
            "gVisor's procfs lets a process open a non-dumpable one's fds when the user is the "
            "same (what a forged report can do there: docs/security.md)"
        )
    env = start_environment(name, broker, handler, **kwargs)
    try:
        code = (
            "import os\n"
            "try:\n"
            "    os.open(f'/proc/{os.getppid()}/fd/1', os.O_WRONLY)\n"
            "except OSError as error:\n"
            "    print(type(error).__name__)"
        )
        assert run(env, code).stdout == "PermissionError\n"
    finally:
        run_sync(env.aclose())
        run_sync(broker.aclose_resources())


def test_the_host_bounds_what_it_buffers_from_the_fork_server():
    """A line without an end (or a flood) from the sandbox cannot grow the host's memory."""
    from rlm.environments.forkserver import MAX_REPORT_LINE, StreamForkServer

    async def write(data: bytes) -> None:
        pass

    async def scenario() -> int:
        server = StreamForkServer(write, max_runners=1, what="test")
        for _ in range(64):
            server.feed(b"x" * 65536)
        server.feed(b"\nR\n")
        assert server.ready.is_set()
        return len(server._buffer)

    assert run_sync(scenario()) <= MAX_REPORT_LINE


def test_a_closed_session_leaves_no_work_directory_behind(broker, handler, tree_env):
    name, kwargs = tree_env
    if name != "docker":
        pytest.skip("local sessions get a fresh temporary directory each, removed on close")
    first = start_environment(name, broker, handler, **kwargs)
    second = start_environment(name, broker, handler, **kwargs)
    try:
        workdir = run(first, "import os\nopen('f', 'w').write('x')\nprint(os.getcwd())").stdout
        run_sync(first.aclose())
        probe = run(
            second, f"import os, time\ntime.sleep(0.2)\nprint(os.path.exists({workdir.strip()!r}))"
        )
        assert probe.stdout == "False\n"
    finally:
        run_sync(second.aclose())
        run_sync(broker.aclose_resources())


def test_depth_three_recursion_in_one_sandbox(lm_server, make_rlm, tree_env, container_creates):
    name, kwargs = tree_env
    lm_server.set_script(depth_script())
    rlm = make_rlm(max_depth=3, environment=name, environment_kwargs=kwargs)
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: grand got: leaf answe"
    if name == "docker":
        assert len(container_creates) == 1, "root, child and grandchild share one container"
        assert container_creates[0]["labels"]["org.rlm.child-sandbox"] == "shared"
    rlm.close()
    if name == "docker":
        assert not our_containers(os.getpid()), "closing the tree must remove its container"


def test_a_crashing_child_fails_alone_and_its_siblings_finish(
    lm_server, make_rlm, tree_env, container_creates
):
    name, kwargs = tree_env
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
    if name == "docker":
        assert len(container_creates) == 1, "a crashed child's restarts fork, they start nothing"
    rlm.close()


def test_a_hanging_session_is_killed_alone_while_its_sibling_runs(
    broker, handler, tree_env, container_creates
):
    """A cell that ignores its interrupt gets its runner killed and restarted, with the error
    string its loop hands to the model; a sibling's cell running meanwhile in the same sandbox
    finishes, and the sibling keeps its state."""
    import asyncio

    name, kwargs = tree_env
    hung = start_environment(name, broker, handler, cell_timeout=1, **kwargs)
    sibling = start_environment(name, broker, handler, **kwargs)
    try:
        run(sibling, "kept = 'still here'")

        async def both():
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
        assert run(hung, "print('back')").stdout == "back\n"
        if name == "docker":
            assert len(container_creates) == 1, "the restart forked a runner, started nothing"
    finally:
        run_sync(hung.aclose())
        run_sync(sibling.aclose())
        run_sync(broker.aclose_resources())


def test_a_session_that_exhausts_the_shared_memory_fails_alone(broker, handler, tree_env):
    """Past the container's memory cgroup (its rlimit set higher), the OOM killer takes the
    session that grew, not the fork server nor a sibling: that session is restarted with a
    note, the sibling keeps its state (under runc; see the runsc note below)."""
    name, kwargs = tree_env
    if name != "docker":
        pytest.skip("the memory cgroup belongs to the container")
    limits = {"mem_limit": "512m", "memory_mb": 4096, **kwargs}
    sibling = start_environment(name, broker, handler, **limits)
    hog = start_environment(name, broker, handler, **limits)
    try:
        run(sibling, "kept = 'still here'")
        result = run(hog, "x = bytearray(2 * 1024**3)\nprint(len(x))", timeout=60)
        assert result.restarted or "MemoryError" in result.error, result
        after = run(sibling, "print(kept)")
        if kwargs.get("runtime") == "runsc":
            # gVisor: the cgroup OOM ends the whole sandbox (its kernel is one set of host
            # processes); every session is restarted with the note, none hangs.
            assert after.stdout == "still here\n" or after.restarted, after
        else:
            assert after.stdout == "still here\n", after
        assert run(hog, "print('back')").stdout == "back\n"
    finally:
        run_sync(hog.aclose())
        run_sync(sibling.aclose())
        run_sync(broker.aclose_resources())


def test_the_tree_caps_its_live_sessions(lm_server, make_rlm, tree_env, container_creates):
    name, kwargs = tree_env
    plans = {
        f"c{i}": f'answer["content"] = llm_query("c{i}")\nanswer["ready"] = True' for i in range(3)
    }
    script = fanout_script(plans)

    def slow_leaves(request):
        reply = script(request)
        return Reply(reply, delay=0.3) if reply == "leaf" else reply

    lm_server.set_script(slow_leaves)
    rlm = make_rlm(
        max_depth=2,
        max_concurrent_subcalls=3,
        environment=name,
        environment_kwargs={"max_live_runners": 2, **kwargs},
    )
    result = rlm.completion("ROOT")
    assert result.response == "leaf|leaf|leaf"
    # The root holds one of the two sessions: its children ran one at a time.
    assert lm_server.max_in_flight == 1
    rlm.close()


def test_child_sandbox_names_its_choices(broker, handler):
    from rlm.environments.docker import DockerEnvironment

    with pytest.raises(ConfigurationError, match="'shared' or 'own'"):
        DockerEnvironment(broker=broker, handler=handler, child_sandbox="mine")
    with pytest.raises(ConfigurationError, match="max_live_runners"):
        DockerEnvironment(broker=broker, handler=handler, max_live_runners=0)


def test_own_mode_gives_each_session_its_container(
    lm_server, make_rlm, tree_env, container_creates
):
    name, kwargs = tree_env
    if name != "docker":
        pytest.skip("a docker option")
    lm_server.set_script(depth_script())
    rlm = make_rlm(
        max_depth=3, environment=name, environment_kwargs={"child_sandbox": "own", **kwargs}
    )
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: grand got: leaf answe"
    assert len(container_creates) == 3
    assert {c["labels"]["org.rlm.child-sandbox"] for c in container_creates} == {"own"}
    rlm.close()


def test_the_default_cap_on_live_sessions_fits_the_pids_limit(broker, handler):
    from rlm.environments.docker import TASKS_PER_RUNNER, DockerEnvironment

    for pids_limit, runtime in ((256, None), (4096, None), (256, "runsc"), (64, None)):
        env = DockerEnvironment(
            broker=broker, handler=handler, pids_limit=pids_limit, runtime=runtime
        )
        assert 1 <= env.max_live_runners * TASKS_PER_RUNNER < pids_limit
    assert (
        DockerEnvironment(broker=broker, handler=handler, max_live_runners=3).max_live_runners == 3
    )
