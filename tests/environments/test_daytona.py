"""The Daytona adapter through the real ``daytona`` SDK, against the wire-level stand-in.

``python -m pytest tests/environments -k daytona``. The live test at the end needs
``RLM_LIVE_DAYTONA=1`` and ``DAYTONA_API_KEY``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import own_sandbox_standins, start_environment
from standin_daytona import SKIP_REASON
from standin_daytona import running_standin as shared_tree_standin

from rlm.broker.loop import run_sync
from rlm.errors import ConfigurationError, SandboxStartError

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"daytona: {SKIP_REASON}")


#: A sandbox per session: these tests are about the provider's own sandbox and exec stream.
running_standin = own_sandbox_standins(shared_tree_standin)


@pytest.fixture
def daytona() -> Iterator[tuple[Any, dict[str, Any]]]:
    """The stand-in and the environment_kwargs that reach it."""
    with running_standin() as (server, kwargs):
        yield server, kwargs


def calls(server: Any, pattern: str) -> list[str]:
    return [c for c in server.calls if re.fullmatch(pattern, c)]


def make_env(broker: Any, handler: Any, kwargs: dict[str, Any], **extra: Any) -> Any:
    return start_environment("daytona", broker, handler, **{**kwargs, **extra})


def test_default_image_installs_the_runner_dependencies_and_start_is_event_driven(broker, handler):
    # Three provisioning steps of 0.25 s: polling (the SDK's fallback, once a second) would need
    # a second GET; the Socket.IO event wakes the SDK as soon as the sandbox is started.
    with running_standin(step_delay=0.25) as (server, kwargs):
        env = make_env(broker, handler, kwargs)
        try:
            (sandbox,) = server.sandboxes.values()
            dockerfile = sandbox.request["buildInfo"]["dockerfileContent"]
            assert dockerfile.startswith("FROM python:3.12-slim")
            assert "grpcio>=1.85.1" in dockerfile and "protobuf>=7.35" in dockerfile
            assert server.socket_connections, "the SDK should use the event socket"
            assert server.socket_connections[0]["token"] == server.api_key
            assert len(calls(server, rf"GET /api/sandbox/{sandbox.id}")) == 1
            assert run_sync(env.execute("print(6 * 7)")).stdout == "42\n"
        finally:
            run_sync(env.aclose())


def test_create_request_is_locked_down_and_snapshot_is_used_as_given(daytona, broker, handler):
    server, kwargs = daytona
    env = make_env(broker, handler, kwargs, snapshot="rlm-runner", labels={"team": "x"})
    try:
        (sandbox,) = server.sandboxes.values()
        request = sandbox.request
        assert request["snapshot"] == "rlm-runner" and "buildInfo" not in request
        assert request["networkBlockAll"] is True, "the runner needs no network"
        assert request["autoStopInterval"] == 15 and request["autoDeleteInterval"] == 0
        assert request["env"] == {}
        assert request["labels"]["rlm"] == "test" and request["labels"]["team"] == "x"
    finally:
        run_sync(env.aclose())
    with pytest.raises(ConfigurationError, match="either image= or snapshot="):
        make_env(broker, handler, kwargs, snapshot="a", image="python:3.12")


def test_sandbox_never_holds_the_api_key_or_the_broker_token(daytona, broker, handler, monkeypatch):
    server, kwargs = daytona
    # The key reaches the SDK through the host's environment, as usual for users.
    monkeypatch.setenv("DAYTONA_API_KEY", server.api_key)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-only")
    env = make_env(broker, handler, {k: v for k, v in kwargs.items() if k != "api_key"})
    try:
        token = env._session.token
        pids = server.live_pids()
        (runner,) = server.runner_pids()
        assert runner in pids
        for pid in pids:  # the session shell and the runner
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
            names = [entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry]
            for secret in (server.api_key.encode(), token.encode(), b"sk-host-only"):
                assert secret not in environ and secret not in cmdline
            assert not [n for n in names if re.search(rb"KEY|TOKEN|SECRET", n.upper())], names
            if pid == runner:  # an allow-list, whatever the sandbox's own environment holds
                assert sorted(names) == [b"HOME", b"LANG", b"PATH"], names
        seen = run_sync(env.execute("import os\nprint(sorted(os.environ))")).stdout
        assert "DAYTONA_API_KEY" not in seen and "OPENAI_API_KEY" not in seen
    finally:
        run_sync(env.aclose())


def test_standin_echoes_stdin_into_the_log_unless_suppressed_as_the_daemon_does(daytona):
    """Why the adapter sets ``suppress_input_echo``: without it the daemon copies every input
    into the command's stdout, and the relay would read its own frames back."""
    server, kwargs = daytona

    async def scenario() -> dict[bool, str]:
        import daytona as sdk

        config = sdk.DaytonaConfig(api_key=kwargs["api_key"], api_url=kwargs["api_url"])
        client = sdk.AsyncDaytona(config)
        outputs = {}
        try:
            params = sdk.CreateSandboxFromSnapshotParams(snapshot="any")
            sandbox = await client.create(params)
            for suppress in (False, True):
                session = f"echo-{suppress}"
                await sandbox.process.create_session(session)
                request = sdk.SessionExecuteRequest(
                    command="head -n 1", run_async=True, suppress_input_echo=suppress
                )
                command = await sandbox.process.execute_session_command(session, request)
                await sandbox.process.send_session_command_input(session, command.cmd_id, "hi")
                seen: list[str] = []
                await sandbox.process.get_session_command_logs_async(
                    session, command.cmd_id, seen.append, seen.append
                )
                outputs[suppress] = "".join(seen)
                done = await sandbox.process.get_session_command(session, command.cmd_id)
                assert done.exit_code == 0
            await sandbox.delete()
        finally:
            await client.close()
        return outputs

    outputs = run_sync(scenario())
    assert outputs == {False: "hi\nhi\n", True: "hi\n"}
    assert server.live_sandboxes() == []


