"""Builds the Docker sandbox image locally, with no image registry and no network in the container.

``rlm docker build-image`` and CI call :func:`build_image`. The image holds only what the runner
needs: a Python >= 3.11 at a fixed path (:data:`SANDBOX_PYTHON`), ``grpcio`` and ``protobuf``, a
non-root user ``sandbox`` (uid/gid 10001) and two empty mount points owned by it, ``/work`` (a
tmpfs at run time) and ``/rlm`` (the bind-mounted directory holding the broker's unix socket and the
runner zipapp). The runner itself is not baked in: each session ships ``runner.pyz`` via ``/rlm``.

Two ways to get a base image:

* ``base=None`` (default, fully offline apart from the Debian and PyPI mirrors, what CI uses): a
  minimal Debian ``bookworm`` root file system is bootstrapped on the host with ``mmdebstrap``
  (``--variant=essential``, ~20 s) or, when that is missing, ``debootstrap --variant=minbase``
  (~35 s), then ``docker import``-ed as :data:`BASE_IMAGE`. That image is reused while its recipe is
  unchanged, so later builds take seconds. Bootstrapping needs root (or ``mmdebstrap`` with user
  namespaces); the mirror is ``$RLM_DEBIAN_MIRROR`` or ``http://deb.debian.org/debian``.
* ``base="python:3.12-slim"`` (or any glibc/musl image with ``python3`` on its ``PATH``) for users
  who can pull from a registry: the image is used as-is (pulled first if absent).

How the runner's dependencies get in without internet inside the container: the base image is first
*probed* (``python3`` is run in it with ``--network none`` to read its version, machine and libc);
the host then runs ``pip download --only-binary=:all: --python-version X.Y --platform
manylinux_<glibc>_<machine> ...`` for ``grpcio``, ``protobuf`` (and their dependency
``typing-extensions``) plus a ``pip`` wheel, into a cache under ``~/.cache/rlm/wheels``. The wheels
and a small setup script go into the ``docker build`` context; the one ``RUN`` step executes pip
*from its own wheel* (``python3 pip-X.whl/pip install --no-index --find-links ...``), so the base
needs neither pip nor network, and pip itself is not left in the image. The same Dockerfile serves
both bases; only the ``FROM`` line differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from rlm.errors import ConfigurationError

__all__ = [
    "BASE_IMAGE",
    "DEFAULT_IMAGE",
    "REQUIREMENTS",
    "SANDBOX_PYTHON",
    "SANDBOX_UID",
    "SANDBOX_USER",
    "build_image",
    "image_exists",
]

DEFAULT_IMAGE = "rlm-sandbox:latest"
"""The tag the docker environment runs unless told otherwise."""

BASE_IMAGE = "rlm-sandbox-base:bookworm"
"""The bootstrapped Debian base (``base=None``), cached between builds."""

SANDBOX_PYTHON = "/usr/local/bin/python3"
"""The interpreter path every image built here provides (a symlink if the base has it elsewhere)."""

SANDBOX_UID = 10001
SANDBOX_USER = "sandbox"

REQUIREMENTS = ("grpcio>=1.85.1", "protobuf>=7.35")
"""What the runner imports; nothing else is installed."""

DEBIAN_SUITE = "bookworm"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# libstdc++6 is needed by grpcio's extension module; mmdebstrap's "essential" set lacks it.
_DEBIAN_PACKAGES = ("python3-minimal", "python3", "libstdc++6")
_DPKG_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
)
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LABEL = "org.rlm"

# Runs inside the image at build time, as root, with the base's own python3. Stdlib only.
_SETUP_SCRIPT = r'''
"""Installs the runner's wheels offline, adds the sandbox user and its mount points."""
import glob
import os
import shutil
import subprocess
import sys

UID, USER, PYTHON, *REQUIREMENTS = int(sys.argv[1]), *sys.argv[2:]
here = os.path.dirname(os.path.abspath(__file__))
wheels = os.path.join(here, "wheels")
(pip_wheel,) = glob.glob(os.path.join(wheels, "pip-*.whl"))

