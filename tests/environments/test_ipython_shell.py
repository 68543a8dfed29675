"""``shell="ipython"``: the runner executes every cell through a real IPython shell (magics,
``!`` shell escapes, IPython's display of the last expression) with the runner's namespace, capture,
error reporting and interrupts unchanged. Everything runs through the real local runner."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RecordingHandler, docker_available, start_environment

from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments import environment_class
from rlm.environments.base import SandboxEnvironment, ToolSpec
from rlm.environments.local import IPythonEnvironment, LocalEnvironment
from rlm.environments.runner.bundle import runner_bundle_path
from rlm.errors import ConfigurationError, SandboxStartError
from rlm.testing.leaks import fork_server_pids

pytest.importorskip("IPython", reason="the ipython shell needs IPython: pip install 'rlm[ipython]'")

#: What the runner says when the sandbox's Python has no IPython.
MISSING_HINT = "install the `ipython` package in the sandbox image"


def run(env: SandboxEnvironment, code: str, timeout: float | None = None) -> Any:
    return run_sync(env.execute(code, timeout=timeout))


@pytest.fixture
def make_ipython(broker: BrokerServer, handler: RecordingHandler) -> Iterator[Any]:
    """Starts local environments whose runner uses the IPython shell; closes them afterwards."""
    made: list[SandboxEnvironment] = []

    def factory(**kwargs: Any) -> SandboxEnvironment:
        env = start_environment("local", broker, handler, shell="ipython", **kwargs)
        made.append(env)
        return env

    yield factory
    for env in made:
        run_sync(env.aclose())


def test_last_expression_is_displayed_with_ipythons_output_cache(make_ipython):
    env = make_ipython()
    assert run(env, "1 + 1").stdout == "Out[1]: 2\n"
    assert run(env, "x = 20").stdout == ""
    assert run(env, "x + 1;").stdout == "", "a trailing semicolon hides the value, as in IPython"
    assert run(env, "_ * 2").stdout == "Out[4]: 4\n", "_ is the last displayed value"
    shown = run(env, "from IPython.display import display\ndisplay('shown'); print('printed')")
    assert shown.stdout == "'shown'\nprinted\n", "display() formats as IPython does"


def test_line_and_cell_magics(make_ipython):
    env = make_ipython()
    run_sync(env.load_context("some text"))
    assert run(env, "x = 1\ny = 'two'").ok
    who = run(env, "%who")
    assert who.ok, who.error
    # The runner's helpers and IPython's own names are hidden, as the runner's variable list does.
    assert sorted(who.stdout.split()) == ["answer", "context", "x", "y"]
    timed = run(env, "%timeit -n 3 -r 2 sum(range(100))")
    assert timed.ok, timed.error
    assert re.search(r"per loop \(mean .+ of 2 runs, 3 loops each\)", timed.stdout), timed.stdout
    captured = run(env, "%%capture cap\nprint('hidden')")
    assert captured.ok and captured.stdout == ""
    assert run(env, "cap.stdout").stdout == "Out[5]: 'hidden\\n'\n"


def test_shell_escapes_run_in_the_work_dir_and_expand_variables(make_ipython):
    env = make_ipython()
    result = run(env, "!echo hi")
    assert result.ok, result.error
    assert result.stdout.splitlines() == ["hi"]
    assert run(env, "word = 'expanded'\n!echo $word").stdout.splitlines() == ["expanded"]
    run(env, "open('made-here.txt', 'w').close()")
    listing = run(env, "files = !ls\nprint('made-here.txt' in files, type(files).__name__)")
    assert listing.stdout == "True SList\n", listing.error


def test_errors_are_reported_like_the_plain_shell_and_the_session_goes_on(make_ipython):
    env = make_ipython()
    result = run(env, "def f():\n    return 1 / 0\nprint('before')\nf()")
    assert result.stdout == "before\n", "the traceback is the error, not printed output"
    assert result.stderr == ""
    assert result.error.startswith("Traceback (most recent call last):")
    assert result.error.endswith("ZeroDivisionError: division by zero")
    assert (
        'File "<cell 1>", line 4' in result.error
        and 'File "<cell 1>", line 2, in f' in result.error
    )
    assert "runner.py" not in result.error and "interactiveshell.py" not in result.error
    syntax = run(env, "def broken(:")
    assert "SyntaxError" in syntax.error and "<cell 2>" in syntax.error
    assert (
        run(env, "%nosuchmagic").error
        == "UsageError: Line magic function `%nosuchmagic` not found."
    )
    assert run(env, "raise SystemExit(3)").error.startswith("SystemExit(3) ignored")
    assert "EOFError" in run(env, "input()").error
    # A magic that shows an error without raising it: the traceback goes to the cell's stderr.
    timed = run(env, "%time 1 / 0")
    assert "ZeroDivisionError" in timed.stderr + timed.error
    assert "\x1b[" not in timed.stderr, "no terminal colours in captured output"
    assert run(env, "print('still here')").stdout == "still here\n"


def test_state_helpers_and_tools_persist_across_cells(make_ipython, handler):
    env = make_ipython()
    assert run(env, "x = 41\nimport math").ok
    result = run(env, "x += 1\nprint(x, math.floor(2.5))")
    assert result.stdout == "42 2\n"
    assert {"x", "math"} <= set(result.variables)
    hidden = {"In", "Out", "get_ipython", "exit", "quit", "open", "llm_query", "SHOW_VARS"}
    assert not hidden & set(result.variables)
    handler.tools["add"] = lambda a, b: a + b
    run_sync(env.set_variables({"threshold": 3}, [ToolSpec("add", "adds")]))
    assert run(env, "add(threshold, b=x)").stdout == "Out[3]: 45\n"
    shown = run(env, "_ = SHOW_VARS()")
    assert "x: int" in shown.stdout and "In:" not in shown.stdout
    done = run(env, 'answer["content"] = str(x)\nanswer["ready"] = True')
    assert done.answer_ready and done.answer_content == "42"
    assert run(env, "print(llm_query('c'), rlm_query('d'))").stdout == "echo:c child:d\n"
    assert ("complete", "c") in handler.calls and ("subcall", "d") in handler.calls


def test_reset_magic_keeps_the_helpers_and_top_level_await_works(make_ipython, handler):
    env = make_ipython()
    assert run(env, "doomed = 1").ok
    reset = run(env, "%reset -f")
    assert reset.ok, reset.error
    after = run(env, "print('doomed' in globals(), llm_query('still'))\n%who")
    assert after.stdout == "False echo:still\nInteractive namespace is empty.\n", after.error
    assert after.variables == []
    awaited = run(env, "import asyncio\nawait asyncio.sleep(0.01)\n'awaited'")
    assert awaited.stdout.endswith("'awaited'\n"), awaited.error


def test_a_timeout_interrupts_an_ipython_cell_and_keeps_the_state(make_ipython):
    env = make_ipython()
    run(env, "kept = 'yes'")
    for code in ("import time\ntime.sleep(30)", "while True:\n    pass"):
        result = run(env, code, timeout=1.0)
        assert result.interrupted and "TimeoutError" in result.error
        assert not result.restarted
    assert run(env, "print(kept)").stdout == "yes\n"


def test_the_ipython_environment_defaults_to_the_ipython_shell(broker, handler):
    env = IPythonEnvironment(broker=broker, handler=handler, label="test")
    assert env.name == "ipython" and env.shell == "ipython"
    run_sync(env.start())
    try:
        probe = (
            "import IPython\nfrom IPython.core.interactiveshell import InteractiveShell\n"
            "isinstance(get_ipython(), InteractiveShell), IPython.get_ipython() is get_ipython()"
        )
        assert run(env, probe).stdout == "Out[1]: (True, True)\n"
    finally:
        run_sync(env.aclose())
    assert LocalEnvironment(broker=broker, handler=handler).shell == "python"


def test_an_unknown_shell_is_refused(broker, handler):
    with pytest.raises(ConfigurationError, match="shell must be one of 'python', 'ipython'"):
        LocalEnvironment(broker=broker, handler=handler, shell="bash")


def test_without_ipython_the_runner_fails_at_start_saying_what_to_install(tmp_path):
    """The runner imports IPython only for the ipython shell, and says what is missing."""
    blocked = (
        "import sys\n"
        "sys.modules['IPython'] = None\n"  # as if IPython were not installed
        f"sys.path.insert(0, {str(runner_bundle_path())!r})\n"
        "from rlm.environments.runner import runner\n"
        "sys.exit(runner.main())\n"
    )
    bootstrap = {"address": f"unix:{tmp_path}/none.sock", "token": "t", "shell": "ipython"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", blocked],
        input=json.dumps(bootstrap) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert MISSING_HINT in done.stderr and "pip install 'rlm[ipython]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_local_runner_without_ipython_fails_to_start_with_the_hint(broker, handler, tmp_path):
    """Through the environment: the start fails and the error carries the runner's message."""
    helper = tmp_path / "without_ipython.py"
    helper.write_text(
        "import runpy, sys\n"
        "sys.modules['IPython'] = None\n"  # as if IPython were not installed
        "bundle = sys.argv[-1]\n"
        "sys.argv = [bundle]\n"
        "runpy.run_path(bundle, run_name='__main__')\n"
    )
    python = tmp_path / "python-without-ipython"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I {helper} "$@"\n')
    python.chmod(0o755)
    env = LocalEnvironment(
        broker=broker, handler=handler, shell="ipython", python=str(python), fork_server=False
    )
    with pytest.raises(SandboxStartError) as caught:
        run_sync(env.start())
    assert MISSING_HINT in str(caught.value)


