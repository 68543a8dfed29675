"""Prompt templates and builders under the reference ``rlms`` names, worded from rlm's own prompts.

``RLM_SYSTEM_PROMPT`` is rlm's system prompt (:data:`rlm.prompts.SYSTEM_PROMPT`) as a template
whose one placeholder is ``{custom_tools_section}``, which is what ``build_rlm_system_prompt``
(and a ``custom_system_prompt``) fill in.
"""

from __future__ import annotations

from typing import Any

from rlm.prompts import SYSTEM_PROMPT
from rlm.types import QueryMetadata

_TOOLS_MARK = "\x00custom_tools_section\x00"


def _as_template(text: str) -> str:
    """Escape every brace of ``text`` except the custom-tools mark, which becomes the
    ``{custom_tools_section}`` placeholder."""
    escaped = text.replace("{", "{{").replace("}", "}}")
    return escaped.replace(_TOOLS_MARK, "{custom_tools_section}")


RLM_SYSTEM_PROMPT: str = _as_template(
    SYSTEM_PROMPT.format(
        max_output_chars="20,000",
        context_kind="its type and size are in the first user message",
        sub_window_chars="400,000",
        depth_note="",
        tools_section=_TOOLS_MARK,
    )
)
"""The default system prompt; format it with ``custom_tools_section=...`` (may be empty)."""

RLM_SYSTEM_PROMPT_OLD: str = RLM_SYSTEM_PROMPT
"""Kept for imports written against older releases; the same text as ``RLM_SYSTEM_PROMPT``."""

ORCHESTRATOR_ADDENDUM: str = "\n\n".join(
    [
        "Work as an orchestrator: your own turns are for deciding what to ask next and how to "
        "combine the answers; the reading is done by sub-calls.",
        "Size the sub-calls well. One `llm_query` prompt should carry a substantial chunk "
        "(tens of thousands of characters, not one line); `llm_query_batched` runs many such "
        "prompts at once but does not make any one of them bigger, so send a few batches of "
        "about twenty full prompts rather than hundreds of tiny ones.",
        "Filter with plain Python (string search, regular expressions, parsing) before you "
        "spend sub-calls, and batch independent questions instead of asking them one per turn.",
        "Use `rlm_query` only for a sub-task that needs several steps of its own; a one-shot "
        "question is an `llm_query`.",
    ]
)
"""Extra guidance appended to the system prompt when ``orchestrator=True``."""

USER_PROMPT: str = "Iteration {iter_1} of {max_iter}:"
"""The per-turn user message; formatted with ``iter_1`` (1-based) and ``max_iter``."""

USER_PROMPT_OLD: str = (
    "Go on working in the REPL (which holds `context`) towards an answer to the request, and "
    "write your next step in a ```repl block."
)
"""Kept for imports written against older releases."""

USER_PROMPT_WITH_ROOT_OLD: str = (
    'Go on working in the REPL (which holds `context`) towards an answer to: "{root_prompt}". '
    "Write your next step in a ```repl block."
)
"""Kept for imports written against older releases; formatted with ``root_prompt``."""

_DEFAULT_MAX_ITERATIONS = 30


def build_rlm_system_prompt(
    system_prompt: str,
    query_metadata: QueryMetadata,
    custom_tools: dict[str, Any] | None = None,
    root_prompt: str | None = None,
    orchestrator: bool = True,
) -> list[dict[str, str]]:
    """The opening ``[system, user]`` messages: ``system_prompt`` with the custom tools filled in
    (plus :data:`ORCHESTRATOR_ADDENDUM`), and a user message describing the context's size."""
    from rlm.environments.compat import format_tools_for_prompt

    tools_text = format_tools_for_prompt(custom_tools)
    section = f"- Custom tools and data in the REPL:\n{tools_text}\n" if tools_text else ""
    system = system_prompt.format(custom_tools_section=section)
    if orchestrator:
        system = f"{system}\n\n{ORCHESTRATOR_ADDENDUM}"
    sizes = (
        f"`context` is a {query_metadata.context_type} of "
        f"{query_metadata.context_total_length:,} characters in all; one sub-call reads about "
        "100k tokens."
    )
    user = f"The request: {root_prompt}\n\n{sizes}" if root_prompt else sizes
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def build_user_prompt(
    root_prompt: str | None = None,
    iteration: int = 0,
    context_count: int = 1,
    history_count: int = 0,
    max_iterations: int = _DEFAULT_MAX_ITERATIONS,
) -> dict[str, str]:
    """The user message for 0-based ``iteration``, noting extra contexts and histories."""
    text = USER_PROMPT.format(iter_1=iteration + 1, max_iter=max_iterations)
    if iteration == 0:
        text = (
            "You have not looked at the REPL or at `context` yet: explore it first and do not "
            "answer yet.\n\n" + text
        )
    if context_count > 1:
        text += f"\n\nThere are {context_count} contexts: context_0 to context_{context_count - 1}."
    if history_count == 1:
        text += "\n\nOne earlier conversation is in the variable `history`."
    elif history_count > 1:
        text += (
            f"\n\n{history_count} earlier conversations are in history_0 to "
            f"history_{history_count - 1}."
        )
    return {"role": "user", "content": text}


__all__ = [
    "ORCHESTRATOR_ADDENDUM",
    "RLM_SYSTEM_PROMPT",
    "RLM_SYSTEM_PROMPT_OLD",
    "USER_PROMPT",
    "USER_PROMPT_OLD",
    "USER_PROMPT_WITH_ROOT_OLD",
    "build_rlm_system_prompt",
    "build_user_prompt",
]