# pip runs from its own wheel (a zip on sys.path), so the base needs no pip and keeps none.
subprocess.run(
    [sys.executable, os.path.join(pip_wheel, "pip"), "install", "--no-index",
     "--find-links", wheels, "--no-cache-dir", "--disable-pip-version-check",
     "--root-user-action=ignore", "--break-system-packages", "--no-warn-script-location",
     *REQUIREMENTS],
    check=True,
)

if not os.path.exists(PYTHON):
    os.makedirs(os.path.dirname(PYTHON), exist_ok=True)
    os.symlink(os.path.realpath(sys.executable), PYTHON)

def add_entry(path, line):
    with open(path, encoding="utf-8") as handle:
        entries = [entry.split(":") for entry in handle.read().splitlines()]
    if any(len(entry) > 2 and entry[2] == str(UID) for entry in entries):
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")

shell = "/usr/sbin/nologin" if os.path.exists("/usr/sbin/nologin") else "/bin/false"
add_entry("/etc/group", f"{USER}:x:{UID}:")
add_entry("/etc/passwd", f"{USER}:x:{UID}:{UID}:rlm sandbox:/work:{shell}")
for mount_point in ("/work", "/rlm"):
    os.makedirs(mount_point, exist_ok=True)
    os.chown(mount_point, UID, UID)
    os.chmod(mount_point, 0o755)

