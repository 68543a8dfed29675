"""The package type-checks: mypy over the installed layout (``tests/typecheck.py``), with the
public modules held to the strict definition flags of ``[tool.mypy]`` in pyproject.toml."""

from __future__ import annotations

import importlib.util

import pytest
from typecheck import run_mypy


@pytest.mark.slow
def test_mypy_finds_no_errors() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install -e '.[dev]'")
    done = run_mypy()
    assert done.returncode == 0, done.stdout[-6000:]
    assert "Success: no issues found" in done.stdout
