"""RLM rollouts for ``verifiers`` (0.4, ``verifiers.v1``): a Harness whose agent is an RLM
completion, its generated code run in one of rlm's sandboxes.

    [env.agent.harness]
    id = "rlm_oolong"          # the plugin id (a top-level package: see rlm_oolong)
    environment = "docker"      # any rlm environment: local, docker, modal, e2b, daytona, prime

Concurrent rollouts of one configuration in one process share one broker and one warm pool of
sandboxes (:class:`rlm.SandboxPool`, one per distinct ``environment``, ``environment_kwargs`` and
pool settings): ``pool_size`` sandboxes wait started, ``max_sandboxes`` bounds how many are alive
at once, and each sandbox serves one rollout and is then destroyed, so no rollout sees another's
state. :func:`close_shared_pools` ends them (at the process's exit they end anyway).

verifiers hands every rollout an interception endpoint and a per-rollout secret; the RLM's root
and sub-calls (``llm_query``) all go through it with rlm's OpenAI client, so verifiers records
each model call of the rollout (messages, per-turn completions, token usage) in the trace as it
does for any harness. The harness adds the RLM's final answer (``trace.root_reply``, what
rewards read through ``trace.last_reply``) and its own accounting as metrics: iterations,
sandbox cells, sub-calls, tokens. The loop runs in-process (verifiers' contract allows it when
every model call goes through the endpoint), so the verifiers runtime only hosts nothing; the
code runs in rlm's sandbox, never on the host.

A task's long context is read from its data's ``context`` field (see
:mod:`rlm.integrations.oolong`); without one, the prompt itself is the context.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from rlm.integrations import require

require("verifiers", "verifiers")

import verifiers.v1 as vf  # noqa: E402
from pydantic import Field  # noqa: E402

from rlm.core import RLM  # noqa: E402
from rlm.sandbox import SandboxPool  # noqa: E402
from rlm.types import RLMChatCompletion  # noqa: E402

__all__ = [
    "RLMSandboxHarness",
    "RLMSandboxHarnessConfig",
    "close_shared_pools",
    "shared_pool",
]


class RLMSandboxHarnessConfig(vf.HarnessConfig):
    """How each rollout's RLM runs (``--env.agent.harness.*``)."""

    id: str = "rlm_oolong"
    environment: str = "docker"
    """The rlm environment the generated code runs in."""
    environment_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of that environment (``cell_timeout``, ``memory_mb``, ``image``...)."""
    max_iterations: int = Field(10, gt=0)
    max_depth: int = Field(1, ge=0)
    max_errors: int | None = None
    max_timeout: float | None = Field(None, gt=0)
    """Seconds one rollout's RLM may run in all."""
    pool_size: int = Field(2, ge=0)
    """Sandboxes kept started and waiting for the next rollouts (shared by every concurrent
    rollout of this configuration in the process)."""
    max_sandboxes: int | None = Field(None, gt=0)
    """Sandboxes alive at once, waiting ones included; a rollout past it waits for one to end
    (up to the environment's ``startup_timeout``). None: no bound."""
    pool_idle_timeout: float = Field(300.0, gt=0)
    """Seconds a waiting sandbox may stay unused before it is removed."""


_pools: dict[str, SandboxPool] = {}
_pools_lock = threading.Lock()


def _pool_key(config: RLMSandboxHarnessConfig) -> str:
    return json.dumps(
        [
            config.environment,
            config.environment_kwargs,
            config.pool_size,
            config.max_sandboxes,
            config.pool_idle_timeout,
        ],
        sort_keys=True,
        default=repr,
    )


def shared_pool(config: RLMSandboxHarnessConfig) -> SandboxPool:
    """The process's sandbox pool (one broker, one warm pool) for rollouts of ``config``."""
    key = _pool_key(config)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool.closed:
            pool = SandboxPool(
                config.environment,
                pool_size=config.pool_size,
                max_sandboxes=config.max_sandboxes,
                pool_idle_timeout=config.pool_idle_timeout,
                **config.environment_kwargs,
            )
            _pools[key] = pool
        return pool


def close_shared_pools() -> None:
    """Ends every shared pool of this process: its broker and its sandboxes (rollouts still
    running lose theirs). The next rollout starts a new pool."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.close()


def rollout_metrics(completion: RLMChatCompletion) -> dict[str, float]:
    """What one RLM completion did, as verifiers metrics (numbers only)."""
    metadata = completion.metadata or {}
    iterations = metadata.get("iterations") or []
    cells = sum(len(it.get("code_blocks") or []) for it in iterations)
    errors = sum(
        1
        for it in iterations
        for block in it.get("code_blocks") or []
        if (block.get("result") or {}).get("stderr")
    )
    sub_calls = sum(
        len((block.get("result") or {}).get("rlm_calls") or [])
        for it in iterations
        for block in it.get("code_blocks") or []
    )
    usage = completion.usage_summary
    return {
        "rlm_iterations": float(len(iterations)),
        "rlm_cells": float(cells),
        "rlm_cell_errors": float(errors),
        "rlm_sub_calls": float(sub_calls),
        "rlm_input_tokens": float(usage.total_input_tokens),
        "rlm_output_tokens": float(usage.total_output_tokens),
        "rlm_seconds": float(completion.execution_time),
    }


class RLMSandboxHarness(vf.Harness[RLMSandboxHarnessConfig]):
    """Each rollout is ``RLM(...).acompletion(context, root_prompt=prompt)`` in rlm's sandbox."""

    APPENDS_SYSTEM_PROMPT = False
    # The model's code runs in rlm's sandbox, not in the verifiers runtime: nothing of it
    # executes on the host, and no container runtime is needed for the harness itself.
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(
        self,
        ctx: vf.ModelContext,
        trace: vf.Trace,
        runtime: vf.Runtime,
        endpoint: str,
        secret: str,
        mcp_urls: dict[str, str],
        data: vf.TaskData,
    ) -> vf.ProgramResult:
        config = self.config
        _, prompt = self.resolve_text_prompt(data)
        context = getattr(data, "context", None)
        if context is None:
            context, prompt = prompt or "", None
        model = RLM(
            backend="openai",
            backend_kwargs={
                "model_name": ctx.model,
                "base_url": endpoint,
                "api_key": secret,
                "max_retries": 1,
            },
            sandbox_pool=shared_pool(config),
            max_iterations=config.max_iterations,
            max_depth=config.max_depth,
            max_errors=config.max_errors,
            max_timeout=config.max_timeout,
        )
        async with model:
            completion = await model.acompletion(context, root_prompt=prompt)
        trace.root_reply = completion.response
        trace.record_metrics(rollout_metrics(completion))
        finished_by = (completion.metadata or {}).get("finished_by")
        trace.info["rlm"] = {
            "environment": config.environment,
            "finished_by": finished_by,
            "answer": completion.response,
        }
        return vf.ProgramResult(exit_code=0, stdout=completion.response, stderr="")
