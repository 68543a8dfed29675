"""Package lists under the reference ``rlms`` names, for building a sandbox image of your own.

rlm's sandboxes only need :data:`RUNNER_REQUIREMENTS` (what the runner imports); the other lists
are a suggested data-science toolset to add when the model's code should have it.
"""

from rlm.environments.docker_image import REQUIREMENTS

RUNNER_REQUIREMENTS: list[str] = list(REQUIREMENTS)
"""What rlm's runner needs inside any sandbox image."""

APT_PACKAGES: list[str] = [
    "build-essential",
    "ca-certificates",
    "curl",
    "git",
    "liblapack-dev",
    "libopenblas-dev",
]
"""System packages for an image that compiles and runs numeric Python code."""

PIP_PACKAGES: list[str] = [
    *RUNNER_REQUIREMENTS,
    "numpy>=1.26",
    "pandas>=2.1",
    "scipy>=1.11",
    "sympy>=1.12",
    "regex>=2023.0",
    "python-dateutil>=2.8",
    "pyyaml>=6.0",
    "tqdm>=4.66",
]
"""Python packages for a general-purpose analysis sandbox (includes the runner's own)."""

__all__ = ["APT_PACKAGES", "PIP_PACKAGES", "RUNNER_REQUIREMENTS"]
