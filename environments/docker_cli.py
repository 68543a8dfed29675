"""``rlm docker build-image`` and ``rlm docker gc``."""

from __future__ import annotations

import argparse
import sys


def _build(args: argparse.Namespace) -> int:
    from .docker_image import build_image

    image_id = build_image(args.tag, base=args.base, quiet=args.quiet)
    print(f"{args.tag} {image_id}")
    return 0


def _gc(args: argparse.Namespace) -> int:
    from .docker import gc

    removed = gc(all_hosts=args.all)
    print(f"removed {len(removed)} container(s)", file=sys.stderr)
    for container_id in removed:
        print(container_id)
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Registers ``rlm docker ...``."""
    from .docker_image import DEFAULT_IMAGE

    docker = subparsers.add_parser("docker", help="manage the docker sandbox (image, orphans)")
    commands = docker.add_subparsers(dest="docker_command", metavar="COMMAND", required=True)
    build = commands.add_parser(
        "build-image",
        help="build the sandbox image locally (no registry needed)",
        description=(
            "Builds the image the docker environment runs: Python, grpcio and protobuf, a "
            "non-root user. Without --base the base is bootstrapped from Debian packages, so no "
            "registry is needed; with --base (e.g. python:3.12-slim) that image is used."
        ),
    )
    build.add_argument("--tag", default=DEFAULT_IMAGE, help=f"image tag (default {DEFAULT_IMAGE})")
    build.add_argument("--base", help="base image to build on instead of a Debian bootstrap")
    build.add_argument("--quiet", "-q", action="store_true")
    build.set_defaults(handler=_build)
    collect = commands.add_parser(
        "gc",
        help="remove sandbox containers whose owning process is gone",
        description="Removes rlm sandbox containers left by a killed host process.",
    )
    collect.add_argument("--all", action="store_true", help="remove every rlm sandbox container")
    collect.set_defaults(handler=_gc)
