"""Red-team scenarios through the public API, in every sandbox (``local``, ``docker`` under runc and
gVisor): the scripted model plays an attacker whose code tries what a prompt-injected context could
make a real model write. What each environment promises is in docs/security.md; a scenario that an
environment does not promise is skipped here with that reason, never passed silently.

The budget and host-memory scenarios live in ``test_budget_limits.py`` and ``test_host_memory.py``
and take the same ``sandbox`` fixture.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from docker_check import our_containers

from rlm.testing import RecordedRequest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the scenarios read /proc (Linux)"
)


def attacker(*cells: str, final: str = "done") -> Callable[[RecordedRequest], str]:
    """A root model that sends ``cells`` in turn (one per iteration), then answers ``final``;
    sub-calls (requests without a system prompt) get "sub ok"."""

    def script(request: RecordedRequest) -> str:
        if not any(m.get("role") == "system" for m in request.messages):
            return "sub ok"
        turn = sum(m.get("role") == "assistant" for m in request.messages)
        if turn < len(cells):
            return f"```repl\n{cells[turn]}\n```"
        return f'```repl\nanswer["content"] = {final!r}\nanswer["ready"] = True\n```'

    return script


def cell_results(result: Any) -> list[dict[str, Any]]:
    """Every code block's result of a completion, in order."""
    return [
        block["result"]
        for iteration in result.metadata["iterations"]
        for block in iteration["code_blocks"]
    ]


