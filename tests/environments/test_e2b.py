"""The E2B adapter through the real ``e2b`` SDK, against the wire-level stand-in.

Runs in ``.venv-e2b`` (``.ci/sdk-venvs.sh``): ``.venv-e2b/bin/python -m pytest tests/environments
-k e2b``. The live test at the end needs ``RLM_LIVE_E2B=1``, ``E2B_API_KEY`` and the template
(``python -m rlm.environments.e2b build-template``).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import own_sandbox_standins, start_environment
from standin_e2b import SKIP_REASON
from standin_e2b import running_standin as shared_tree_standin

from rlm.broker.loop import run_sync
from rlm.errors import ConfigurationError, SandboxStartError

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"e2b: {SKIP_REASON}")

CREATE = "POST /v2/sandboxes"


#: A sandbox per session: these tests are about the provider's own sandbox and exec stream.
running_standin = own_sandbox_standins(shared_tree_standin)


@pytest.fixture
def e2b() -> Iterator[tuple[Any, dict[str, Any]]]:
    """The stand-in and the environment_kwargs that reach it."""
    with running_standin() as (server, kwargs):
        yield server, kwargs


def make_env(broker: Any, handler: Any, kwargs: dict[str, Any], **extra: Any) -> Any:
    return start_environment("e2b", broker, handler, **{**kwargs, **extra})


def deletes(server: Any) -> list[str]:
    return [c for c in server.calls if c.startswith("DELETE /sandboxes/")]


def assert_all_gone(server: Any) -> None:
    assert server.live_sandboxes() == [] and server.live_pids() == []


def test_sandbox_request_carries_the_timeout_template_and_no_network(e2b, broker, handler):
    server, kwargs = e2b
    env = make_env(broker, handler, kwargs, sandbox_timeout=600, metadata={"team": "x"})
    try:
        (sandbox,) = server.sandboxes.values()
        assert sandbox.template == "rlm-runner"
        assert sandbox.request["timeout"] == 600
        assert sandbox.request["allow_internet_access"] is False
        assert sandbox.request["metadata"] == {"rlm": "test", "team": "x"}
        assert "envVars" not in sandbox.request or not sandbox.request["envVars"]
        assert env.sandbox_id == sandbox.id
        # The runner's directory is private to it.
        assert oct(os.stat(env.sandbox_dir).st_mode & 0o777) == "0o700"
    finally:
        run_sync(env.aclose())
    assert_all_gone(server)


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {here!r})
from conftest import RecordingHandler
from rlm.broker import cleanup
from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.e2b import E2BEnvironment

broker = BrokerServer()
run_sync(broker.start())
cleanup.track(broker)  # as RLM does for its own: closed at exit, after the sandboxes
env = E2BEnvironment(broker=broker, handler=RecordingHandler(), **{kwargs!r})
run_sync(env.start())
print("started", flush=True)
if {mode!r} == "ctrl-c":
    run_sync(env.execute("import time; time.sleep(60)"))
"""


@pytest.mark.parametrize("mode", ["exit", "ctrl-c"])
def test_sandbox_killed_at_interpreter_exit_and_on_ctrl_c(e2b, mode):
    server, kwargs = e2b
    script = EXIT_SCRIPT.format(here=os.path.dirname(__file__), kwargs=kwargs, mode=mode)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "started\n"
        if mode == "ctrl-c":
            time.sleep(1.0)  # the cell on its way
            child.send_signal(signal.SIGINT)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert len(deletes(server)) == 1, err
    assert_all_gone(server)


def test_a_python_that_cannot_start_fails_fast_and_kills_the_sandbox(e2b, broker, handler):
    server, kwargs = e2b
    with pytest.raises(SandboxStartError, match=r"'/nonexistent/python3' .* is missing"):
        make_env(broker, handler, kwargs, python="/nonexistent/python3")
    assert server.calls.count(CREATE) == 1 and len(deletes(server)) == 1
    assert_all_gone(server)


@pytest.mark.parametrize(
    ("install", "message"),
    [(False, "lacks grpcio"), (True, "installing grpcio and protobuf failed")],
)
def test_template_without_the_runner_dependencies(e2b, broker, handler, tmp_path, install, message):
    """A Python without grpcio: the adapter says the template lacks them or, with
    install_requirements=True, tries pip as root (here a venv without pip, so it fails)."""
    server, kwargs = e2b
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
    )
    bare = str(tmp_path / "bare" / "bin" / "python")
    with pytest.raises(SandboxStartError, match=message):
        make_env(broker, handler, kwargs, python=bare, install_requirements=install)
    # Installing needs egress, so asking for it opens the network unless told otherwise.
    (sandbox,) = server.sandboxes.values()
    assert sandbox.request["allow_internet_access"] is install
    assert_all_gone(server)


