"""The environment contract suite, for any adapter: ours run it, and so can yours.

Subclass :class:`EnvironmentContract` in a test module (the class name must start with ``Test``)
and give it an ``adapter`` fixture that returns (or yields) an :class:`Adapter`: your environment
class and the ``environment_kwargs`` that reach your sandbox. pytest then runs every contract test
against it::

    import pytest
    from rlm.testing.contract import Adapter, EnvironmentContract

    class TestMySandbox(EnvironmentContract):
        @pytest.fixture
        def adapter(self):
            return Adapter(MySandboxEnvironment, {"region": "test"})

Adapters that can pre-start runners (``pool_key`` is not None) add :class:`WarmPoolContract` as a
second base. Cloud adapters (:class:`~rlm.environments.relay.RelayedSandboxEnvironment`) tested
against a local stand-in of their provider add :class:`CloudContract`, with the stand-in's record
as the adapter's ``log`` (a :class:`ProviderLog`). Importing this package needs ``pytest``;
``rlm.testing`` itself does not import it. See docs/adapters.md.
"""

from rlm.testing.contract.cloud import CloudContract
from rlm.testing.contract.environment import EnvironmentContract, WarmPoolContract
from rlm.testing.contract.fixtures import (
    Adapter,
    ContractFixtures,
    MakeEnv,
    ProviderLog,
    RecordingHandler,
    start_environment,
    started_environments,
)

__all__ = [
    "Adapter",
    "CloudContract",
    "ContractFixtures",
    "EnvironmentContract",
    "MakeEnv",
    "ProviderLog",
    "RecordingHandler",
    "WarmPoolContract",
    "start_environment",
    "started_environments",
]
