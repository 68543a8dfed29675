"""Reading model replies and writing REPL results back into the conversation (reference names).

``find_code_blocks`` uses the same block finder as rlm's loop (:func:`rlm.parsing.parse_reply`), so
it returns exactly the code the loop would run.
"""

from __future__ import annotations

from typing import Any

from rlm.parsing import parse_reply
from rlm.types import REPLResult, RLMIteration

_SIMPLE_TYPES = (str, int, float, bool, list, dict, tuple)


def find_code_blocks(text: str) -> list[str]:
    """The stripped bodies of the ```repl blocks in ``text`` (```python ones when there is no
    ```repl block), in order; ``[]`` when there is none."""
    return [block.strip() for block in parse_reply(text).blocks if block.strip()]


def format_execution_result(result: REPLResult) -> str:
    """One cell's output as shown to the model: stdout, stderr and the names of its simple
    variables; ``"No output"`` when there is nothing to show."""
    sections: list[str] = []
    if result.stdout:
        sections.append("\n" + result.stdout)
    if result.stderr:
        sections.append("\n" + result.stderr)
    names = [
        name
        for name, value in result.locals.items()
        if not name.startswith("_") and isinstance(value, _SIMPLE_TYPES)
    ]
    if names:
        sections.append(f"REPL variables: {names}\n")
    return "\n\n".join(sections) if sections else "No output"


def format_iteration(
    iteration: RLMIteration, max_character_length: int = 20000
) -> list[dict[str, str]]:
    """The messages one iteration adds to the history: the model's reply, then (when code ran) one
    user message with every block's output, each cut to ``max_character_length`` characters."""
    messages = [{"role": "assistant", "content": iteration.response}]
    several = len(iteration.code_blocks) > 1
    outputs: list[str] = []
    for number, block in enumerate(iteration.code_blocks, start=1):
        shown = format_execution_result(block.result)
        if len(shown) > max_character_length:
            cut = len(shown) - max_character_length
            shown = f"{shown[:max_character_length]}... + [{cut} chars...]"
        title = f"REPL output (block {number}):" if several else "REPL output:"
        outputs.append(f"{title}\n{shown}")
    if outputs:
        messages.append({"role": "user", "content": "\n\n".join(outputs)})
    return messages


def convert_context_for_repl(context: Any) -> tuple[Any, str | None]:
    """Split a context into ``(data, text)``: text contexts come back as ``(None, text)``, message
    lists as the list of their ``content`` values, anything else as ``(context, None)``."""
    if isinstance(context, str):
        return None, context
    if (
        isinstance(context, list)
        and context
        and isinstance(context[0], dict)
        and "content" in context[0]
    ):
        return [message.get("content", "") for message in context], None
    return context, None


__all__ = [
    "convert_context_for_repl",
    "find_code_blocks",
    "format_execution_result",
    "format_iteration",
]
