"""The verifiers plugin ``rlm_oolong``: the OOLONG-style taskset and the RLM sandbox harness.

verifiers resolves a taskset or harness id to a top-level module (a dotted id such as
``rlm.integrations.oolong`` is not importable through its loader), so this package only
re-exports :mod:`rlm.integrations.oolong`: ``vf-eval rlm_oolong`` uses the taskset with the RLM
harness as its default, and ``--env.agent.harness.id rlm_oolong`` puts the harness on any taskset.
"""

from rlm.integrations.oolong import (
    OolongData,
    OolongTask,
    OolongTaskset,
    OolongTasksetConfig,
    RLMSandboxHarness,
    RLMSandboxHarnessConfig,
)

__all__ = [
    "OolongData",
    "OolongTask",
    "OolongTaskset",
    "OolongTasksetConfig",
    "RLMSandboxHarness",
    "RLMSandboxHarnessConfig",
]
