"""Finding the code blocks in an LM reply."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_FENCE = re.compile(r"^[ \t]*```[ \t]*(repl|python|py)?[ \t]*$", re.MULTILINE)


@dataclass
class ParsedReply:
    """The ```repl blocks of a reply, in order, and what was wrong with it, if anything."""

    blocks: list[str] = field(default_factory=list)
    problem: str = ""


def parse_reply(text: str) -> ParsedReply:
    """Extracts ```repl blocks (```python is accepted when no ```repl block is present).

    An unterminated block is reported as a problem rather than half-run.
    """
    repl: list[str] = []
    python: list[str] = []
    position = 0
    while True:
        opening = _FENCE.search(text, position)
        if opening is None:
            break
        language = opening.group(1)
        closing = _FENCE.search(text, opening.end())
        while closing is not None and closing.group(1):
            closing = _FENCE.search(text, closing.end())
        if closing is None:
            if language:
                return ParsedReply(
                    repl or python,
                    f"the ```{language} block that starts at character {opening.start()} is "
                    "never closed; end every code block with ``` on its own line",
                )
            break
        body = text[opening.end() + 1 : closing.start()]
        if language == "repl":
            repl.append(body)
        elif language in ("python", "py"):
            python.append(body)
        position = closing.end()
    blocks = repl or python
    blocks = [b for b in blocks if b.strip()]
    if not blocks:
        return ParsedReply(
            [],
            "no ```repl code block found. Write Python in a ```repl block to inspect `context`; "
            'to finish, set answer["content"] and answer["ready"] = True inside a ```repl block',
        )
    return ParsedReply(blocks)