@pytest.mark.docker
def test_docker_image_without_ipython_fails_with_a_clear_message(broker, handler):
    reason = docker_available()
    if reason:
        pytest.skip(f"docker: {reason}")
    with pytest.raises(SandboxStartError) as caught:
        env = start_environment("docker", broker, handler, shell="ipython")
        run_sync(env.aclose())
    message = str(caught.value)
    assert "failed to start" in message and MISSING_HINT in message, message


#: IPython and what it imports: all pure Python, so the host's copies run in the image's Python.
IPYTHON_DISTRIBUTIONS = (
    "ipython", "asttokens", "backcall", "decorator", "executing", "jedi", "matplotlib-inline",
    "parso", "pexpect", "pickleshare", "prompt-toolkit", "ptyprocess", "pure-eval", "pygments",
    "stack-data", "traitlets", "wcwidth", "ipython-pygments-lexers",
)  # fmt: skip


def _ipython_for_the_image(image: str) -> dict[str, dict[str, str]]:
    """docker-py volume specs that install this host's IPython into ``image``'s Python: the
    packages in a world-readable directory and a ``.pth`` file in the image's site-packages."""
    import compileall
    import shutil
    import tempfile
    from importlib import metadata

    from rlm.environments.docker import docker_client

    site = docker_client().containers.run(
        image,
        ["python3", "-I", "-c", "import site; print(site.getsitepackages()[0])"],
        network_mode="none",
        remove=True,
    )
    root = pathlib.Path(tempfile.mkdtemp(prefix="rlm-test-ipython-"))
    packages = root / "packages"
    for name in IPYTHON_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for top in {file.parts[0] for file in dist.files or () if ".." not in file.parts}:
            source, target = pathlib.Path(dist.locate_file(top)), packages / top
            if source.is_dir():  # with its __pycache__, mtimes kept so the .pyc files stay valid
                shutil.copytree(source, target, dirs_exist_ok=True)
            elif source.exists():
                packages.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    # The mount is read-only: whatever the host has not compiled yet is compiled here.
    compileall.compile_dir(packages, quiet=1, workers=0)
    (root / "ipython.pth").write_text("/opt/ipython-packages\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {
        str(packages): {"bind": "/opt/ipython-packages", "mode": "ro"},
        str(root / "ipython.pth"): {
            "bind": f"{site.decode().strip()}/zz-rlm-test-ipython.pth",
            "mode": "ro",
        },
    }


