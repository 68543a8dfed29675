"""Scripts for :class:`~rlm.testing.ScriptedLMServer` that drive a whole RLM tree: who is asking
(the root of a run, or a plain sub-call), at which iteration, and a depth-two recursion plan."""

from __future__ import annotations

from collections.abc import Callable

from rlm.testing.lm_server import RecordedRequest, Reply


def is_root_request(request: RecordedRequest) -> bool:
    """True for a request of an RLM's loop (it has the system prompt), False for ``llm_query``."""
    return any(m.get("role") == "system" for m in request.messages)


def iteration_of(request: RecordedRequest) -> int:
    """Which iteration of its run a loop request is (0 for the first)."""
    return sum(1 for m in request.messages if m.get("role") == "assistant")


def depth_script(leaf_reply: str = "leaf answer") -> Callable[[RecordedRequest], str | Reply]:
    """Root -> ``rlm_query`` child -> ``rlm_query`` grandchild -> ``llm_query`` leaf: with
    ``max_depth=3`` the answer is ``"root got: child got: grand got: " + leaf_reply[:10]`` after
    7 LM calls."""
    plans = {
        "root": [
            '```repl\nr = rlm_query("CHILD: summarise the task")\nprint(r)\n```',
            '```repl\nanswer["content"] = "root got: " + r\nanswer["ready"] = True\n```',
        ],
        "child": [
            '```repl\ng = rlm_query("GRANDCHILD: go deeper")\nprint(g)\n```',
            '```repl\nanswer.update({"content": "child got: " + g, "ready": True})\n```',
        ],
        "grandchild": [
            '```repl\nv = llm_query("leaf question")\nprint(v[:20])\n```',
            '```repl\nanswer = {"content": "grand got: " + v[:10], "ready": True}\n```',
        ],
    }

    def script(request: RecordedRequest) -> str | Reply:
        if not is_root_request(request):
            return leaf_reply
        first_user = request.messages[1]["content"]
        if "GRANDCHILD" in first_user:
            who = "grandchild"
        elif "CHILD" in first_user:
            who = "child"
        else:
            who = "root"
        return plans[who][iteration_of(request)]

    return script


def fanout_script(child_plans: dict[str, str]) -> Callable[[RecordedRequest], str | Reply]:
    """The root asks one child per entry of ``child_plans`` (its code) in one batch, then answers
    with their replies joined by ``|``; a child answers what its code put in ``answer``."""
    names = list(child_plans)

    def script(request: RecordedRequest) -> str | Reply:
        if not is_root_request(request):
            return "leaf"
        first_user = request.messages[1]["content"]
        for child, code in child_plans.items():
            if f"CHILD {child}" in first_user:
                return f"```repl\n{code}\n```"
        if iteration_of(request) == 0:
            prompts = [f"CHILD {child}" for child in names]
            return f"```repl\nr = rlm_query_batched({prompts!r})\nprint(len(r))\n```"
        return '```repl\nanswer["content"] = "|".join(r)\nanswer["ready"] = True\n```'

    return script
