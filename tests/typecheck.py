"""Type-checks the package as users install it, with mypy.

The checkout keeps ``broker/``, ``environments/`` and ``protos/`` at the top level; installed, they
are ``rlm.broker``, ``rlm.environments`` and ``rlm.protos`` (``package-dir`` in pyproject.toml).
A type checker run on the checkout would not find ``rlm.broker`` at all, so this builds the
installed layout as a tree of symbolic links (``build/typecheck/rlm``, read from ``package-dir``)
and runs ``mypy -p rlm`` there with the settings of ``[tool.mypy]``, together with the provider
stand-ins (``standins/rlm_standins``, a distribution of their own). Errors name the checkout's
files. Run it as ``python tests/typecheck.py``; ``tests/test_types.py`` runs it in the suite.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
STANDINS = ROOT / "standins" / "rlm_standins"


def installed_layout(dest: Path = TREE) -> Path:
    """Links every source file to where the installed package has it; returns ``dest``."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    if dest.exists():
        shutil.rmtree(dest)
    for package in config["packages"]:
        folder = ROOT / config["package-dir"].get(package, package.replace(".", "/"))
        target = dest / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for source in folder.iterdir():
            if source.suffix in (".py", ".pyi") or source.name == "py.typed":
                (target / source.name).symlink_to(source)
    (dest / STANDINS.name).symlink_to(STANDINS)
    return dest


def run_mypy() -> subprocess.CompletedProcess[str]:
    """mypy over the installed layout; its report names the checkout's files."""
    tree = installed_layout()
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(ROOT / "build" / "mypy_cache"), "-p", "rlm", "-p", STANDINS.name],
        cwd=tree, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = result.stdout + result.stderr
    for link in [*tree.rglob("*.py*"), *(tree / STANDINS.name).rglob("*.py")]:
        report = report.replace(str(link.relative_to(tree)), str(link.resolve().relative_to(ROOT)))
    return subprocess.CompletedProcess(result.args, result.returncode, report, "")


if __name__ == "__main__":
    done = run_mypy()
    print(done.stdout, end="")
    raise SystemExit(done.returncode)
