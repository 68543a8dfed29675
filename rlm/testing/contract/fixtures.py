"""What the contract classes share: the :class:`Adapter` a subclass supplies, the broker, a
recording session handler, environment and LM-server fixtures."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from rlm.broker.loop import run_sync
from rlm.broker.server import BrokerServer
from rlm.environments.base import CellResult, SandboxEnvironment
from rlm.errors import ConfigurationError
from rlm.protos import rlm_sandbox_pb2 as pb
from rlm.testing.lm_server import ScriptedLMServer

if TYPE_CHECKING:
    from rlm.core.rlm import RLM


class ProviderLog(Protocol):
    """What a cloud provider (its local stand-in, or a fake of its API) was asked to do, as
    :class:`~rlm.testing.contract.CloudContract` reads it."""

    def sandbox_creates(self) -> int:
        """Sandboxes created so far."""
        ...

    def sandbox_deletes(self) -> int:
        """Sandboxes deleted so far."""
        ...

    def live_sandboxes(self) -> list[Any]:
        """Sandboxes still running."""
        ...

    def file_uploads(self) -> list[str]:
        """One entry per file written through the provider's file API."""
        ...

    def relay_calls(self) -> list[str]:
        """The calls that carried the runner's stdin."""
        ...

    def runner_pids(self) -> list[int]:
        """The runner processes alive in the sandboxes."""
        ...

    def live_pids(self) -> list[int]:
        """Every process alive in any sandbox."""
        ...

    def kill_calls(self) -> list[str]:
        """The calls that killed a process through the provider's API."""
        ...

    def inband_bytes(self) -> int | None:
        """The most bytes one exec's command line or stdin write carried (None: cannot tell)."""
        ...

    # Optional: ``end_sandboxes()`` ends every live sandbox from the provider's side, as its
    # timeout would; the contract test of that case is skipped for a log without it.


@dataclass
class Adapter:
    """How the suite starts environments of one kind: the class, and the ``environment_kwargs``
    every environment of a test gets (a test may add its own, e.g. ``max_output_chars``)."""

    environment: type[SandboxEnvironment]
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: what the provider recorded (the cloud contract needs it; the others do not)
    log: ProviderLog | None = None


class RecordingHandler:
    """A session handler that answers sub-calls without a model and records them:
    ``llm_query(p)`` gets ``echo:p``, ``rlm_query(p)`` gets ``child:p``, and tools are the
    callables in ``tools``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.tools: dict[str, Callable[..., Any]] = {}

    async def complete(self, request: pb.CompleteRequest) -> pb.CompleteReply:
        self.calls.append(("complete", request.prompt))
        return pb.CompleteReply(text=f"echo:{request.prompt}", input_tokens=1, output_tokens=1)

    async def subcall(self, request: pb.SubcallRequest) -> pb.CompleteReply:
        self.calls.append(("subcall", request.prompt))
        return pb.CompleteReply(text=f"child:{request.prompt}")

    async def call_tool(self, request: pb.ToolRequest) -> pb.ToolReply:
        self.calls.append(("tool", request.name))
        payload = json.loads(request.args_json)
        if request.name not in self.tools:
            raise ConfigurationError(f"no tool {request.name}")
        value = self.tools[request.name](*payload["args"], **payload["kwargs"])
        return pb.ToolReply(result_json=json.dumps(value).encode())


def start_environment(
    environment: type[SandboxEnvironment], broker: BrokerServer, handler: Any, **kwargs: Any
) -> SandboxEnvironment:
    """A started environment (the caller closes it)."""
    env = environment(broker=broker, handler=handler, label="test", **kwargs)
    run_sync(env.start())
    return env


MakeEnv = Callable[..., SandboxEnvironment]


@contextlib.contextmanager
def started_environments(
    environment: type[SandboxEnvironment],
    broker: BrokerServer,
    handler: Any,
    defaults: dict[str, Any],
) -> Iterator[MakeEnv]:
    """A factory of started environments (``defaults`` overridden by its keyword arguments);
    on the way out every one is closed, then the broker's shared resources (a tree's sandbox,
    warm pools)."""
    made: list[SandboxEnvironment] = []

    def factory(**kwargs: Any) -> SandboxEnvironment:
        env = start_environment(environment, broker, handler, **{**defaults, **kwargs})
        made.append(env)
        return env

    try:
        yield factory
    finally:
        for env in made:
            run_sync(env.aclose())
        run_sync(broker.aclose_resources())


def run(env: SandboxEnvironment, code: str, timeout: float | None = None) -> CellResult:
    return run_sync(env.execute(code, timeout=timeout))


@contextlib.contextmanager
def completion_rlm(adapter: Adapter, lm_server: ScriptedLMServer, **kwargs: Any) -> Iterator[RLM]:
    """An ``RLM`` whose LM is ``lm_server`` and whose environment is the adapter's."""
    from rlm import RLM

    backend = {
        "model_name": "root-model",
        "base_url": lm_server.base_url,
        "api_key": "test-key",
        "max_retries": 1,
        "initial_backoff": 0.01,
    }
    with RLM(
        backend="openai",
        backend_kwargs=backend,
        environment=adapter.environment,
        environment_kwargs=adapter.kwargs,
        **kwargs,
    ) as rlm:
        yield rlm


class ContractFixtures:
    """The fixtures the contract classes share; a subclass supplies ``adapter``."""

    @pytest.fixture
    def adapter(self) -> Adapter:
        raise NotImplementedError(
            f"{type(self).__name__} needs an `adapter` fixture returning "
            "rlm.testing.contract.Adapter(YourEnvironment, environment_kwargs)"
        )

    @pytest.fixture(scope="class")
    @classmethod
    def broker(cls) -> Iterator[BrokerServer]:
        server = BrokerServer()
        run_sync(server.start())
        yield server
        run_sync(server.aclose())

    @pytest.fixture
    def handler(self) -> RecordingHandler:
        return RecordingHandler()

    @pytest.fixture
    def make_env(
        self, adapter: Adapter, broker: BrokerServer, handler: RecordingHandler
    ) -> Iterator[MakeEnv]:
        """Starts environments of the adapter's kind; closes them after the test."""
        with started_environments(adapter.environment, broker, handler, adapter.kwargs) as make:
            yield make

    @pytest.fixture
    def lm_server(self) -> Iterator[ScriptedLMServer]:
        with ScriptedLMServer() as server:
            yield server
