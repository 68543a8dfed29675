"""The Prime adapter through the real ``prime-sandboxes`` SDK, against the wire-level stand-in.

Runs in ``.venv-prime`` (``.ci/sdk-venvs.sh``): ``.venv-prime/bin/python -m pytest
tests/environments -k prime``. The live test at the end needs ``RLM_LIVE_PRIME=1`` and
``PRIME_API_KEY``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import own_sandbox_standins, start_environment
from standin_prime import SKIP_REASON
from standin_prime import running_standin as shared_tree_standin

from rlm.broker.loop import run_sync
from rlm.errors import ConfigurationError, SandboxStartError

pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=f"prime: {SKIP_REASON}")


#: A sandbox per session: these tests are about the provider's own sandbox and exec stream.
running_standin = own_sandbox_standins(shared_tree_standin)


@pytest.fixture
def prime() -> Iterator[tuple[Any, dict[str, Any]]]:
    """The stand-in and the environment_kwargs that reach it."""
    with running_standin() as (server, kwargs):
        yield server, kwargs


def make_env(broker: Any, handler: Any, kwargs: dict[str, Any], **extra: Any) -> Any:
    return start_environment("prime", broker, handler, **{**kwargs, **extra})


def test_failed_setup_deletes_the_sandbox_and_says_what_to_do(prime, broker, handler):
    server, kwargs = prime
    with pytest.raises(SandboxStartError, match=r"missing or older than Python 3\.11"):
        make_env(broker, handler, kwargs, python="/nonexistent/python3")
    assert server.calls.count("POST /api/v1/sandbox") == 1
    assert server.live_sandboxes() == [] and server.live_pids() == []


@pytest.mark.parametrize(
    ("install", "message"),
    [(True, "installing grpcio and protobuf failed"), (False, "lacks grpcio")],
)
def test_image_without_the_runner_dependencies(prime, broker, handler, tmp_path, install, message):
    """A Python without grpcio: the adapter tries pip (here a venv without pip, so it fails)
    or, with install_requirements=False, says that the image lacks them."""
    server, kwargs = prime
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True
    )
    bare = str(tmp_path / "bare" / "bin" / "python")
    with pytest.raises(SandboxStartError, match=message):
        make_env(broker, handler, kwargs, python=bare, install_requirements=install)
    assert server.live_sandboxes() == [] and server.live_pids() == []


def test_sandbox_never_holds_the_api_key_or_the_broker_token(prime, broker, handler, monkeypatch):
    server, kwargs = prime
    # The key reaches the SDK through the host's environment, as usual for users.
    monkeypatch.setenv("PRIME_API_KEY", server.api_key)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-only")
    env = make_env(broker, handler, {k: v for k, v in kwargs.items() if k != "api_key"})
    try:
        token = env._session.token
        pids = server.live_pids()
        assert pids, "the stand-in should show the runner process"
        for pid in pids:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environ = handle.read()
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read()
            names = [entry.split(b"=", 1)[0] for entry in environ.split(b"\0") if entry]
            for secret in (server.api_key.encode(), token.encode(), b"sk-host-only"):
                assert secret not in environ and secret not in cmdline
            assert not [n for n in names if re.search(rb"KEY|TOKEN|SECRET", n.upper())], names
        # And what the sandbox's code can see agrees.
        seen = run_sync(env.execute("import os\nprint(sorted(os.environ))")).stdout
        assert "PRIME_API_KEY" not in seen and "OPENAI_API_KEY" not in seen
    finally:
        run_sync(env.aclose())


def test_provisioning_is_polled_and_expired_gateway_tokens_are_renewed(broker, handler):
    with running_standin(provisioning_polls=1) as (server, kwargs):
        env = make_env(broker, handler, kwargs)
        try:
            assert server.calls.count("POST /api/v1/sandbox/status:batchGet") >= 2
            auths = len([c for c in server.calls if c.endswith("/auth")])
            server.rotate_tokens()
            # SendInput (the relay's stdin) and the upload (a 2 MiB context) meet the old token,
            # are refused, re-authenticate and go through.
            run_sync(env.load_context("y" * (2 << 20)))
            assert run_sync(env.execute("print(len(context))")).stdout == f"{2 << 20}\n"
            assert len([c for c in server.calls if c.endswith("/auth")]) > auths
        finally:
            run_sync(env.aclose())


def test_uploads_above_16_mib_are_refused_and_big_contexts_go_in_parts(prime, broker, handler):
    """Prime caps uploads at 16 MiB per file: the stand-in answers 413 above it, as the platform
    does, and a 40 MiB context still arrives, in parts that each fit."""
    import prime_sandboxes

    server, kwargs = prime
    env = make_env(broker, handler, kwargs)
    try:
        too_big = b"z" * ((16 << 20) + 1)
        with pytest.raises(prime_sandboxes.APIError, match="413"):
            run_sync(
                env._client.upload_bytes(env.sandbox_id, f"{env.sandbox_dir}/big", too_big, "big")
            )
        del too_big
        server.upload_sizes.clear()
        run_sync(env.load_context("q" * (40 << 20)))
        assert run_sync(env.execute("print(len(context))")).stdout == f"{40 << 20}\n"
        assert len(server.upload_sizes) == 5 and max(server.upload_sizes) <= 16 << 20
    finally:
        run_sync(env.aclose())


def test_missing_api_key_is_a_configuration_error(prime, broker, handler):
    server, kwargs = prime
    with pytest.raises(ConfigurationError, match="PRIME_API_KEY"):
        make_env(broker, handler, {k: v for k, v in kwargs.items() if k != "api_key"})
    assert server.calls.count("POST /api/v1/sandbox") == 0


def test_missing_sdk_names_the_extra(monkeypatch, broker, handler):
    monkeypatch.setitem(sys.modules, "prime_sandboxes", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'rlm\[prime\]'"):
        make_env(broker, handler, {"api_key": "k"})


def test_output_lost_while_the_sdk_reattaches_is_resent(broker, handler):
    """The SDK re-attaches a dropped stream by itself but output emitted meanwhile is gone: a
    hole in the byte stream. The relay notices the missing frames and has them resent."""
    with running_standin(drop_stream_after=200_000) as (server, kwargs):
        env = make_env(broker, handler, kwargs, max_output_chars=1_000_000)
        try:
            (runner,) = server.live_pids()
            result = run_sync(env.execute("print('p' * 500_000)"))
            assert result.stdout == "p" * 500_000 + "\n" and not result.restarted
            assert server.dropped_streams == 1
            assert server.calls.count("POST gateway:/command_session.CommandSession/Connect") == 1
            assert any("resend" in problem for problem in env._relay.problems)
            assert server.live_pids() == [runner]
        finally:
            run_sync(env.aclose())
