"""Long-context eval harness: RULER-style tasks, an RLM versus the plain base model.

``python -m bench.eval --base-url URL --model NAME --api-key-env VAR`` measures quality with a real
model; ``python -m bench.eval --scripted`` runs against the ScriptedLMServer's oracle model, which
proves the harness's plumbing and nothing about model quality.
"""
