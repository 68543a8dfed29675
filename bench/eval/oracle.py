"""A scripted "oracle" model for the ScriptedLMServer: it really reads the prompt it is given.

It proves the harness's plumbing (context delivery, chunking through ``llm_query_batched``,
answer extraction, scoring, token and cost accounting), not any model's quality:

- as the **root** of an RLM (a request whose system prompt teaches the REPL) it writes the code a
  competent model would write: split ``context`` at line breaks into chunks, ask a sub-model about
  each chunk with ``llm_query_batched``, combine the replies in Python;
- as a **reader** (a sub-call, or the plain base model with the whole context in one prompt) it
  answers the question at the end of the prompt from the text before it, with regexes. A fact
  that was cut away by truncation is simply not found.
"""

from __future__ import annotations

import re
from collections import Counter

from rlm.testing import RecordedRequest

LIST_ASSIGNMENTS = "List every variable assignment in this text, one per line as NAME = VALUE."
LIST_TITLES = "List the title of every record in this text, one per line."
NOT_FOUND = "NONE"

_NIAH = re.compile(r"special magic number for (\S+) mentioned in the provided text\?")
_VT = re.compile(r"assigned the value (\d+) in the text above\.")
_COUNT = re.compile(r'How many records have the answer "([^"]+)"\?')
_MODE = "Which title appears in the most records?"
_ASSIGNMENT = re.compile(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)")
_TITLE = re.compile(r"\| title: ([^|\n]+?) \|")

CHUNKING = """\
lines = context.split("\\n")
size = max(2_000, min(400_000, len(context) // 8 + 1))
chunks, current = [], []
for line in lines:
    current.append(line)
    if sum(map(len, current)) >= size:
        chunks.append("\\n".join(current))
        current = []
if current:
    chunks.append("\\n".join(current))
print(len(chunks), "chunks")
"""

VT_RESOLVE = """\
assignments = {}
for reply in replies:
    for row in reply.splitlines():
        if " = " in row:
            name, value = row.split(" = ", 1)
            assignments[name.strip()] = value.strip()
def resolve(name, seen=()):
    value = assignments.get(name, "")
    if value.startswith("VAR ") and name not in seen:
        return resolve(value[4:], (*seen, name))
    return value
names = [n for n in assignments if resolve(n) == target]
answer["content"] = ", ".join(names)
"""


def _root_code(question: str) -> str | None:
    """The REPL code for the question, or None if the oracle does not know the task."""
    q = repr(question)
    if _NIAH.search(question):
        ask = f"[c + '\\n\\n' + {q} + ' Answer {NOT_FOUND} if it is not in this text.' for c in chunks]"
        combine = (
            f"found = [r.strip() for r in replies if r.strip() and r.strip() != {NOT_FOUND!r}]\n"
            f"answer['content'] = found[0] if found else {NOT_FOUND!r}\n"
        )
    elif match := _VT.search(question):
        ask = f"[c + '\\n\\n' + {LIST_ASSIGNMENTS!r} for c in chunks]"
        combine = f"target = {match.group(1)!r}\n" + VT_RESOLVE
    elif _COUNT.search(question):
        ask = f"[c + '\\n\\n' + {q} + ' Reply with a number.' for c in chunks]"
        combine = "answer['content'] = str(sum(int(r.strip()) for r in replies))\n"
    elif _MODE in question:
        ask = f"[c + '\\n\\n' + {LIST_TITLES!r} for c in chunks]"
        combine = (
            "from collections import Counter\n"
            "titles = Counter(t.strip() for r in replies for t in r.splitlines() if t.strip())\n"
            "answer['content'] = titles.most_common(1)[0][0]\n"
        )
    else:
        return None
    return (
        "```repl\n"
        + CHUNKING
        + f"replies = llm_query_batched({ask})\n"
        + combine
        + 'answer["ready"] = True\n```'
    )


def read(prompt: str) -> str:
    """Answer the question at the end of ``prompt`` from the text before it (the reader role)."""
    tail, text = prompt[-600:], prompt
    if match := _NIAH.search(tail):
        key = re.escape(match.group(1))
        found = re.search(rf"special magic numbers for {key} is: (\d+)", text)
        return found.group(1) if found else NOT_FOUND
    if LIST_ASSIGNMENTS in tail:
        return "\n".join(f"{a} = {b}" for a, b in _ASSIGNMENT.findall(text))
    if match := _VT.search(tail):
        assignments = dict(_ASSIGNMENT.findall(text))

        def resolve(name: str, seen: frozenset[str] = frozenset()) -> str:
            value = assignments.get(name, "")
            if value.startswith("VAR ") and name not in seen:
                return resolve(value[4:], seen | {name})
            return value

        return ", ".join(n for n in assignments if resolve(n) == match.group(1))
    if match := _COUNT.search(tail):
        return str(len(re.findall(rf"\| answer: {re.escape(match.group(1))} \|", text)))
    if LIST_TITLES in tail:
        return "\n".join(t.strip() for t in _TITLE.findall(text))
    if _MODE in tail:
        titles = Counter(t.strip() for t in _TITLE.findall(text))
        return titles.most_common(1)[0][0] if titles else NOT_FOUND
    return NOT_FOUND


def _is_rlm_root(request: RecordedRequest) -> bool:
    return any(
        m.get("role") == "system" and "llm_query_batched" in str(m.get("content", ""))
        for m in request.messages
    )


def oracle_script(request: RecordedRequest) -> str:
    """The ScriptedLMServer script: REPL code for an RLM root, a read answer otherwise."""
    if _is_rlm_root(request):
        first_user = next((m for m in request.messages if m.get("role") == "user"), {})
        content = str(first_user.get("content", ""))
        asked = re.search(r"The request: (.*)", content)  # our first user message's layout
        code = _root_code(asked.group(1).strip() if asked else content)
        return code or f'```repl\nanswer["content"] = "{NOT_FOUND}"\nanswer["ready"] = True\n```'
    return read(request.prompt)