def test_missing_interpreter_fails_the_start_with_a_hint_and_deletes_the_sandbox(
    daytona, broker, handler
):
    server, kwargs = daytona
    with pytest.raises(SandboxStartError, match="pass python="):
        make_env(broker, handler, kwargs, python="/nonexistent/python3", startup_timeout=10)
    assert len(calls(server, r"POST /api/sandbox")) == 1
    assert server.live_sandboxes() == [] and server.live_pids() == []


def test_missing_api_key_is_a_configuration_error(daytona, broker, handler):
    server, kwargs = daytona
    with pytest.raises(ConfigurationError, match="DAYTONA_API_KEY"):
        make_env(broker, handler, {k: v for k, v in kwargs.items() if k != "api_key"})
    assert calls(server, r"POST /api/sandbox") == []


def test_missing_sdk_names_the_extra(monkeypatch, broker, handler):
    monkeypatch.setitem(sys.modules, "daytona", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[daytona\]'"):
        make_env(broker, handler, {"api_key": "k"})


def command_logs(server: Any) -> bytes:
    """Everything the stand-in's daemon logged for every command (the relay's stream)."""
    return b"".join(
        bytes(command.log)
        for sandbox in server.sandboxes.values()
        for session in sandbox.sessions.values()
        for command in session.commands.values()
    )


def test_only_frames_reach_the_daemon_log_and_fd_output_is_the_cells(daytona, broker, handler):
    """The daemon labels stdout and stderr line by line into one log file, and writes a long
    frame line in several pieces: bytes written to fd 2 (by a subprocess, or by C code) while
    frames are on their way can land inside a frame. So nothing but frames may reach the
    runner's stdout or stderr: what user code and its subprocesses write to fds 1 and 2 is the
    cell's output."""
    server, kwargs = daytona
    env = make_env(broker, handler, kwargs, max_output_chars=2_000_000)
    try:
        code = (
            "import os, subprocess, threading\n"
            "noise = subprocess.Popen(['sh', '-c', 'yes stderr-noise | head -c 200000 >&2'])\n"
            "def c_level():\n"
            "    for _ in range(2000):\n"
            "        os.write(2, b'fd-2-noise\\n')\n"
            "spew = threading.Thread(target=c_level)\n"
            "spew.start()\n"
            "for i in range(6):\n"
            "    print(str(i) * 200_000)\n"
            "noise.wait()\n"
            "spew.join()\n"
            "_ = subprocess.run(['echo', 'from a subprocess'])\n"
        )
        result = run_sync(env.execute(code, timeout=120))
        expected = "".join(str(i) * 200_000 + "\n" for i in range(6))
        assert result.stdout == expected + "from a subprocess\n"
        # Both writers share fd 2: each os.write of a line is atomic, but `head` writes 4 KiB
        # blocks that end mid-line, so a thread's line can land inside one of its lines.
        assert result.stderr.count("fd-2-noise\n") == 2000
        rest = result.stderr.replace("fd-2-noise\n", "")
        assert rest.count("stderr-noise\n") == 200_000 // len("stderr-noise\n")
        assert not result.restarted
        assert run_sync(env.execute("print('still here')")).stdout == "still here\n"
        log = command_logs(server)
        assert b"noise" not in log and b"from a subprocess" not in log
    finally:
        run_sync(env.aclose())


def test_a_log_stream_that_closes_mid_session_is_followed_again(broker, handler):
    """Daytona ends a log stream on any WebSocket close; the runner keeps running, so the
    adapter follows its log again (from the start: the relay drops what it already has)."""
    with running_standin(drop_log_stream_after=200_000) as (server, kwargs):
        env = make_env(broker, handler, kwargs, max_output_chars=1_000_000)
        try:
            (runner,) = server.runner_pids()
            result = run_sync(env.execute("print('d' * 500_000)"))
            assert result.stdout == "d" * 500_000 + "\n" and not result.restarted
            assert server.dropped_streams == 1
            assert env._relay.reattachments == 1
            assert server.runner_pids() == [runner]
        finally:
            run_sync(env.aclose())
