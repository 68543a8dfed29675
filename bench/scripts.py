"""Scripted LM replies for each workload: both systems execute exactly these code blocks.

Scripts tell requests apart by markers in the messages (the root prompt of each workload) or by
the sub-call prompt's prefix, never by anything system-specific, so the same script drives our
rlm and the reference.
"""

from __future__ import annotations

from collections.abc import Callable

from rlm.testing import RecordedRequest, Reply

Script = Callable[[RecordedRequest], Reply | str]

FINISH = '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'
LOAD_CODE = '```repl\nanswer["content"] = str(len(context))\nanswer["ready"] = True\n```'


def has_marker(request: RecordedRequest, marker: str) -> bool:
    """Whether any message of the request mentions ``marker``."""
    return any(marker in str(m.get("content", "")) for m in request.messages)


def iteration(request: RecordedRequest) -> int:
    """How many root iterations came before this request (assistant turns so far)."""
    return sum(1 for m in request.messages if m.get("role") == "assistant")


def iteration_script(iterations: int) -> Script:
    """``iterations`` root turns of one trivial cell each; warm-up and one-turn runs finish at once."""

    def script(request: RecordedRequest) -> str:
        if has_marker(request, "BENCH-WARMUP") or has_marker(request, "BENCH-ONE"):
            return FINISH
        k = iteration(request)
        if k < iterations - 1:
            return f"```repl\nx = {k}\n```"
        return FINISH

    return script


def batched_script(n: int, latency: float) -> Script:
    """One cell sends ``n`` prompts through ``llm_query_batched``; each sub-call sleeps ``latency``."""
    code = (
        "```repl\nimport time\n"
        f'prompts = ["SUBCALL item %d" % i for i in range({n})]\n'
        "t0 = time.perf_counter()\nres = llm_query_batched(prompts)\n"
        "elapsed = time.perf_counter() - t0\n"
        'answer["content"] = str(elapsed)\nanswer["ready"] = True\n```'
    )

    def script(request: RecordedRequest) -> Reply | str:
        if request.prompt.startswith("SUBCALL"):
            return Reply("ok", delay=latency)
        return code

    return script


FLOOR_PROMPT = "SUBCALL floor"
"""What the raw floor's POSTs send: answered like a batched sub-call (``batched_script``)."""


def single_call_script(repeats: int) -> Script:
    """One cell times ``repeats`` sequential ``llm_query`` round trips against a 0 ms LM."""
    code = (
        "```repl\nimport time, json\nsamples = []\n"
        f"for i in range({repeats}):\n"
        "    t0 = time.perf_counter()\n    llm_query('SUBCALL ping')\n"
        "    samples.append(time.perf_counter() - t0)\n"
        'answer["content"] = json.dumps(samples)\nanswer["ready"] = True\n```'
    )

    def script(request: RecordedRequest) -> str:
        return "pong" if request.prompt.startswith("SUBCALL") else code

    return script


FANOUT_ROOT = "FANOUT-ROOT"
CHILD_DONE = "child-done"


def fanout_script(children: int, leaf_calls: int, leaf_latency: float) -> Script:
    """Depth 2: the root's one cell runs ``rlm_query_batched`` over ``children`` prompts; each
    child (a full RLM run with its own sandbox) makes ``leaf_calls`` sequential ``llm_query``
    calls of ``leaf_latency`` seconds and answers ``child-done``."""
    root_code = (
        "```repl\nimport time, json\n"
        f'prompts = ["FANOUT-CHILD %d" % i for i in range({children})]\n'
        "t0 = time.perf_counter()\nres = rlm_query_batched(prompts)\n"
        "elapsed = time.perf_counter() - t0\n"
        f'ok = sum(1 for r in res if r.strip() == "{CHILD_DONE}")\n'
        'answer["content"] = json.dumps({"elapsed": elapsed, "ok": ok})\n'
        'answer["ready"] = True\n```'
    )
    child_code = (
        "```repl\n"
        f"for j in range({leaf_calls}):\n"
        "    llm_query('LEAF %d' % j)\n"
        f'answer["content"] = "{CHILD_DONE}"\nanswer["ready"] = True\n```'
    )

    def script(request: RecordedRequest) -> Reply | str:
        if request.prompt.startswith("LEAF"):
            return Reply("leaf", delay=leaf_latency)
        if has_marker(request, FANOUT_ROOT):
            return root_code
        return child_code

    return script


def load_script() -> Script:
    """Every run answers the length of its context in its first cell."""
    return lambda request: LOAD_CODE


def finish_script() -> Script:
    """Every run answers at once (cold start: one iteration, one trivial cell)."""
    return lambda request: FINISH
