"""Package hygiene: the public surface, lazy imports, and a built wheel that works."""

from __future__ import annotations

import subprocess
import sys

import rlm


def test_all_is_complete():
    public = {
        name
        for name, value in vars(rlm).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith("rlm")
        and isinstance(value, type)
    }
    assert public <= set(rlm.__all__)
    for name in rlm.__all__:
        assert hasattr(rlm, name)


def test_import_pulls_in_no_provider_sdk():
    code = (
        "import sys, rlm; heavy = [m for m in ('openai', 'anthropic', 'google.genai', 'docker', "
        "'modal', 'e2b', 'daytona', 'prime_sandboxes') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runner_bundle_needs_only_grpc_and_protobuf(tmp_path):
    """The zipapp runs in an isolated interpreter with nothing of rlm installed."""
    from rlm.environments.runner.bundle import runner_bundle

    bundle = tmp_path / "runner.pyz"
    bundle.write_bytes(runner_bundle())
    code = (
        f"import sys; sys.path.insert(0, {str(bundle)!r}); "
        "import rlm.environments.runner.runner as r; "
        "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in "
        "('openai', 'rich', 'anthropic', 'httpx')))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_adapter_docs_name_the_runner_requirements_the_code_installs():
    """The cloud adapters' docstrings tell users what to put in their image; they must quote the
    requirements the code checks and installs (docker_image.REQUIREMENTS), not older ones."""
    import importlib
    import re

    from rlm.environments.docker_image import REQUIREMENTS

    names = {re.split(r"[<>=]", requirement)[0] for requirement in REQUIREMENTS}
    for adapter in ("modal", "e2b", "daytona", "prime"):
        doc = importlib.import_module(f"rlm.environments.{adapter}").__doc__ or ""
        quoted = set(re.findall(r"(?:grpcio|protobuf)[<>=!~][^'\"`\s,)]*", doc))
        assert quoted, f"rlm.environments.{adapter} does not say what the runner needs"
        assert {re.split(r"[<>=!~]", q)[0] for q in quoted} == names, adapter
        assert quoted <= set(REQUIREMENTS), f"{adapter} quotes {quoted - set(REQUIREMENTS)}"
