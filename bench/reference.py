"""The reference implementation (``rlms`` from PyPI) in a virtual environment of its own."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import venv

REFERENCE_SPEC = "rlms==0.1.3"
DEFAULT_VENV = pathlib.Path(__file__).resolve().parent / ".venv-reference"


def reference_python(path: pathlib.Path = DEFAULT_VENV) -> pathlib.Path:
    """The interpreter of a venv holding the reference package, created on first use.

    The venv has no access to this interpreter's site-packages, so ``import rlm`` there is the
    reference package, never ours.
    """
    python = path / "bin" / "python"
    marker = path / f".installed-{REFERENCE_SPEC}"
    if not marker.exists():
        print(f"bench: installing {REFERENCE_SPEC} into {path} ...", file=sys.stderr)
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        subprocess.run([str(python), "-m", "pip", "install", "-q", REFERENCE_SPEC], check=True)
        marker.write_text("ok\n")
    return python
