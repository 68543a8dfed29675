"""Result types under the reference ``rlms`` module path ``rlm.core.types`` (defined in ``rlm.types``)."""

from rlm.types import (
    ClientBackend,
    CodeBlock,
    EnvironmentType,
    ModelUsageSummary,
    QueryMetadata,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
    _serialize_value,
    serialize_value,
)

__all__ = [
    "ClientBackend",
    "CodeBlock",
    "EnvironmentType",
    "ModelUsageSummary",
    "QueryMetadata",
    "REPLResult",
    "RLMChatCompletion",
    "RLMIteration",
    "RLMMetadata",
    "UsageSummary",
    "_serialize_value",
    "serialize_value",
]