@pytest.mark.docker
@pytest.mark.slow
def test_a_docker_sandbox_with_ipython_runs_ipython_cells(broker, handler):
    """The locked-down container (read-only root, no network, non-root) with IPython installed:
    magics, shell escapes, display and interrupts work there too."""
    reason = docker_available()
    if reason:
        pytest.skip(f"docker: {reason}")
    from rlm.environments.docker_image import DEFAULT_IMAGE

    volumes = _ipython_for_the_image(DEFAULT_IMAGE)
    try:
        env = start_environment("docker", broker, handler, shell="ipython", volumes=volumes)
        try:
            assert run(env, "import IPython\nIPython.__file__").stdout.startswith(
                "Out[1]: '/opt/ipython-packages/IPython/"
            )
            assert run(env, "x = 6\nx * 7").stdout == "Out[2]: 42\n"
            assert sorted(run(env, "%who").stdout.split()) == ["IPython", "answer", "x"]
            assert run(env, "!echo hi from $x").stdout.splitlines() == ["hi from 6"]
            assert run(env, "print(llm_query('q'))").stdout == "echo:q\n"
            failed = run(env, "1 / 0")
            assert failed.error.endswith("ZeroDivisionError: division by zero")
            assert "<cell 6>" in failed.error
            slow = run(env, "import time\ntime.sleep(30)", timeout=1.0)
            assert slow.interrupted and not slow.restarted
            assert run(env, "x").stdout == "Out[8]: 6\n"
        finally:
            run_sync(env.aclose())
    finally:
        import shutil

        shutil.rmtree(pathlib.Path(next(iter(volumes))).parent, ignore_errors=True)


