"""The layer rules of docs/architecture.md, checked on the source (every import, including those
inside functions): the runner imports only the protos and what any stock Python has; the broker
and the environment adapters import no loop, CLI or presentation code; the protos import nothing
of ours."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Our modules that make up the loop and what sits on top of it: no lower layer may import them.
LOOP_AND_ABOVE = (
    "rlm.run",
    "rlm.core",
    "rlm.cli",
    "rlm.serve",
    "rlm.viewer",
    "rlm.progress",
    "rlm.logger",
    "rlm.demo",
    "rlm.sandbox",
    "rlm.integrations",
    "rlm.clients",
)

#: Modules of the environments folder that implement the reference package's REPL classes on
#: top of the public API (users import them as ``rlm.environments.LocalREPL`` and friends): they
#: sit above the loop by design, so the adapter rule does not apply to them.
REFERENCE_SHIMS = {"compat.py", "base_env.py", "constants.py"}

#: What the runner may import besides the standard library: it runs inside any stock Python
#: with grpcio + protobuf, and IPython when the ipython shell is chosen.
RUNNER_THIRD_PARTY = {"grpc", "google", "IPython", "traitlets"}


def imports_of(path: Path, source: str | None = None) -> list[str]:
    """Every module ``path`` (or ``source``, as if it were that file) imports, by installed
    name: relative imports resolved, ``broker/x.py`` being ``rlm.broker.x``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    package = parts if parts[:1] == ["rlm"] else ["rlm", *parts]
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.append(module)
            # `from rlm import run` imports the module rlm.run: count each name as one too.
            names.extend(f"{module}.{alias.name}" for alias in node.names)
    return names


def sources(folder: str, exclude: set[str] = frozenset()) -> list[Path]:
    found = sorted(p for p in (ROOT / folder).rglob("*.py") if p.name not in exclude)
    assert found, f"no sources under {folder}"
    return found


def is_under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize(
    "path",
    [p for p in sources("environments/runner") if p.name != "bundle.py"],
    ids=lambda p: p.name,
)
def test_the_runner_imports_only_the_protos_and_a_stock_python(path: Path):
    bad = []
    for name in imports_of(path):
        top = name.split(".")[0]
        if top == "rlm":
            if not is_under(name, ("rlm.protos", "rlm.environments.runner")):
                bad.append(name)
        elif top not in sys.stdlib_module_names and top not in RUNNER_THIRD_PARTY:
            bad.append(name)
    assert not bad, f"{path.name} imports {bad}: the runner must stay self-contained"


@pytest.mark.parametrize(
    "path",
    sources("broker") + sources("environments", exclude=REFERENCE_SHIMS),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_the_broker_and_the_adapters_import_no_loop_code(path: Path):
    bad = [name for name in imports_of(path) if is_under(name, LOOP_AND_ABOVE)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: see docs/architecture.md"


@pytest.mark.parametrize("path", sources("protos"), ids=lambda p: p.name)
def test_the_protos_import_nothing_of_ours_but_themselves(path: Path):
    ours = [n for n in imports_of(path) if n.split(".")[0] in ("rlm", "broker", "environments")]
    assert all(is_under(n, ("rlm.protos",)) for n in ours), ours


def test_the_checker_sees_lazy_and_relative_imports():
    """The checks above can fail: imports inside functions and relative ones are found."""
    probe = "def f():\n    from rlm.run import RLMRun\n    from . import router\n    from .. import cli\n"
    names = imports_of(ROOT / "broker" / "probe.py", probe)
    assert {"rlm.run", "rlm.broker.router", "rlm.cli"} <= set(names)
    assert {n for n in names if is_under(n, LOOP_AND_ABOVE)} == {
        "rlm.run",
        "rlm.run.RLMRun",
        "rlm.cli",
    }


#: The package's one use of the stand-ins (the ``rlm-standins`` distribution in ``standins/``):
#: ``rlm providers check`` imports them lazily and says how to install them when they are missing.
STANDIN_USERS = {"rlm/providers_check.py"}
PROVIDER_SDKS = ("modal", "modal_proto", "grpclib", "e2b", "daytona", "prime_sandboxes", "docker")


def test_the_package_ships_no_standin_and_reaches_for_them_only_in_the_providers_check():
    users = {
        str(path.relative_to(ROOT))
        for folder in ("rlm", "broker", "environments", "protos")
        for path in sources(folder)
        if any(
            is_under(name, ("rlm_standins", "rlm.testing.standins")) for name in imports_of(path)
        )
    }
    assert users == STANDIN_USERS
    assert not (ROOT / "rlm" / "testing" / "standins").exists()


@pytest.mark.parametrize("path", sources("rlm/testing"), ids=lambda p: p.name)
def test_the_test_helpers_import_no_provider_sdk(path: Path):
    bad = [name for name in imports_of(path) if is_under(name, PROVIDER_SDKS)]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: rlm.testing must not need them"
