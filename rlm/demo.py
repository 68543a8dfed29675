"""The demo mode of ``rlm run``: what an RLM does, shown on a machine with no key and no network.

The bundled offline model (SmolLM2-135M) cannot write REPL code, so in this mode the root
"model" is a fixed script, labelled as such everywhere it shows (model name, warning line,
trace). Everything else is real: the script's code runs in the real sandbox, explores
``context`` there, fans ``llm_query_batched`` sub-calls out to the real offline model over
chunks of the context, and combines their replies into the answer. With a real model the root
writes code of this kind itself, for the question at hand.
"""

from __future__ import annotations

from typing import Any

from rlm.broker.clients.base import LMClient, LMResponse, LMUsage, Messages

__all__ = [
    "DEMO_BACKEND",
    "DEMO_MODEL",
    "DEMO_NOTICE",
    "MAX_CHUNKS",
    "ScriptedDemoRoot",
    "demo_rlm_kwargs",
    "register",
]

DEMO_BACKEND = "demo"
DEMO_MODEL = "scripted-demo-root"
"""The root's model name in the trace and logs: a script, not a language model."""

MAX_CHUNKS = 4
"""Sub-calls per run: enough to show a fan-out, few enough for under a minute on 2 cores."""

CHUNK_CHARS = 1_500
"""Characters of each chunk the offline model reads (its answers get worse with more)."""

SUB_CALL_MAX_TOKENS = 40

CELL_TIMEOUT = 600.0
"""The fan-out cell waits for every sub-call: a loaded machine runs the small model slowly."""

DEMO_NOTICE = (
    "rlm: demo mode (no API key, no --base-url): the root 'model' is a fixed script, not a "
    "language model; its code runs in the real sandbox and sends sub-calls to the offline "
    "SmolLM2-135M model, whose answers are not to be trusted. For real answers set "
    "OPENAI_API_KEY or give --base-url URL --model NAME."
)


def _steps(question: str) -> list[str]:
    """The replies of the scripted root, one per iteration: explore, fan out, combine."""
    q = repr(question)
    return [
        "[scripted demo root] First look at the context without reading all of it.\n"
        "```repl\n"
        "text = context if isinstance(context, str) else '\\n\\n'.join(map(str, context))\n"
        "print(type(context).__name__, f'{len(text):,} characters,', "
        "len(text.splitlines()), 'lines')\n"
        "print(text[:200])\n"
        "```",
        "[scripted demo root] Split it into chunks and ask the sub-model about each chunk, "
        "all at once.\n"
        "```repl\n"
        f"question = {q}\n"
        f"step = max({CHUNK_CHARS}, -(-len(text) // {MAX_CHUNKS}))\n"
        f"chunks = [text[i:i + {CHUNK_CHARS}] for i in range(0, len(text), step)]\n"
        "prompts = [f'Question: {question}\\nAnswer in one sentence, using only this "
        "excerpt:\\n{chunk}' for chunk in chunks]\n"
        "notes = llm_query_batched(prompts)\n"
        "for i, note in enumerate(notes):\n"
        "    print(f'chunk {i + 1} of {len(chunks)}:', ' '.join(note.split())[:160])\n"
        "```",
        "[scripted demo root] Combine the notes into one answer.\n"
        "```repl\n"
        "summary = llm_query(f'Question: {question}\\nAnswer in two sentences, using these "
        "notes:\\n' + '\\n'.join(notes))\n"
        "answer['content'] = ' '.join(summary.split()) or '\\n'.join(notes)\n"
        "answer['ready'] = True\n"
        "```",
    ]


class ScriptedDemoRoot(LMClient):
    """A root 'model' that replies with a fixed script (``_steps``), one step per iteration."""

    backend = DEMO_BACKEND
    key_env = None

    def __init__(
        self,
        model_name: str = DEMO_MODEL,
        *,
        question: str = "What is this text about?",
        **common: Any,
    ) -> None:
        common.setdefault("price_per_million", (0.0, 0.0))
        common.setdefault("max_retries", 0)
        super().__init__(model_name, **common)
        self.steps = _steps(question)

    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        done = sum(1 for message in messages if message.get("role") == "assistant")
        text = self.steps[min(done, len(self.steps) - 1)]
        return LMResponse(text=text, model=self.model_name, usage=LMUsage(0, 0, 0.0))


def register() -> None:
    """Makes ``backend="demo"`` known to ``create_client``."""
    from rlm.broker.clients import BACKENDS, register_backend

    if DEMO_BACKEND not in BACKENDS:
        register_backend(DEMO_BACKEND, "rlm.demo:ScriptedDemoRoot")


def demo_rlm_kwargs(
    question: str, sub_backend: str = "local", sub_backend_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``RLM(...)`` keyword arguments of the demo: the scripted root and the sub-model (the
    offline model unless ``sub_backend``/``sub_backend_kwargs`` say otherwise)."""
    from rlm.broker.clients.local_llama import DEFAULT_MODEL as LOCAL_MODEL

    register()
    sub_kwargs = sub_backend_kwargs or {"model_name": LOCAL_MODEL}
    return {
        "backend": DEMO_BACKEND,
        "backend_kwargs": {"model_name": DEMO_MODEL, "question": question},
        "other_backends": [sub_backend],
        "other_backend_kwargs": [
            # Greedy: the same context gives the same demo run after run.
            {"sampling": {"max_tokens": SUB_CALL_MAX_TOKENS, "temperature": 0.0}, **sub_kwargs}
        ],
        "environment_kwargs": {"cell_timeout": CELL_TIMEOUT},
        "max_iterations": len(_steps(question)),
    }