def host_processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds ``marker`` (processes of a runc container are host
    processes too; gVisor's are not, and are covered by the container being gone)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


#: Starts three detached ``sleep``s carrying ``MARKER`` (double fork + setsid, nohup in a shell,
#: a new session), then counts, from inside the sandbox, those alive.
DETACH = textwrap.dedent(
    """
    import os, subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)", MARKER]
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, sleeper)
        os._exit(0)
    os.wait()
    subprocess.Popen(
        "nohup " + " ".join(sleeper[:2]) + " 'import time; time.sleep(300)' " + MARKER + " &",
        shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ).wait()
    subprocess.Popen(sleeper, start_new_session=True)
    def alive():
        n = 0
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                n += MARKER.encode() in open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                pass
        return n
    deadline = time.monotonic() + 10
    while alive() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    print("detached alive:", alive())
    """
)


def test_detached_processes_do_not_outlive_the_rlm(make_rlm, lm_server, sandbox):
    marker = f"rlm-red-team-{uuid.uuid4().hex}"
    lm_server.set_script(attacker(f"MARKER = {marker!r}\n{DETACH}"))
    rlm = make_rlm(**sandbox)
    result = rlm.completion("data")
    assert cell_results(result)[0]["stdout"].strip() == "detached alive: 3"
    rlm.close()
    deadline = time.monotonic() + 15
    while host_processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert host_processes_with(marker) == []
    if sandbox["environment"] == "docker":
        assert our_containers(os.getpid()) == []


SECRET_SCAN = textwrap.dedent(
    """
    import os
    found = set()
    for value in os.environ.values():
        found.update(s for s in SECRETS if s in value)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("environ", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{part}", "rb").read()
            except OSError:
                continue
            found.update(s for s in SECRETS if s.encode() in data)
    print("found:", sorted(found), "scanned:", len(os.listdir("/proc")))
    """
)


def test_host_secrets_are_not_visible_in_the_sandbox(make_rlm, lm_server, sandbox, monkeypatch):
    """The provider key given to the RLM and secrets in the host's environment reach neither the
    sandbox's environment nor any environ/cmdline it can read. (local: the host's *start-up*
    environment stays readable in /proc by the same user; see docs/security.md.)"""
    env_secret, lm_key = f"env-{uuid.uuid4().hex}", f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", env_secret)
    monkeypatch.setenv("MY_DB_PASSWORD", env_secret)
    lm_server.set_script(attacker(f"SECRETS = {[env_secret, lm_key]!r}\n{SECRET_SCAN}"))
    result = make_rlm(backend_kwargs={"api_key": lm_key}, **sandbox).completion("data")
    stdout = cell_results(result)[0]["stdout"]
    assert stdout.startswith("found: [] scanned:"), stdout
    assert all(r.headers.get("authorization") == f"Bearer {lm_key}" for r in lm_server.requests)


def test_host_files_are_out_of_reach(make_rlm, lm_server, sandbox, tmp_path):
    if sandbox["environment"] == "local":
        pytest.skip("local runs cells as the host's user: not a file boundary (docs/security.md)")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("host secret")
    code = textwrap.dedent(
        f"""
        import os
        try:
            print(open({str(secret_file)!r}).read())
        except OSError as error:
            print("refused:", type(error).__name__)
        print("home:", os.path.exists({str(Path.home())!r} + "/.bashrc"))
        """
    )
    lm_server.set_script(attacker(code))
    stdout = cell_results(make_rlm(**sandbox).completion("data"))[0]["stdout"]
    assert "refused: FileNotFoundError" in stdout and "host secret" not in stdout
    assert "home: False" in stdout


def test_a_huge_answer_is_refused_and_the_run_goes_on(make_rlm, lm_server, sandbox):
    """A 17 MiB ``answer["content"]`` used to be sent whole (a 500 MB one ended the runner): now
    it is refused with a message naming the limit, and the next cell answers."""
    lm_server.set_script(
        attacker(
            'answer["content"] = "x" * (17 * 1024 * 1024)\nanswer["ready"] = True',
            "print('still here')",
            final="short answer",
        )
    )
    result = make_rlm(**sandbox).completion("data")
    first, second = cell_results(result)[:2]
    assert result.response == "short answer"
    assert "AnswerTooLarge" in first["stderr"] + str(first.get("error", ""))
    assert "16 MiB" in first["stderr"] + str(first.get("error", ""))
    assert second["stdout"] == "still here\n"


def test_unencodable_text_from_the_sandbox_does_not_end_the_runner(make_rlm, lm_server, sandbox):
    """Lone surrogates cannot cross gRPC as text: printed or answered, they are shown escaped."""
    lm_server.set_script(
        attacker("print('a\\ud800b')", 'answer["content"] = "c\\udfffd"\nanswer["ready"] = True')
    )
    result = make_rlm(**sandbox).completion("data")
    assert cell_results(result)[0]["stdout"] == "a\\ud800b\n"
    assert result.response == "c\\udfffd"


def test_a_fork_bomb_is_contained(make_rlm, lm_server, sandbox):
    if sandbox["environment"] == "local":
        pytest.skip("local has no process-count limit (docs/security.md): use docker")
    bomb = textwrap.dedent(
        """
        import os, time
        children = 0
        try:
            for _ in range(5000):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as error:
            print("fork refused after", children, type(error).__name__)
        """
    )
    lm_server.set_script(attacker(bomb, "print('alive')"))
    kwargs = {**sandbox["environment_kwargs"], "cell_timeout": 20}
    result = make_rlm(environment="docker", environment_kwargs=kwargs).completion("data")
    first, second = cell_results(result)[:2]
    # Contained either way (see test_docker_hostile.py): the fork fails in the cell, or the pids
    # cap starves the runner, which is replaced with a note to the model.
    if "fork refused after" in first["stdout"]:
        assert int(first["stdout"].split("after")[1].split()[0]) < 256  # pids_limit
    else:
        assert "SandboxDied" in first["stderr"] or "restarted" in first["stderr"], first
    assert second["stdout"] == "alive\n"


def test_terminal_escapes_never_reach_the_trace(make_rlm, lm_server, sandbox, capfd):
    lm_server.set_script(
        attacker(
            "print('\\x1b]52;c;SGVsbG8=\\x07 \\x1b]0;title\\x07 \\x1b[2J')\n"
            "import sys; sys.stderr.write('\\x9b31m\\u202e\\n')"
        )
    )
    make_rlm(verbose=True, **sandbox).completion("data")
    captured = capfd.readouterr()
    trace = captured.err + captured.out
    assert "52;c;SGVsbG8=" in trace  # the text is shown...
    for raw in ("\x1b]", "\x07", "\x1b[2J", "\x9b", "\u202e"):  # ...its controls are not
        assert raw not in trace