def test_unknown_template_says_how_to_build_it(e2b, broker, handler):
    server, kwargs = e2b
    with pytest.raises(SandboxStartError, match=r"build-template --name my-tpl"):
        make_env(broker, handler, kwargs, template="my-tpl")
    assert server.sandboxes == {}


def test_sandbox_never_holds_the_api_key_or_the_broker_token(e2b, broker, handler, monkeypatch):
    server, kwargs = e2b
    # The key reaches the SDK through the host's environment, as usual for users.
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-only")
    env = make_env(broker, handler, {k: v for k, v in kwargs.items() if k != "api_key"})
    try:
        token = env._session.token
        (sandbox,) = server.sandboxes.values()
        secrets = (server.api_key.encode(), token.encode(), sandbox.token.encode(), b"sk-host-only")
        pids = server.live_pids()
        assert pids, "the stand-in should show the runner process"
        for pid in pids:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
            names = [entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry]
            for secret in secrets:
                assert secret not in environ and secret not in cmdline
            assert not [n for n in names if re.search(rb"KEY|TOKEN|SECRET", n.upper())], names
            # The allow-list: not even the sandbox's own E2B_* variables reach the runner.
            assert set(names) <= {
                b"PATH",
                b"HOME",
                b"LANG",
                b"LC_ALL",
                b"LC_CTYPE",
                b"TZ",
                b"TMPDIR",
            }
        # And what the sandbox's code can see agrees.
        seen = run_sync(env.execute("import os\nprint(sorted(os.environ))")).stdout
        assert "E2B_API_KEY" not in seen and "OPENAI_API_KEY" not in seen
    finally:
        run_sync(env.aclose())


def test_missing_api_key_is_a_configuration_error(e2b, broker, handler):
    server, kwargs = e2b
    with pytest.raises(ConfigurationError, match="E2B_API_KEY"):
        make_env(broker, handler, {k: v for k, v in kwargs.items() if k != "api_key"})
    assert server.calls.count(CREATE) == 0


def test_wrong_api_key_is_refused_with_a_hint(e2b, broker, handler):
    server, kwargs = e2b
    with pytest.raises(SandboxStartError, match="E2B refused the API key"):
        make_env(broker, handler, {**kwargs, "api_key": "e2b_wrong"})
    assert server.sandboxes == {}


def test_debug_mode_is_refused(e2b, broker, handler, monkeypatch):
    """E2B_DEBUG makes the SDK skip the control API, so kill() would leave sandboxes running."""
    server, kwargs = e2b
    monkeypatch.setenv("E2B_DEBUG", "true")
    with pytest.raises(ConfigurationError, match="E2B_DEBUG"):
        make_env(broker, handler, kwargs)
    assert server.calls == []


def test_missing_sdk_names_the_extra(monkeypatch, broker, handler):
    monkeypatch.setitem(sys.modules, "e2b", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[e2b\]'"):
        make_env(broker, handler, {"api_key": "k"})


def test_an_older_sdk_is_named_with_the_upgrade(monkeypatch, broker, handler):
    from rlm.environments import e2b

    monkeypatch.setattr(e2b, "_sdk_version", lambda: "2.57.0")
    with pytest.raises(ConfigurationError, match=r"e2b>=2\.63 .* 2\.57\.0 is installed"):
        make_env(broker, handler, {"api_key": "k"})


def test_template_definition_uses_python_with_the_runner_dependencies():
    from e2b import Template

    from rlm.environments.e2b import template_definition

    dockerfile = Template.to_dockerfile(template_definition()).splitlines()
    assert dockerfile[0] == "FROM python:3.12"
    (run,) = [line for line in dockerfile if line.startswith("RUN ")]
    # As the shell will split it: the version specifiers must not become redirections.
    assert shlex.split(run.removeprefix("RUN ")) == [
        "pip",
        "install",
        "grpcio>=1.85.1",
        "protobuf>=7.35",
    ]


def test_a_cut_output_stream_is_reconnected_and_the_lost_output_resent(broker, handler):
    """E2B's SDK does not reconnect a broken event stream, and envd drops the output of a
    process nobody is subscribed to: the adapter connects again by pid and the relay asks the
    runner for the frames that were lost meanwhile."""
    with running_standin(drop_output_stream_after=200_000) as (server, kwargs):
        env = start_environment("e2b", broker, handler, max_output_chars=1_000_000, **kwargs)
        try:
            (runner,) = server.live_pids()
            result = run_sync(env.execute("print('e' * 500_000)"))
            assert result.stdout == "e" * 500_000 + "\n" and not result.restarted
            assert server.dropped_streams == 1
            assert env._relay.reattachments == 1
            assert server.live_pids() == [runner]
            assert len([c for c in server.calls if c.endswith("/process.Process/Connect")]) == 1
        finally:
            run_sync(env.aclose())
