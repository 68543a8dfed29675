"""RLM rollouts for ``verifiers`` (0.4, ``verifiers.v1``): a Harness whose agent is an RLM
completion, its generated code run in one of rlm's sandboxes.

    [env.agent.harness]
    id = "rlm_oolong"          # the plugin id (a top-level package: see rlm_oolong)
    environment = "docker"      # any rlm environment: local, docker, modal, e2b, daytona, prime

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

from typing import Any

from rlm.integrations import require

require("verifiers", "verifiers")

import verifiers.v1 as vf  # noqa: E402
from pydantic import Field  # noqa: E402

from rlm.core import RLM  # noqa: E402
from rlm.types import RLMChatCompletion  # noqa: E402

__all__ = ["RLMSandboxHarness", "RLMSandboxHarnessConfig"]


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
            environment=config.environment,
            environment_kwargs=dict(config.environment_kwargs),
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
