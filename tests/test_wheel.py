"""A built wheel (not only the editable install): it imports and runs a completion, ships no
provider stand-in, and its ``rlm.testing`` imports no provider SDK."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIP = (sys.executable, "-m", "pip")
PROVIDER_SDKS = ("modal", "e2b", "daytona", "prime_sandboxes", "docker")
#: imports that serve a provider's side of its wire protocol (server bases, private protos):
#: only the stand-ins (standins/, a distribution of their own) have them
SERVER_SIDE = re.compile(
    r"^\s*(from|import)\s+(grpclib\.server|modal_proto\.\w+_grpc|modal_proto import \w+_grpc"
    r"|e2b\.envd\.process\.process_connect|prime_sandboxes\._proto)\b",
    re.M,
)

pytestmark = pytest.mark.slow


def build_wheel(source: pathlib.Path, dist: pathlib.Path) -> pathlib.Path:
    """``pip wheel`` of ``source`` (no dependencies, this environment's build tools). setuptools
    copies into ``build/lib`` and never removes what is no longer in the tree: a module moved out
    of the package would still ship from a checkout built before, so the copy starts empty."""
    for stale in [source / "build" / "lib", *source.glob("build/bdist.*")]:
        shutil.rmtree(stale, ignore_errors=True)
    subprocess.run(
        [*PIP, "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w", str(dist)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    yield build_wheel(ROOT, tmp_path_factory.mktemp("dist"))


def test_built_wheel_runs_a_completion(wheel, tmp_path, lm_server):
    lm_server.set_script(
        ['```repl\nanswer["content"] = context.upper()\nanswer["ready"] = True\n```']
    )
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


def test_the_wheel_ships_no_standin_code(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        sources = {n: archive.read(n).decode() for n in names if n.endswith(".py")}
    assert "rlm/testing/lm_server.py" in names and "rlm/testing/contract/__init__.py" in names
    assert not [n for n in names if "standin" in n.lower()], names
    internals = {n: SERVER_SIDE.findall(text) for n, text in sources.items()}
    assert not {n: found for n, found in internals.items() if found}
    standin = (ROOT / "standins" / "rlm_standins" / "modal.py").read_text()
    assert SERVER_SIDE.search(standin), "the pattern must catch what the stand-ins import"


def test_the_standins_are_a_distribution_of_their_own(tmp_path):
    standins = build_wheel(ROOT / "standins", tmp_path)
    assert standins.name.startswith("rlm_standins-")
    with zipfile.ZipFile(standins) as archive:
        names = set(archive.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = re.findall(r"^Requires-Dist: (\S+)", archive.read(metadata).decode(), re.M)
    for provider in ("modal", "e2b", "daytona", "prime"):
        assert f"rlm_standins/{provider}.py" in names
    assert "rlm" in requires
    assert not [n for n in names if n.startswith("rlm/")], "it must not ship rlm's own modules"


def test_rlm_testing_in_a_fresh_venv_imports_no_provider_sdk(wheel, tmp_path):
    """``pip install`` of the wheel into a fresh venv whose only other packages are this
    environment's dependencies (provider SDKs included, so an import would show)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = pathlib.Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    subprocess.run(
        [*PIP, "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    # Dependencies from here, as plain folders: their .pth files (this checkout's editable rlm
    # and rlm-standins among them) are not run, so only the wheel's rlm can be imported.
    ours = [p for p in sys.path if p.endswith("site-packages")]
    (site / "dependencies.pth").write_text("\n".join(ours) + "\n")
    code = (
        "import importlib.util, json, sys\n"
        "import rlm.testing\n"
        f"sdks = {PROVIDER_SDKS!r}\n"
        "print(json.dumps({'rlm': rlm.__file__, "
        "'imported': [m for m in sdks if m in sys.modules], "
        "'importable': [m for m in sdks if importlib.util.find_spec(m)], "
        "'standins': importlib.util.find_spec('rlm_standins') is not None}))"
    )
    out = subprocess.run(
        [str(python), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["rlm"].startswith(str(site)), report
    assert report["imported"] == [], report
    assert report["importable"], "no provider SDK is installed here: the check would prove nothing"
    assert report["standins"] is False, report
