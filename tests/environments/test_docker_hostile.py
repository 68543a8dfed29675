"""Hostile code in the docker environment: each attack is contained and the session goes on.

Every test that starts a sandbox runs under each runtime in ``DOCKER_RUNTIMES`` (runc, and gVisor
when usable here; see conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from docker_check import (
    DOCKER_RUNTIMES,
    docker_available,
    docker_variant_id,
    our_containers,
    require_docker_runtime,
)

from rlm.broker.loop import run_sync

pytestmark = pytest.mark.docker

reason = docker_available()
if reason:
    pytest.skip(f"docker: {reason}", allow_module_level=True)

from rlm.environments.docker import (  # noqa: E402
    LABEL,
    RUNSC_MIN_PIDS_LIMIT,
    RUNTIME_LABEL,
    gc,
)
from rlm.errors import ConfigurationError  # noqa: E402


@pytest.fixture(
    params=[pytest.param(r, id=docker_variant_id(r)) for r in DOCKER_RUNTIMES],
)
def env_variant(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """Only docker here, under each runtime."""
    return "docker", require_docker_runtime(request.param)


def run(env, code: str, timeout: float | None = None):
    return run_sync(env.execute(code, timeout=timeout))


@pytest.fixture(autouse=True)
def no_leaked_containers():
    """This test process's containers: none may outlive the test (other runs on the machine
    are not counted)."""
    me = os.getpid()
    before = set(our_containers(me))
    yield
    deadline = time.monotonic() + 10
    while set(our_containers(me)) - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(our_containers(me)) - before, "containers of ours left behind"


def test_fork_bomb_is_contained(make_env, docker_runtime):
    # Under gVisor the pids limit also counts gVisor's own host threads and stub processes: at 64
    # the runner never starts (gVisor panics, "error initializing first thread: resource
    # temporarily unavailable", exit 2), hence gVisor's minimum.
    env = make_env(pids_limit=RUNSC_MIN_PIDS_LIMIT if docker_runtime == "runsc" else 64)
    code = textwrap.dedent(
        """
        import os
        children = 0
        try:
            while True:
                if os.fork() == 0:
                    import time
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as error:
            print("fork refused after", children, type(error).__name__)
        """
    )
    result = run(env, code, timeout=20)
    # Three contained outcomes: the fork fails inside the cell; or the pids limit starves the
    # runner (no thread for gRPC), which dies or stops answering and is replaced from the host;
    # under gVisor, each new process needs a host stub thread: gVisor gets none, panics, and the
    # whole container ends and is replaced. In every case the model is told what happened and the
    # session goes on.
    if "fork refused" not in result.stdout:
        assert result.restarted, result
        assert "died" in result.error or "ignored the interrupt" in result.error
    assert run(env, "print('alive')").stdout == "alive\n"


def test_memory_bomb_hits_the_limit(make_env):
    env = make_env(mem_limit="512m", memory_mb=4096)  # only the cgroup limit applies
    result = run(env, "x = bytearray(2 * 1024**3)\nprint(len(x))", timeout=30)
    assert result.restarted or "MemoryError" in result.error
    assert run(env, "print('alive')").stdout == "alive\n"


def test_root_filesystem_is_read_only_and_work_dir_is_writable(make_env):
    env = make_env()
    result = run(env, "open('/etc/evil', 'w')")
    assert "Read-only file system" in result.error or "Permission denied" in result.error
    result = run(env, "open('/usr/lib/evil', 'w')")
    assert result.error
    # World-writable in the image, so only the read-only root refuses it (under gVisor too, which
    # checks the file mode first and says "Permission denied" for the two above).
    result = run(env, "open('/var/tmp/evil', 'w')")
    assert "Read-only file system" in result.error, result
    ok = run(
        env, "import os\nopen('notes.txt', 'w').write('x')\nprint(os.getcwd(), os.listdir('.'))"
    )
    # The session's own directory below /work (/work itself with a container per session).
    cwd, listing = ok.stdout.split(" ", 1)
    assert cwd.startswith("/work") and listing == "['notes.txt']\n", ok


def test_no_network_to_the_internet_or_the_host(make_env):
    env = make_env()
    code = textwrap.dedent(
        """
        import socket
        for host, port in [("1.1.1.1", 80), ("172.17.0.1", 22), ("127.0.0.1", 22)]:
            try:
                socket.create_connection((host, port), timeout=2)
                print(host, "CONNECTED")
            except OSError as error:
                print(host, "blocked", type(error).__name__)
        print(sorted(n for n in socket.if_nameindex()))
        """
    )
    result = run(env, code, timeout=30)
    assert "CONNECTED" not in result.stdout, result.stdout
    assert result.stdout.count("blocked") == 3
    assert "eth0" not in result.stdout


def test_host_processes_and_files_are_invisible(make_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    env = make_env()
    result = run(
        env,
        "import os\nprint(open('/proc/1/environ','rb').read())\nprint(sorted(os.listdir('/proc'))[:50])",
    )
    assert "sk-host-secret" not in result.stdout + result.error
    host_only = run(env, f"import os\nprint(os.path.exists({os.path.abspath(__file__)!r}))")
    assert host_only.stdout == "False\n"
    secrets = run(env, "import os\nprint(sorted(os.environ))")
    assert not [n for n in eval(secrets.stdout) if any(w in n for w in ("KEY", "TOKEN", "SECRET"))]
    who = run(env, "import os\nprint(os.getuid(), os.geteuid())")
    assert who.stdout == "10001 10001\n"


def test_no_capabilities_and_no_privilege_escalation(make_env, docker_runtime):
    env = make_env()
    result = run(env, "print(open('/proc/self/status').read())")
    caps = {
        line.split(":")[0]: line.split(":")[1].strip()
        for line in result.stdout.splitlines()
        if line.startswith("Cap")
    }
    assert caps["CapEff"] == "0000000000000000"
    assert caps["CapBnd"] == "0000000000000000"
    # no_new_privs as the kernel answers prctl(PR_GET_NO_NEW_PRIVS): setuid binaries (the image
    # has su, newgrp, unix_chkpwd) cannot raise the uid. Under gVisor that kernel is gVisor's,
    # which sets the flag on every process whatever the container asks for.
    nnp = run(env, "import ctypes\nprint(ctypes.CDLL(None, use_errno=True).prctl(39, 0, 0, 0, 0))")
    assert nnp.stdout == "1\n", nnp.error
    lines = [line for line in result.stdout.splitlines() if line.startswith("NoNewPrivs")]
    if docker_runtime == "runsc":
        assert lines == []  # gVisor's procfs has no NoNewPrivs field: the prctl above stands in
    else:
        assert lines == ["NoNewPrivs:\t1"]


def test_huge_print_and_runaway_loop(make_env):
    env = make_env(max_output_chars=500)
    result = run(env, 'print("y" * 10**9)', timeout=60)
    assert len(result.stdout) == 500 and result.stdout_dropped > 0
    loop = run(env, "while True: pass", timeout=1)
    assert loop.interrupted and not loop.restarted
    assert run(env, "print('next')").stdout == "next\n"


def test_warm_pool_hands_out_fresh_containers(broker, handler, env_kwargs):
    from rlm.environments.docker import DockerEnvironment

    envs = []
    try:
        first = DockerEnvironment(
            broker=broker, handler=handler, pool_size=2, child_sandbox="own", **env_kwargs
        )
        run_sync(first.start())
        envs.append(first)
        pool = first.pool
        run_sync(pool.fill(first.pool_key(), first._spawn_runner))
        waiting = [process for _started, process in pool._ready[first.pool_key()]]
        second = DockerEnvironment(
            broker=broker, handler=handler, pool_size=2, child_sandbox="own", **env_kwargs
        )
        run_sync(second.start())
        envs.append(second)
        assert second.pool is pool  # one pool per tree (a broker resource)
        assert second._process in waiting, "the new session did not get a pre-started container"
        run(first, "secret = 1")
        assert run(second, "print('secret' in globals())").stdout == "False\n"
        ids = {env._process.container.id for env in envs}
        assert len(ids) == 2
    finally:
        for env in envs:
            run_sync(env.aclose())
        run_sync(broker.aclose_resources())


def test_gc_removes_orphans_of_dead_owners(env_kwargs):
    import docker

    client = docker.from_env()
    from rlm.environments.docker_image import DEFAULT_IMAGE

    orphan = client.containers.run(
        DEFAULT_IMAGE,
        ["sleep", "60"],
        detach=True,
        network_mode="none",
        labels={
            LABEL: "1",
            "org.rlm.owner-pid": "999999",
            "org.rlm.owner-host": os.uname().nodename,
            RUNTIME_LABEL: env_kwargs.get("runtime", "default"),
        },
        **env_kwargs,
    )
    try:
        orphan.reload()
        assert orphan.status == "running"
        assert orphan.attrs["HostConfig"]["Runtime"] == env_kwargs.get("runtime", "runc")
        assert orphan.id in gc(client)
        # sparse: no inspect per container (another test run's container may go meanwhile).
        assert orphan.id not in {c.id for c in client.containers.list(all=True, sparse=True)}
    finally:
        with contextlib.suppress(Exception):
            orphan.remove(force=True)


def _interrupt_host_mid_cell(tmp_path, stop, env_kwargs) -> None:
    """Starts a host process whose completion sleeps in a docker cell (with ``env_kwargs``), stops
    it with ``stop``, and asserts that its container is gone within 15 s."""
    from rlm.testing import ScriptedLMServer

    with ScriptedLMServer(["```repl\nimport time\ntime.sleep(120)\n```"]) as server:
        script = tmp_path / "host.py"
        script.write_text(
            "from rlm import RLM\n"
            f"RLM(environment='docker', environment_kwargs={env_kwargs!r}, backend_kwargs={{'model_name': 'm', 'base_url': {server.base_url!r}, 'api_key': 'k'}}).completion('d')\n"
        )
        host = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not server.requests:
                time.sleep(0.05)
            time.sleep(1.0)
            assert our_containers(host.pid), "the container never started"
            stop(host)
            host.wait(60)
        finally:
            if host.poll() is None:
                host.kill()
        deadline = time.monotonic() + 15
        while our_containers(host.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not our_containers(host.pid), "the interrupted host left its container behind"


def test_sigint_mid_completion_leaves_no_container(tmp_path, env_kwargs):
    _interrupt_host_mid_cell(tmp_path, lambda host: host.send_signal(signal.SIGINT), env_kwargs)


def test_sigkill_of_the_host_leaves_no_container(tmp_path, env_kwargs):
    # No clean-up code runs: the runner loses its broker, exits, and --rm removes the container.
    _interrupt_host_mid_cell(tmp_path, lambda host: host.kill(), env_kwargs)


def test_depth_two_completion_runs_children_in_their_own_pooled_containers(
    lm_server, make_rlm, env_kwargs
):
    from rlm.testing.scripts import depth_script

    seen_hosts: list[str] = []

    def script(request):
        reply = depth_script()(request)
        return reply

    lm_server.set_script(script)
    rlm = make_rlm(
        max_depth=3,
        environment="docker",
        environment_kwargs={"pool_size": 2, "child_sandbox": "own", **env_kwargs},
        on_event=lambda e: seen_hosts.append(e.run_id) if e.kind == "run_started" else None,
    )
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: grand got: leaf answe"
    assert len(set(seen_hosts)) == 3
    assert result.usage_summary.total_calls == 7


def test_unknown_runtime_is_a_configuration_error_naming_the_registered_ones(broker, handler):
    from rlm.environments.docker import DockerEnvironment

    env = DockerEnvironment(broker=broker, handler=handler, runtime="no-such-runtime")
    with pytest.raises(ConfigurationError) as caught:
        run_sync(env.start())
    run_sync(env.aclose())
    assert "no runtime 'no-such-runtime'" in str(caught.value)
    assert "runc" in str(caught.value)  # the registered ones are listed


def test_runsc_limits_it_cannot_honour_are_configuration_errors(broker, handler):
    from rlm.environments.docker import DockerEnvironment

    require_docker_runtime("runsc")
    for kwargs, words in [
        ({"network": "bridge"}, "--network=none"),
        ({"pids_limit": 64}, f"at least {RUNSC_MIN_PIDS_LIMIT}"),
    ]:
        env = DockerEnvironment(broker=broker, handler=handler, runtime="runsc", **kwargs)
        with pytest.raises(ConfigurationError) as caught:
            run_sync(env.start())
        run_sync(env.aclose())
        assert words in str(caught.value)
