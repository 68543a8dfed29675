"""A built wheel (not only the editable install) imports and runs a completion."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_built_wheel_runs_a_completion(tmp_path, lm_server):
    lm_server.set_script(
        ['```repl\nanswer["content"] = context.upper()\nanswer["ready"] = True\n```']
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(ROOT),
            "-w",
            str(tmp_path / "dist"),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("rlm-*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        assert "rlm/py.typed" in archive.namelist()  # type checkers read our annotations
        archive.extractall(target)
    code = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(target)!r})
        import rlm
        assert rlm.__file__.startswith({str(target)!r}), rlm.__file__
        from rlm import RLM
        with RLM(backend_kwargs={{"model_name": "m", "base_url": {lm_server.base_url!r}, "api_key": "k"}}) as r:
            print(r.completion("from the wheel").response)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "FROM THE WHEEL"