def _root_script(first_cell: str):
    from rlm.testing.scripts import is_root_request, iteration_of

    def script(request):
        if not is_root_request(request):
            return "pong" if request.prompt == "ping" else "unexpected"
        return [
            f"```repl\n{first_cell}\n```",
            '```repl\nanswer["content"] = reply + " " + str(n)\nanswer["ready"] = True\n```',
        ][iteration_of(request)]

    return script


FIRST_CELL = "reply = llm_query('ping')\nn = len(context)\n%who\nreply"


def test_llm_query_in_an_ipython_cell_reaches_the_scripted_lm(lm_server, make_rlm):
    lm_server.set_script(_root_script(FIRST_CELL))
    rlm = make_rlm(environment="local", environment_kwargs={"shell": "ipython"})
    result = rlm.completion("0123456789")
    assert result.response == "pong 10"
    assert [r.prompt for r in lm_server.requests if r.prompt == "ping"] == ["ping"]
    second_root = [r for r in lm_server.requests if r.prompt != "ping"][1]
    output = second_root.messages[-1]["content"]  # what the model got back from its cell
    assert re.search(r"^answer\s+context\s+.*\bn\s+reply\s*$", output, re.M), output
    assert "\nOut[1]: 'pong'\n" in output, "the model sees IPython's display of the value"


def test_whole_completion_with_environment_ipython(lm_server, make_rlm):
    try:
        cls = environment_class("ipython")
    except ConfigurationError:
        pytest.skip("environment 'ipython' is not registered in rlm.environments.ENVIRONMENTS yet")
    assert cls is IPythonEnvironment
    lm_server.set_script(_root_script(FIRST_CELL))
    rlm = make_rlm(environment="ipython")
    result = rlm.completion("abc")
    assert result.response == "pong 3"
    assert "Out[1]: 'pong'" in json.dumps([r.messages for r in lm_server.requests])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork server needs os.fork")
def test_ipython_runners_share_a_fork_server_that_preloads_ipython(make_ipython, broker, handler):
    probe = "import os\nprint(os.getppid())"
    parents = {run(env, probe).stdout.strip() for env in (make_ipython(), make_ipython())}
    assert len(parents) == 1, "one fork server serves every ipython runner"
    server = int(parents.pop())
    assert server in fork_server_pids(os.getpid())
    with open(f"/proc/{server}/environ", "rb") as handle:
        assert b"RLM_RUNNER_PRELOAD=ipython" in handle.read().split(b"\0")
    plain = start_environment("local", broker, handler)
    try:
        assert int(run(plain, probe).stdout) != server, "plain runners keep their own server"
    finally:
        run_sync(plain.aclose())