subprocess.run(
    [PYTHON, "-c", "import grpc, google.protobuf; print('grpcio', grpc.__version__)"], check=True
)
shutil.rmtree(here)
'''

_DOCKERFILE = """\
FROM {base}
COPY rlm-build /tmp/rlm-build
RUN ["python3", "/tmp/rlm-build/setup_image.py", "{uid}", "{user}", "{python}", {requirements}]
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER {uid}:{uid}
WORKDIR /work
CMD ["sleep", "infinity"]
LABEL {labels}
"""

# Printed as JSON by the base image's python3; it decides which wheels to download.
_PROBE = (
    "import json, platform, sys; print(json.dumps({'version': list(sys.version_info[:3]),"
    " 'machine': platform.machine(), 'libc': list(platform.libc_ver())}))"
)


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(f"[rlm docker] {message}", file=sys.stderr, flush=True)


def _docker_client() -> Any:
    """A docker SDK client talking to a live engine, or a ConfigurationError saying what to do."""
    try:
        import docker
    except ImportError as exc:
        raise ConfigurationError(
            "Building the sandbox image needs the docker SDK: pip install 'rlm[docker]'"
        ) from exc
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise ConfigurationError(
            f"No Docker engine is reachable ({exc}). Start dockerd (on Debian CI: "
            "sudo .ci/install-docker.sh) or point DOCKER_HOST at a running engine."
        ) from exc
    return client


def image_exists(tag: str = DEFAULT_IMAGE) -> bool:
    """Whether ``tag`` is present in the local engine (no registry is asked)."""
    return _image_id(_docker_client(), tag) is not None


def build_image(
    tag: str = DEFAULT_IMAGE,
    *,
    base: str | None = None,
    python_version: str | None = None,
    quiet: bool = False,
) -> str:
    """Build the sandbox image as ``tag`` and return its id.

    ``base=None`` bootstraps Debian locally (no registry); otherwise ``base`` is any image with
    ``python3`` >= 3.11. ``python_version`` ("3.12") overrides the version probed from the base when
    choosing wheels. Progress goes to stderr unless ``quiet``.
    """
    client = _docker_client()
    started = time.perf_counter()
    base_ref = _debian_base(client, quiet) if base is None else _pulled(client, base, quiet)
    probe = _probe(client, base_ref)
    version = python_version or "{}.{}".format(*probe["version"][:2])
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < (3, 11):
        raise ConfigurationError(
            f"The base image {base_ref!r} has Python {version}; the runner needs >= 3.11. "
            "Pass base=None (Debian bookworm, 3.11) or e.g. base='python:3.12-slim'."
        )
    wheels = _download_wheels(f"{major}.{minor}", _platforms(probe), quiet)
    labels = {
        f"{_LABEL}.sandbox": "1",
        f"{_LABEL}.python": SANDBOX_PYTHON,
        f"{_LABEL}.python-version": f"{major}.{minor}",
        f"{_LABEL}.uid": str(SANDBOX_UID),
        f"{_LABEL}.base": base or BASE_IMAGE,
        f"{_LABEL}.requirements": " ".join(REQUIREMENTS),
    }
    with tempfile.TemporaryDirectory(prefix="rlm-image-") as context:
        build_dir = pathlib.Path(context, "rlm-build")
        shutil.copytree(wheels, build_dir / "wheels", ignore=shutil.ignore_patterns(".complete"))
        (build_dir / "setup_image.py").write_text(_SETUP_SCRIPT)
        pathlib.Path(context, "Dockerfile").write_text(
            _DOCKERFILE.format(
                base=base_ref,
                uid=SANDBOX_UID,
                user=SANDBOX_USER,
                python=SANDBOX_PYTHON,
                requirements=", ".join(json.dumps(req) for req in REQUIREMENTS),
                labels=" ".join(f"{key}={json.dumps(value)}" for key, value in labels.items()),
            )
        )
        _log(quiet, f"docker build -t {tag} (FROM {base_ref})")
        previous = _image_id(client, tag)
        image_id = _docker_build(client, context, tag, quiet)
    if previous not in (None, image_id):
        _remove_quietly(client, previous)
    _log(quiet, f"built {tag} ({image_id[:19]}) in {time.perf_counter() - started:.1f} s")
    return image_id


def _image_id(client: Any, tag: str) -> str | None:
    import docker

    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


def _remove_quietly(client: Any, image_id: str) -> None:
    """Drop the image a rebuild replaced, unless a container still uses it."""
    import docker

    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(image_id)


def _docker_build(client: Any, context: str, tag: str, quiet: bool) -> str:
    from docker.errors import BuildError

    log: list[str] = []
    for chunk in client.api.build(
        path=context, tag=tag, rm=True, forcerm=True, pull=False, decode=True
    ):
        if "error" in chunk:
            raise BuildError(chunk["error"], log)
        text = chunk.get("stream", "")
        if text:
            log.append(text)
            if not quiet:
                sys.stderr.write(text)
    return client.images.get(tag).id


def _pulled(client: Any, base: str, quiet: bool) -> str:
    import docker

    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        _log(quiet, f"pulling {base}")
        try:
            client.images.pull(base)
        except docker.errors.APIError as exc:
            raise ConfigurationError(
                f"Could not pull {base!r} ({exc}). Without registry access use base=None, which "
                "bootstraps Debian locally."
            ) from exc
    return base


def _probe(client: Any, image: str) -> dict[str, Any]:
    import docker

    try:
        output = client.containers.run(
            image,
            ["-c", _PROBE],
            entrypoint="python3",
            network_mode="none",
            user="0",
            remove=True,
        )
    except docker.errors.DockerException as exc:
        raise ConfigurationError(
            f"Could not run python3 in {image!r} ({exc}); the base image needs python3 on its PATH."
        ) from exc
    return json.loads(output.decode().strip().splitlines()[-1])


def _platforms(probe: dict[str, Any]) -> list[str]:
    machine = probe["machine"]
    libc, libc_version = probe["libc"]
    if libc == "glibc":
        # pip does not expand manylinux_2_N to older tags itself: list every one a wheel may carry.
        glibc_minor = int(libc_version.split(".")[1])
        tags = [f"manylinux_2_{minor}_{machine}" for minor in range(glibc_minor, 16, -1)]
        return [*tags, f"manylinux2014_{machine}"]
    return [f"musllinux_1_2_{machine}", f"musllinux_1_1_{machine}"]


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root, "rlm")


def _download_wheels(python_version: str, platforms: list[str], quiet: bool) -> pathlib.Path:
    """Wheels for the image's Python and platform, downloaded once into the cache."""
    specs = [*REQUIREMENTS, "pip>=23.1"]
    key = hashlib.sha256(json.dumps([python_version, platforms, specs]).encode()).hexdigest()
    target = _cache_dir() / "wheels" / key[:16]
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    abi = "cp" + python_version.replace(".", "")
    command = [
        sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
        "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
        "--abi", abi, "--abi", "abi3", "--abi", "none",
        *(arg for platform in [*platforms, "any"] for arg in ("--platform", platform)),
        "--dest", str(target), *specs,
    ]  # fmt: skip
    _log(quiet, f"downloading wheels for Python {python_version} ({platforms[0]})")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise ConfigurationError(
            "pip could not download the runner's wheels for the image:\n"
            f"  {' '.join(command)}\n{result.stderr.strip()[-2000:]}\n"
            "Check access to PyPI (or set PIP_INDEX_URL / PIP_FIND_LINKS to a mirror)."
        )
    (target / ".complete").write_text(" ".join(command))
    return target


def _debian_base(client: Any, quiet: bool) -> str:
    """The bootstrapped Debian base image, built once per recipe and then reused."""
    import docker

    mirror = os.environ.get("RLM_DEBIAN_MIRROR", DEFAULT_DEBIAN_MIRROR)
    recipe = hashlib.sha256(
        json.dumps([DEBIAN_SUITE, _DEBIAN_PACKAGES, _DPKG_EXCLUDES]).encode()
    ).hexdigest()[:16]
    try:
        if client.images.get(BASE_IMAGE).labels.get(f"{_LABEL}.recipe") == recipe:
            return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="rlm-rootfs-") as scratch:
        tarball = pathlib.Path(scratch, "rootfs.tar")
        started = time.perf_counter()
        if shutil.which("mmdebstrap"):
            _log(quiet, f"mmdebstrap {DEBIAN_SUITE} from {mirror} (~20 s)")
            _run(
                [
                    "mmdebstrap", "--variant=essential", "--format=tar",
                    "--include=" + ",".join(_DEBIAN_PACKAGES),
                    *(f"--dpkgopt=path-exclude={pattern}" for pattern in _DPKG_EXCLUDES),
                    DEBIAN_SUITE, str(tarball), mirror,
                ],
                quiet,
            )  # fmt: skip
        elif shutil.which("debootstrap"):
            if os.geteuid() != 0:
                raise ConfigurationError(
                    "debootstrap needs root: run `sudo rlm docker build-image`, install mmdebstrap "
                    "(works unprivileged), or pass base='python:3.12-slim' (needs a registry)."
                )
            rootfs = pathlib.Path(scratch, "rootfs")
            _log(quiet, f"debootstrap {DEBIAN_SUITE} from {mirror} (~35 s)")
            _run(
                [
                    "debootstrap", "--variant=minbase", "--include=" + ",".join(_DEBIAN_PACKAGES),
                    DEBIAN_SUITE, str(rootfs), mirror,
                ],
                quiet,
            )  # fmt: skip
            for pattern in (
                *_DPKG_EXCLUDES,
                "/var/cache/apt/archives/*.deb",
                "/var/lib/apt/lists/*",
            ):
                for path in rootfs.glob(pattern.lstrip("/")):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            _run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball), "."], quiet)
        else:
            raise ConfigurationError(
                "Building the sandbox image offline needs mmdebstrap or debootstrap on the host "
                "(apt-get install mmdebstrap), or pass base='python:3.12-slim' (needs a registry)."
            )
        _log(quiet, f"root file system ready in {time.perf_counter() - started:.1f} s; importing")
        repository, _, image_tag = BASE_IMAGE.partition(":")
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=image_tag,
            changes=[f"ENV PATH={_DEFAULT_PATH}", f"LABEL {_LABEL}.recipe={recipe}"],
        )
    return BASE_IMAGE


def _run(command: list[str], quiet: bool) -> None:
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if quiet else sys.stderr,
        stderr=subprocess.PIPE if quiet else sys.stderr,
        text=True,
    )
    if result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:]
        raise ConfigurationError(
            f"{command[0]} failed (exit {result.returncode}); see the output above.\n{detail}"
        )
