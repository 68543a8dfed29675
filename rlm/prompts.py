"""The prompts that teach the root model to work in the REPL."""

from __future__ import annotations

from typing import Any

SYSTEM_PROMPT = """\
You answer a request about data that is far too large to read at once. The data is not in this \
conversation: it lives in a Python REPL as the variable `context`. You work by writing Python in \
```repl blocks. Each block runs in a persistent, sandboxed interpreter (variables survive between \
blocks and turns); you then see what it printed, cut to about {max_output_chars} characters.

In the REPL you have:
- `context`: the data ({context_kind}).
- `llm_query(prompt: str, model: str | None = None) -> str`: one call to a language model that can \
read roughly {sub_window_chars} characters. Use it to read, summarise or search pieces of `context`.
- `llm_query_batched(prompts: list[str], model=None) -> list[str]`: many of those calls at once, \
concurrently. Much faster than calling llm_query in a loop: chunk the data and batch. A failed item \
comes back as a string starting with "Error:".
- `rlm_query(prompt: str, model=None) -> str`: hands `prompt` to a child agent like you, with its \
own REPL whose `context` is `prompt`. Use it for a sub-task that itself needs several steps. \
{depth_note}
- `rlm_query_batched(prompts: list[str], model=None) -> list[str]`: several children at once.
- `SHOW_VARS()`: prints the variables you have defined.
{tools_section}- `answer`: a dict, initially {{"content": "", "ready": False}}.

How to work:
1. Look before you leap: print the type, the length and a small sample of `context` first.
2. Do the heavy reading with code and sub-calls, not by printing large parts of `context`: \
what you print is cut, what you keep in variables is not.
3. Write one or more ```repl blocks per turn; explain your plan briefly in prose.
4. When you are confident, finish inside a ```repl block:
```repl
answer["content"] = "the final answer"
answer["ready"] = True
```
The run ends after the block in which `answer["ready"]` becomes true, and `answer["content"]` \
(as it is at the end of that block) is returned to the user. Do not set it before you have \
checked your result against the data.
"""

FIRST_USER_MESSAGE = """\
{request}

`context` is {context_description}. Start by exploring it in a ```repl block."""

PERSISTENT_TURN = """\
{request}

This is turn {turn} of a conversation in the same REPL: the new data is `context_{turn}` \
({context_description}). `context` is still the first turn's data; `context_0` .. \
`context_{turn}` hold every turn's data and `history_0` .. `history_{last}` the earlier turns' \
conversations (lists of messages). Your variables from earlier turns are still there. Start \
by exploring `context_{turn}` in a ```repl block."""

ORCHESTRATOR_NOTE = """\
Work as an orchestrator: after a first look at the data, state your plan (which steps run as \
code, which as sub-calls), then carry it out one step at a time, printing a small sample of each \
result to check it before you build on it. Set `answer["ready"] = True` only after you have \
printed and checked the answer; if you are running out of iterations, give your best answer \
rather than none."""

COMPACTION_NOTE = (
    "When the conversation grows long it is summarised; the whole conversation before each "
    "summary stays in the REPL variable `history` (a list of trajectory segments and summaries)."
)

AFTER_COMPACTION = (
    "The conversation has been compacted {count} time(s); continue from your summary above. "
    "The REPL state is unchanged: SHOW_VARS() lists your variables and `history` holds the "
    "conversation before the summary. Do not redo finished work. Your next step:"
)

DEFAULT_REQUEST = (
    "The request is part of `context` itself: read it there, then carry it out over the data."
)

NEXT_USER_MESSAGE = (
    "Output of your code:\n{outputs}\n\nContinue (iteration {iteration} of {max_iterations})."
)

OUT_OF_ITERATIONS = (
    "You have used every iteration. Reply now with your best final answer as plain text, "
    "without any code block."
)

COMPACTION_REQUEST = (
    "The conversation is getting long. Summarise what you have learned so far, the variables "
    "that hold your intermediate results, and what is left to do, so you can continue from the "
    "summary alone. Plain text, no code."
)


def describe_context(value: Any) -> tuple[str, str]:
    """A short kind (for the system prompt) and a description with sizes and a preview."""
    if isinstance(value, str):
        preview = value[:200].replace("\n", "\\n")
        return "a str", f"a str of {len(value):,} characters; it starts with: {preview!r}"
    if isinstance(value, dict):
        keys = list(value)[:20]
        return "a dict", f"a dict with {len(value):,} keys; the first keys: {keys!r}"
    if isinstance(value, (list, tuple)):
        lengths = [len(item) if isinstance(item, (str, list, dict)) else 1 for item in value[:10]]
        total = sum(len(item) if isinstance(item, str) else 0 for item in value)
        return "a list", (
            f"a list of {len(value):,} items ({total:,} characters of text in all); "
            f"lengths of the first items: {lengths}"
        )
    return type(value).__name__, f"a {type(value).__name__}"


def system_prompt(
    *,
    context_value: Any,
    max_output_chars: int,
    depth: int,
    max_depth: int,
    tools: dict[str, str],
    sub_window_chars: int = 400_000,
    orchestrator: bool = False,
    compaction: bool = False,
) -> str:
    """The system prompt for a run at ``depth`` with the given tools; ``orchestrator`` adds the
    plan-then-verify guidance, ``compaction`` says where the compacted conversation lives."""
    if depth + 1 >= max_depth:
        depth_note = "(At this depth children are plain LM calls with no REPL.)"
    else:
        depth_note = ""
    tools_section = "".join(
        f"- `{name}`: {description or 'a host-side tool'}\n" for name, description in tools.items()
    )
    text = SYSTEM_PROMPT.format(
        max_output_chars=max_output_chars,
        context_kind=describe_context(context_value)[0],
        sub_window_chars=f"{sub_window_chars:,}",
        depth_note=depth_note,
        tools_section=tools_section,
    )
    if orchestrator:
        text += "\n" + ORCHESTRATOR_NOTE + "\n"
    if compaction:
        text += "\n" + COMPACTION_NOTE + "\n"
    return text


def first_user_message(context_value: Any, root_prompt: str | None, *, turn: int = 0) -> str:
    """The request and a description of the data; ``turn`` > 0 in a persistent session."""
    request = f"The request: {root_prompt}" if root_prompt else DEFAULT_REQUEST
    description = describe_context(context_value)[1]
    if turn:
        return PERSISTENT_TURN.format(
            request=request, turn=turn, last=turn - 1, context_description=description
        )
    return FIRST_USER_MESSAGE.format(request=request, context_description=description)


def format_cell(index: int, code: str, result: Any) -> str:
    """How one cell's outcome is shown to the model."""
    parts = [f"[block {index}, {result.seconds:.2f}s]"]
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stdout_dropped:
        parts.append(f"... ({result.stdout_dropped:,} more characters of output not shown)")
    if result.stderr:
        parts.append("stderr:\n" + result.stderr.rstrip("\n"))
    if result.stderr_dropped:
        parts.append(f"... ({result.stderr_dropped:,} more characters of stderr not shown)")
    if result.error:
        parts.append("error:\n" + result.error)
    if not (result.stdout or result.stderr or result.error):
        parts.append("(no output)")
    return "\n".join(parts)
