"""Whole completions on every cloud adapter against its stand-in: the shipped
:class:`rlm.testing.contract.CloudContract`, with each provider's fixture module
(``standin_<name>.py``) reading its stand-in's call log. Provider-specific behaviour (request
fields, kill mechanics, credentials) stays in ``test_<name>.py``."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from conftest import CLOUD_PROVIDERS, adapter_class, usable_cloud_fixture

from rlm.testing.contract import Adapter, CloudContract
from rlm.testing.scripts import depth_script


class StandinLog:
    """A stand-in's call log, read through its fixture module: ``sandbox_creates``,
    ``sandbox_deletes``, ``file_uploads``, ``relay_calls``, ``runner_pids``, ``kill_calls`` and,
    where the stand-in can tell, ``inband_bytes`` (what travelled over stdin or command lines)."""

    def __init__(self, module: ModuleType, server: Any) -> None:
        self.module = module
        self.server = server

    def sandbox_creates(self) -> int:
        return self.module.sandbox_creates(self.server)

    def sandbox_deletes(self) -> int:
        return self.module.sandbox_deletes(self.server)

    def live_sandboxes(self) -> list[Any]:
        return self.server.live_sandboxes()

    def file_uploads(self) -> list[str]:
        return self.module.file_uploads(self.server)

    def relay_calls(self) -> list[str]:
        return self.module.relay_calls(self.server)

    def runner_pids(self) -> list[int]:
        return self.module.runner_pids(self.server)

    def live_pids(self) -> list[int]:
        return self.server.live_pids()

    def kill_calls(self) -> list[str]:
        return self.module.kill_calls(self.server)

    def inband_bytes(self) -> int | None:
        inband = getattr(self.module, "inband_bytes", None)
        return None if inband is None else inband(self.server)

    def end_sandboxes(self) -> None:
        self.server.end_sandboxes()


class TestCloudContract(CloudContract):
    @pytest.fixture(params=CLOUD_PROVIDERS)
    def adapter(self, request: pytest.FixtureRequest) -> Iterator[Adapter]:
        module = usable_cloud_fixture(request.param)
        with module.running_standin() as (server, kwargs):
            yield Adapter(adapter_class(request.param), kwargs, log=StandinLog(module, server))


@pytest.mark.live
@pytest.mark.parametrize("name", CLOUD_PROVIDERS)
def test_live_depth_one_completion(name, lm_server, make_rlm):
    """Against the real provider: runs only with RLM_LIVE_<NAME>=1 and its credentials."""
    module = usable_cloud_fixture(name)
    if not module.live_requested():
        pytest.skip(f"live {name} test: set {module.LIVE_REQUIREMENT}")
    lm_server.set_script(depth_script())
    rlm = make_rlm(max_depth=2, environment=name, environment_kwargs=module.live_kwargs())
    result = rlm.completion("ROOT DATA", root_prompt="go")
    assert result.response == "root got: child got: leaf answer"
