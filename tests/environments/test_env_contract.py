"""Our environments against the shipped contract suite (:mod:`rlm.testing.contract`), the classes
a third-party adapter subclasses too: every entry of ``ENVIRONMENTS`` (docker once per OCI
runtime; each cloud provider on its stand-in, or live when asked for), and the warm pool where an
adapter has one."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import adapter_class, usable_variant, variants

from rlm.testing.contract import Adapter, EnvironmentContract, WarmPoolContract


class TestContract(EnvironmentContract):
    """Parametrised over ``ENVIRONMENTS`` by conftest's ``env_variant``."""

    @pytest.fixture
    def adapter(self, env_name: str, env_kwargs: dict[str, Any]) -> Adapter:
        return Adapter(adapter_class(env_name), env_kwargs)


class TestWarmPool(WarmPoolContract):
    """local, and docker with a container per session (by default docker forks every session
    inside the tree's one container: nothing to pool)."""

    @pytest.fixture(params=variants(["local", "docker"]))
    def env_variant(self, request: pytest.FixtureRequest) -> tuple[str, str | None]:
        return usable_variant(request.param)

    @pytest.fixture
    def adapter(self, env_name: str, env_kwargs: dict[str, Any]) -> Adapter:
        own = {"child_sandbox": "own"} if env_name == "docker" else {}
        return Adapter(adapter_class(env_name), {**env_kwargs, **own})
