"""Which environments (sandbox providers) the suite can run here, and why the others are skipped.

A provider is *live* when its real service is used, a *stand-in* when its adapter talks to a local
wire-level stand-in (the cloud SDK pointed at a local server); stand-in figures say nothing about
the real provider's latency and are labelled as such in every table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection
from dataclasses import dataclass

DOCKER_IMAGE = "rlm-sandbox:latest"

#: environment -> the ``environment_kwargs`` that turn on its warm pool (for the acquire figure)
WARM_POOL_KWARGS: dict[str, dict[str, object]] = {"docker": {"pool_size": 2}}

#: cloud provider -> (credential variables for a live run, variable that points the SDK at a stand-in)
CLOUD_PROVIDERS: dict[str, tuple[tuple[str, ...], str]] = {
    "modal": (("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"), "MODAL_SERVER_URL"),
    "e2b": (("E2B_API_KEY",), "E2B_DEBUG"),
    "daytona": (("DAYTONA_API_KEY",), "DAYTONA_API_URL"),
    "prime": (("PRIME_API_KEY",), "PRIME_API_BASE_URL"),
}


@dataclass(frozen=True)
class Provider:
    """An environment name, whether it can run here, and its label in the tables."""

    name: str
    runnable: bool
    kind: str = "local"
    """``local`` (runs on this machine), ``live`` (a real cloud service) or ``stand-in``."""
    reason: str = ""
    """Why it is skipped (empty when runnable)."""

    @property
    def label(self) -> str:
        return self.name if self.kind in ("local", "live") else f"{self.name} (stand-in)"


def _class_importable(name: str) -> str:
    """Empty if ``environment_class(name)`` imports, else the reason it does not."""
    try:
        from rlm.environments import environment_class

        environment_class(name)
    except Exception as error:  # an adapter still being built may fail in any way
        return f"environment_class({name!r}) failed: {type(error).__name__}: {error}"
    return ""


def _docker_reason() -> str:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
        if info.returncode != 0:
            return "`docker info` failed: no running Docker engine"
        image = subprocess.run(
            ["docker", "image", "inspect", DOCKER_IMAGE], capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"docker did not answer: {error}"
    if image.returncode != 0:
        return f"image {DOCKER_IMAGE} missing (build it with `rlm docker build-image`)"
    return ""


def probe(name: str, standin: bool = False) -> Provider:
    """Whether environment ``name`` can run on this machine now, with the reason if not
    (``standin``: the bench started this provider's stand-in, in a venv of the SDK's own where
    it needs one)."""
    if standin:
        return Provider(name, True, "stand-in")
    if name in CLOUD_PROVIDERS:
        credentials, stand_in_var = CLOUD_PROVIDERS[name]
        if os.environ.get(stand_in_var):
            kind = "stand-in"
        elif all(os.environ.get(var) for var in credentials):
            kind = "live"
        else:
            return Provider(
                name,
                False,
                "live",
                f"no credentials (set {', '.join(credentials)}) and no stand-in ({stand_in_var})",
            )
        reason = _class_importable(name)
        return Provider(name, not reason, kind, reason)
    reason = _class_importable(name)
    if not reason and name == "docker":
        reason = _docker_reason()
    return Provider(name, not reason, "local", reason)


def probe_all(names: list[str], standins: Collection[str] = ()) -> list[Provider]:
    """``probe`` for each name, in order (``standins``: the providers whose stand-in the bench
    started)."""
    return [probe(name, name in standins) for name in names]
