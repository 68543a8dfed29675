"""Packs the runner and the generated contract into one zipapp (``runner.pyz``).

Every environment ships this one file into its sandbox and runs ``python runner.pyz``; the
sandbox needs nothing of rlm installed, only Python >= 3.11 with grpcio and protobuf.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
import tempfile
import zipfile
from functools import cache

from rlm.protos import rlm_sandbox_pb2, rlm_sandbox_pb2_grpc

from . import forkserver as forkserver_module
from . import relay as relay_module
from . import runner as runner_module

_MAIN = """\
import sys

if sys.argv[1:2] == ["--fork-server"]:
    from rlm.environments.runner.forkserver import serve

    raise SystemExit(serve(int(sys.argv[2])))
if sys.argv[1:2] == ["--fork-server-stdio"]:
    from rlm.environments.runner.forkserver import serve_stdio

    raise SystemExit(serve_stdio())
from rlm.environments.runner.runner import main

raise SystemExit(main())
"""
_EMPTY_PACKAGES = ("rlm/__init__.py", "rlm/protos/__init__.py", "rlm/environments/__init__.py")


@cache
def runner_bundle() -> bytes:
    """The zipapp's bytes (built once per process)."""
    members = {
        "__main__.py": _MAIN,
        "rlm/environments/runner/__init__.py": "",
        "rlm/environments/runner/runner.py": pathlib.Path(runner_module.__file__).read_text(),
        "rlm/environments/runner/relay.py": pathlib.Path(relay_module.__file__).read_text(),
        "rlm/environments/runner/forkserver.py": pathlib.Path(
            forkserver_module.__file__
        ).read_text(),
        "rlm/protos/rlm_sandbox_pb2.py": pathlib.Path(rlm_sandbox_pb2.__file__).read_text(),
        "rlm/protos/rlm_sandbox_pb2_grpc.py": pathlib.Path(
            rlm_sandbox_pb2_grpc.__file__
        ).read_text(),
    }
    members.update(dict.fromkeys(_EMPTY_PACKAGES, ""))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, members[name])
    return buffer.getvalue()


@cache
def runner_bundle_path() -> pathlib.Path:
    """The zipapp written once to a content-addressed file in the temp directory."""
    data = runner_bundle()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = pathlib.Path(tempfile.gettempdir()) / f"rlm-runner-{digest}.pyz"
    if not path.exists() or path.read_bytes() != data:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="rlm-runner-", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    return path
