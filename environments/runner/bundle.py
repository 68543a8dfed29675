"""Packs the runner and the generated contract into one zipapp (``runner.pyz``).

Every environment ships this one file into its sandbox and runs ``python runner.pyz``; the
sandbox needs nothing of rlm installed, only Python >= 3.11 with grpcio and protobuf.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
import pathlib
import tempfile
import zipfile
from functools import cache

from rlm.protos import rlm_sandbox_pb2, rlm_sandbox_pb2_grpc

from . import bootstrap as bootstrap_module
from . import forkserver as forkserver_module
from . import relay as relay_module
from . import runner as runner_module
from . import sessionproxy as sessionproxy_module

_MAIN = """\
import sys

if sys.argv[1:2] == ["--fork-server"]:
    from rlm.environments.runner.forkserver import serve

    raise SystemExit(serve(int(sys.argv[2])))
if sys.argv[1:2] == ["--fork-server-stdio"]:
    from rlm.environments.runner.forkserver import serve_stdio

    raise SystemExit(serve_stdio(sys.argv[2] if len(sys.argv) > 2 else None))
if sys.argv[1:2] == ["--relay-stdio"]:
    from rlm.environments.runner.relay import serve as serve_relay

    raise SystemExit(serve_relay(sys.argv[2]))
from rlm.environments.runner.runner import main

raise SystemExit(main())
"""
#: How a runner started from the sealed bundle sees its own zipapp (its fd, inherited).
SEALED_BUNDLE_PREFIX = "/proc/self/fd/"
#: In the command line of every local runner and fork server started from the sealed bundle.
RUNNER_MARK = "rlm_runner"
_EMPTY_PACKAGES = ("rlm/__init__.py", "rlm/protos/__init__.py", "rlm/environments/__init__.py")


@cache
def runner_bundle() -> bytes:
    """The zipapp's bytes (built once per process)."""
    members = {
        "__main__.py": _MAIN,
        "rlm/environments/runner/__init__.py": "",
        "rlm/environments/runner/runner.py": pathlib.Path(runner_module.__file__).read_text(),
        "rlm/environments/runner/bootstrap.py": pathlib.Path(bootstrap_module.__file__).read_text(),
        "rlm/environments/runner/relay.py": pathlib.Path(relay_module.__file__).read_text(),
        "rlm/environments/runner/sessionproxy.py": pathlib.Path(
            sessionproxy_module.__file__
        ).read_text(),
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


def runner_bundle_path() -> pathlib.Path:
    """The zipapp as a content-addressed file in the temp directory, for sandboxes that mount it
    (docker). Checked on every call and rewritten when it differs: a local cell runs as the same
    user and could have changed it. Local runners do not use it (see :func:`runner_executable`).
    """
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


@cache
def sealed_runner_bundle() -> int | None:
    """A memfd holding the zipapp, sealed against writes, truncation and growth (Linux), or None
    where the platform has no sealed memfds. Nothing can change what it holds: not a cell of
    another local session, which runs as the same user and could rewrite any file of ours."""
    if not hasattr(os, "memfd_create") or not hasattr(fcntl, "F_ADD_SEALS"):
        return None
    data = runner_bundle()
    try:
        fd = os.memfd_create("rlm-runner.pyz", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError:
        return None
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def runner_executable() -> tuple[list[str], tuple[int, ...]]:
    """The interpreter arguments that run a local runner or fork server (the script and what
    names it), and the descriptors to pass it: the sealed bundle as ``/proc/self/fd/N`` where
    there is one, else the file in the temp directory. ``-X rlm_runner`` (an option CPython
    keeps and ignores) marks the process as ours in its command line, as the file name did."""
    fd = sealed_runner_bundle()
    if fd is None:
        return [str(runner_bundle_path())], ()
    return ["-X", RUNNER_MARK, f"{SEALED_BUNDLE_PREFIX}{fd}"], (fd,)
