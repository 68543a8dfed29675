"""The demo's scripted root (rlm/demo.py) in a real sandbox, with the scripted LM server as the
sub-model so that it runs without the offline model: its code must work on any context and
reach an answer through sub-calls."""

from __future__ import annotations

import pytest

from rlm import RLM
from rlm.demo import DEMO_MODEL, MAX_CHUNKS, demo_rlm_kwargs


@pytest.mark.parametrize(
    "context",
    ["word " * 5_000, ["first file " * 100, "second file " * 100], "short"],
    ids=["long text", "list of files", "short text"],
)
def test_the_scripted_root_fans_out_and_answers(lm_server, context):
    lm_server.set_script(lambda request: "a note about the text")
    sub = {"model_name": "sub", "base_url": lm_server.base_url, "api_key": "k"}
    kwargs = demo_rlm_kwargs("What is it?", sub_backend="openai", sub_backend_kwargs=sub)
    with RLM(**kwargs) as rlm:
        result = rlm.completion(context, root_prompt="What is it?")
    assert result.metadata["finished_by"] == "answer"
    assert result.response == "a note about the text"
    assert result.root_model == DEMO_MODEL
    prompts = [r.messages[-1]["content"] for r in lm_server.requests]
    chunk_calls = [p for p in prompts if "using only this excerpt" in p]
    assert 1 <= len(chunk_calls) <= MAX_CHUNKS
    assert all(p.startswith("Question: What is it?") for p in prompts)
    assert len(prompts) == len(chunk_calls) + 1  # then one call combines the notes
    assert all(r.body.get("max_tokens") for r in lm_server.requests)
