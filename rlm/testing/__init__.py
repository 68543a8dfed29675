"""Test helpers shipped with rlm: a scripted OpenAI/Anthropic/Gemini-compatible LM server."""

from rlm.testing.lm_server import RecordedRequest, Reply, Script, ScriptedLMServer, estimate_tokens

__all__ = ["RecordedRequest", "Reply", "Script", "ScriptedLMServer", "estimate_tokens"]
