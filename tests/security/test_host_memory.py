"""What sandbox code can make the host hold is capped: call-back request bytes in flight (a
refused call comes back to the code as an "Error: ..." string, the run goes on)."""

from __future__ import annotations

import rlm.broker.server as broker_server
import rlm.run as run_module
from rlm.testing import RecordedRequest

MB = 1_000_000


def test_request_bytes_in_flight_are_capped(make_rlm, lm_server, monkeypatch, sandbox):
    monkeypatch.setattr(broker_server, "MAX_BYTES_IN_FLIGHT", 3 * 1024 * 1024)
    lm_server.latency = 1.0

    def script(request: RecordedRequest) -> str:
        if not any(m.get("role") == "system" for m in request.messages):
            return "sub ok"
        if not any(m.get("role") == "assistant" for m in request.messages):
            return (
                "```repl\nresults = llm_query_batched([str(i) * 1_000_000 for i in range(8)])\n"
                "refused = [r for r in results if r.startswith('Error:')]\n"
                "print(len(refused), sum(r == 'sub ok' for r in results))\nprint(refused[0])\n```"
            )
        return '```repl\nanswer["content"] = "done"\nanswer["ready"] = True\n```'

    lm_server.set_script(script)
    result = make_rlm(**sandbox).completion("data")
    assert result.response == "done"
    stdout = result.metadata["iterations"][0]["code_blocks"][0]["result"]["stdout"]
    counts, message = stdout.splitlines()[0], stdout.splitlines()[1]
    refused, answered = map(int, counts.split())
    assert refused + answered == 8
    assert answered <= 3 and refused >= 5  # ~1 MB each under a 3 MiB cap
    assert "limit 3 MiB" in message and "fewer or smaller calls" in message
    sub_requests = [r for r in lm_server.requests if len(r.prompt) >= MB]
    assert len(sub_requests) == answered


def test_the_sub_call_text_a_tree_keeps_is_capped(make_rlm, lm_server, monkeypatch):
    """Sub-call prompts stay in the trajectory (memory, metadata, log) up to a tree-wide cap;
    past it only previews are kept, and the run is unaffected."""
    monkeypatch.setattr(run_module, "TRAJECTORY_TREE_CHARS", 250_000)
    lm_server.set_script(
        lambda r: (
            "sub ok"
            if not any(m.get("role") == "system" for m in r.messages)
            else "```repl\nr = llm_query_batched([str(i) * 100_000 for i in range(6)])\n"
            "answer['content'] = str(r.count('sub ok'))\nanswer['ready'] = True\n```"
        )
    )
    result = make_rlm().completion("data")
    assert result.response == "6"
    calls = result.metadata["iterations"][0]["code_blocks"][0]["result"]["rlm_calls"]
    kept = sorted(len(call["prompt"]) for call in calls)
    assert len(calls) == 6
    assert sum(min(k, 100_000) for k in kept) <= 250_000 + 6 * run_module.PREVIEW_CHARS
    assert kept[0] < 1_000  # the last ones are previews...
    assert (
        "the tree's trajectory text cap is spent"
        in min(calls, key=lambda c: len(c["prompt"]))["prompt"]
    )
    assert kept[-1] == 100_000  # ...the first ones whole
