"""docs/adapters.md works as written: its sketch of an adapter, in a package of its own, passes
the shipped contract suite through the doc's own test module, outside this repository's tests
(no conftest, no fixtures of ours)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

from rlm.testing.contract import EnvironmentContract

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "adapters.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_sketched_adapter_passes_the_shipped_contract_suite(tmp_path):
    adapter, test_module = re.findall(r"```python\n(.*?)```", DOC, re.S)
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pipe.py").write_text(adapter)
    (tmp_path / "test_pipe_sandbox.py").write_text(test_module)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_pipe_sandbox.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    contract_tests = [name for name in dir(EnvironmentContract) if name.startswith("test_")]
    assert passed >= len(contract_tests), summary
    assert not re.search(r"skipped|failed|error", summary), summary
