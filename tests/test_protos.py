"""The checked-in generated modules match the .proto."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is a dev dependency")
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.generate(tmp_path):
        checked_in = ROOT / "protos" / path.name
        assert checked_in.read_text() == path.read_text(), (
            f"{checked_in.name} is stale: run `python protos/generate.py`"
        )
