"""The reference ``rlms`` environment base classes and custom-tool helpers (defined in
:mod:`rlm.environments.compat`)."""

from rlm.environments.compat import (
    RESERVED_TOOL_NAMES,
    BaseEnv,
    IsolatedEnv,
    NonIsolatedEnv,
    SupportsCustomTools,
    SupportsPersistence,
    ToolInfo,
    extract_tool_value,
    format_tools_for_prompt,
    parse_custom_tools,
    parse_tool_entry,
    validate_custom_tools,
)

__all__ = [
    "RESERVED_TOOL_NAMES",
    "BaseEnv",
    "IsolatedEnv",
    "NonIsolatedEnv",
    "SupportsCustomTools",
    "SupportsPersistence",
    "ToolInfo",
    "extract_tool_value",
    "format_tools_for_prompt",
    "parse_custom_tools",
    "parse_tool_entry",
    "validate_custom_tools",
]
