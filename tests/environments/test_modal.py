"""The Modal adapter through the real ``modal`` SDK, against the wire-level stand-in.

``python -m pytest tests/environments -k modal``. The live test at the end needs
``RLM_LIVE_MODAL=1`` and Modal credentials (``MODAL_TOKEN_ID``/``MODAL_TOKEN_SECRET`` or a
``modal token new`` profile).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import own_sandbox_standins, start_environment
from standin_modal import SKIP_REASON
from standin_modal import (
    running_standin as shared_tree_standin,
)

from rlm.broker.loop import run_sync
from rlm.errors import ConfigurationError, SandboxError

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"modal: {SKIP_REASON}")


#: A sandbox per session: these tests are about the provider's own sandbox and exec stream.
running_standin = own_sandbox_standins(shared_tree_standin)


@pytest.fixture
def modal_standin() -> Iterator[tuple[Any, dict[str, Any]]]:
    """The stand-in and the environment_kwargs that reach it."""
    with running_standin() as (server, kwargs):
        yield server, kwargs


def make_env(broker: Any, handler: Any, kwargs: dict[str, Any], **extra: Any) -> Any:
    return start_environment("modal", broker, handler, **{**kwargs, **extra})


def assert_all_gone(server: Any) -> None:
    assert server.live_sandboxes() == [] and server.live_pids() == []


def test_default_image_installs_the_runner_dependencies_and_network_is_blocked(
    modal_standin, broker, handler
):
    from modal_proto import api_pb2

    server, kwargs = modal_standin
    env = make_env(broker, handler, kwargs)
    try:
        commands = [c for image in server.images.values() for c in image.dockerfile_commands]
        assert any(c.startswith("FROM python:3.12") for c in commands), commands
        pip = [c for c in commands if "pip install" in c and "grpcio" in c]
        assert pip and "grpcio>=1.85.1" in pip[0] and "protobuf>=7.35" in pip[0], commands
        definition = server.sandboxes[env.sandbox_id].definition
        blocked = api_pb2.NetworkAccess.NetworkAccessType.BLOCKED
        assert definition.network_access.network_access_type == blocked
        assert definition.timeout_secs == 3600 and definition.idle_timeout_secs == 300
        assert definition.resources.memory_mb == env.memory_mb
        # Callbacks still work: they ride the exec stream, not the network.
        assert run_sync(env.execute("print(llm_query('q'))")).stdout == "echo:q\n"
    finally:
        run_sync(env.aclose())
    assert_all_gone(server)


def test_image_kwarg_replaces_the_default_image(modal_standin, broker, handler):
    import modal
    from modal_proto import api_pb2

    server, kwargs = modal_standin
    image = modal.Image.from_registry("python:3.12-slim").pip_install("grpcio>=1.85.1")
    env = make_env(broker, handler, kwargs, image=image, block_network=False)
    try:
        commands = [list(i.dockerfile_commands) for i in server.images.values()]
        assert ["FROM python:3.12-slim"] in commands, commands
        assert not any("debian" in c for layer in commands for c in layer)
        definition = server.sandboxes[env.sandbox_id].definition
        assert definition.image_id == image.object_id
        assert definition.network_access.network_access_type == api_pb2.NetworkAccess.OPEN
        assert run_sync(env.execute("print('custom')")).stdout == "custom\n"
    finally:
        run_sync(env.aclose())


def test_sandbox_never_holds_the_modal_token_or_the_broker_token(
    modal_standin, broker, handler, monkeypatch
):
    server, kwargs = modal_standin
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-only")
    # The container's own environment carries a secret (as a Modal Secret would): the runner's
    # allow-listed environment must not.
    env = make_env(
        broker, handler, kwargs, sandbox_kwargs={"env": {"CONTAINER_API_KEY": "in-container"}}
    )
    try:
        token = env._session.token
        (pid,) = server.live_pids()
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read()
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
        assert b"runner.pyz" in cmdline
        from rlm_standins.modal import TOKEN_ID, TOKEN_SECRET

        secrets = (TOKEN_ID, TOKEN_SECRET, token, "sk-host-only", "in-container")
        for secret in secrets:
            assert secret.encode() not in environ and secret.encode() not in cmdline, secret
        names = [entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry]
        assert not [n for n in names if re.search(rb"KEY|TOKEN|SECRET", n.upper())], names
        # No exec the SDK made carried a secret on its command line either.
        for _sandbox, argv, _pid in server.exec_log:
            assert not any(s in " ".join(argv) for s in secrets)
        seen = run_sync(env.execute("import os\nprint(sorted(os.environ))")).stdout
        assert "CONTAINER_API_KEY" not in seen and "MODAL_TOKEN" not in seen
    finally:
        run_sync(env.aclose())
    assert_all_gone(server)


def test_expired_command_router_jwt_is_refreshed(broker, handler):
    with running_standin(router_jwt_seconds=1) as (server, kwargs):
        env = make_env(broker, handler, kwargs)
        try:
            accesses = server.calls.count("SandboxGetCommandRouterAccess")
            time.sleep(1.5)
            # Stdin writes meet the expired JWT, are refused, the SDK fetches a fresh one.
            assert run_sync(env.execute("print(6 * 7)")).stdout == "42\n"
            assert server.calls.count("SandboxGetCommandRouterAccess") > accesses
        finally:
            run_sync(env.aclose())
        assert_all_gone(server)


def test_a_python_that_cannot_start_fails_fast_and_terminates(modal_standin, broker, handler):
    server, kwargs = modal_standin
    # The runner's exit is the error (not a startup timeout): it failed as soon as it could.
    with pytest.raises(SandboxError, match=r"exited with code 127.*/nonexistent/python3"):
        make_env(broker, handler, kwargs, python="/nonexistent/python3")
    assert server.calls.count("SandboxTerminateV2") == 1
    assert_all_gone(server)


# A process that leaves a sandbox open: it exits (or is interrupted in a cell) without closing.
EXIT_SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {here!r})
from conftest import RecordingHandler
from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.modal import ModalEnvironment

broker = BrokerServer()
run_sync(broker.start())
env = ModalEnvironment(broker=broker, handler=RecordingHandler(), **{kwargs!r})
run_sync(env.start())
print("started", flush=True)
if {mode!r} == "ctrl-c":
    run_sync(env.execute("import time; time.sleep(60)"))
"""


