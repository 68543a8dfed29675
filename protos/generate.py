"""Regenerates the checked-in protobuf / gRPC modules from ``rlm_sandbox.proto``.

Run ``python protos/generate.py`` after editing the .proto; ``tests/test_protos.py`` fails when the
checked-in modules are stale.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO = "rlm_sandbox.proto"
OUTPUTS = ("rlm_sandbox_pb2.py", "rlm_sandbox_pb2.pyi", "rlm_sandbox_pb2_grpc.py")


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Compiles the proto into ``out_dir`` with imports rooted at ``rlm.protos``."""
    from grpc_tools import protoc  # dev dependency: pip install 'rlm[dev]'

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = pathlib.Path(tmp)
        args = [
            "protoc",
            f"-Irlm/protos={HERE}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            f"rlm/protos/{PROTO}",
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {PROTO}")
        written = []
        for name in OUTPUTS:
            target = out_dir / name
            shutil.copyfile(tmp_path / "rlm" / "protos" / name, target)
            written.append(target)
        return written


if __name__ == "__main__":
    for path in generate(HERE):
        print(f"wrote {path}", file=sys.stderr)
