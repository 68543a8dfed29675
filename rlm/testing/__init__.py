"""Test helpers shipped with rlm: a scripted OpenAI/Anthropic/Gemini-compatible LM server, and an
in-process scripted environment for fast tests of code built on the RLM loop. The environment
contract suite for adapters is :mod:`rlm.testing.contract` (it needs pytest, so it is not imported
here); the cloud providers' stand-ins are not part of rlm (``standins/``, ``rlm-standins``)."""

from rlm.testing.lm_server import RecordedRequest, Reply, Script, ScriptedLMServer, estimate_tokens
from rlm.testing.scripted_environment import Cell, ScriptedEnvironment

__all__ = [
    "Cell",
    "RecordedRequest",
    "Reply",
    "Script",
    "ScriptedEnvironment",
    "ScriptedLMServer",
    "estimate_tokens",
]
