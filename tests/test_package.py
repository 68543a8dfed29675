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