@pytest.mark.parametrize("mode", ["exit", "ctrl-c"])
def test_sandbox_terminated_at_interpreter_exit_and_on_ctrl_c(modal_standin, mode):
    """The SDK's own exit hook stops its event loop: the adapter must terminate its sandboxes
    before that, or they run (billed) until their timeout."""
    import signal
    import subprocess

    server, kwargs = modal_standin
    script = EXIT_SCRIPT.format(
        here=os.path.dirname(__file__),
        kwargs={**kwargs, "token_id": "ak-child", "token_secret": "as-child"},
        mode=mode,
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "started\n"
        if mode == "ctrl-c":
            deadline = time.monotonic() + 10
            while server.calls.count("TaskExecStdinWrite") < 3 and time.monotonic() < deadline:
                time.sleep(0.05)  # bootstrap, then the cell on its way
            time.sleep(0.5)
            child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert server.calls.count("SandboxTerminateV2") == 1, err
    assert "never awaited" not in err, err
    assert_all_gone(server)


def test_missing_credentials_is_a_configuration_error(modal_standin, broker, handler, monkeypatch):
    server, kwargs = modal_standin
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    with pytest.raises(ConfigurationError, match="MODAL_TOKEN_ID"):
        make_env(broker, handler, kwargs)
    assert "SandboxCreateV2" not in server.calls


def test_tokens_from_environment_kwargs(modal_standin, broker, handler, monkeypatch):
    server, kwargs = modal_standin
    monkeypatch.delenv("MODAL_TOKEN_ID")
    monkeypatch.delenv("MODAL_TOKEN_SECRET")
    env = make_env(broker, handler, kwargs, token_id="ak-kwarg", token_secret="as-kwarg")
    try:
        assert run_sync(env.execute("print('ok')")).stdout == "ok\n"
        assert server.token_ids == {"ak-kwarg"}
    finally:
        run_sync(env.aclose())


def test_missing_sdk_names_the_extra(monkeypatch, broker, handler):
    monkeypatch.setitem(sys.modules, "modal", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[modal\]'"):
        make_env(broker, handler, {"token_id": "a", "token_secret": "b"})


def test_a_dropped_stdout_stream_resumes_from_its_offset(broker, handler):
    """Modal's stdout stream reconnects at its byte offset (the SDK reads again from there):
    the relay sees no gap."""
    with running_standin(drop_stdout_stream_after=200_000) as (server, kwargs):
        env = start_environment("modal", broker, handler, max_output_chars=1_000_000, **kwargs)
        try:
            result = run_sync(env.execute("print('m' * 500_000)"))
            assert result.stdout == "m" * 500_000 + "\n" and not result.restarted
            assert server.dropped_streams == 1
            assert env._relay.reattachments == 0
        finally:
            run_sync(env.aclose())


def test_throttled_router_calls_are_waited_out(broker, handler):
    """Modal throttles with RESOURCE_EXHAUSTED and a retry policy: the SDK waits and retries,
    and the session goes on."""
    from rlm_standins._shaping import Shaping

    with running_standin(shaping=Shaping(throttle_every=3, retry_after=0.1)) as (server, kwargs):
        env = start_environment("modal", broker, handler, **kwargs)
        try:
            for i in range(5):
                assert run_sync(env.execute(f"print({i})")).stdout == f"{i}\n"
            assert server.throttled_calls > 0
        finally:
            run_sync(env.aclose())
