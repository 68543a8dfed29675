"""The two methods under evaluation: an RLM over the context, and the plain base model with the
context in one prompt (truncated to its window, with a note saying so)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from .tasks import CHARS_PER_TOKEN, Task


@dataclass
class Backend:
    """Any OpenAI-compatible endpoint."""

    base_url: str
    model: str
    api_key: str
    window_tokens: int = 128_000
    """The base model's context window; longer prompts are truncated in the middle."""
    price_in: float | None = None
    """USD per million input tokens (None: the provider's reported cost or rlm's price table)."""
    price_out: float | None = None


@dataclass
class Outcome:
    """What one method answered for one task, and what it spent."""

    answer: str
    seconds: float
    calls: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    note: str = ""
    error: str = ""


def cost_of(backend: Backend, input_tokens: int, output_tokens: int) -> float | None:
    """USD from explicit prices, else rlm's price table, else None (unknown)."""
    prices: tuple[float, float] | None
    if backend.price_in is not None or backend.price_out is not None:
        prices = (backend.price_in or 0.0, backend.price_out or 0.0)
    else:
        from rlm.broker.pricing import price_for

        prices = price_for(backend.model)
    if prices is None:
        return None
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1_000_000


BASE_TEMPLATE = "{context}\n\nQuestion: {question}\nAnswer with the answer only."


def truncate_middle(text: str, max_chars: int) -> tuple[str, bool]:
    """Keep the head and the tail of ``text`` within ``max_chars`` (RULER-style truncation)."""
    if len(text) <= max_chars:
        return text, False
    marker = f"\n[... {len(text) - max_chars:,} characters omitted ...]\n"
    keep = max(0, max_chars - len(marker))
    return text[: keep // 2] + marker + text[len(text) - (keep - keep // 2) :], True


def run_base(task: Task, backend: Backend) -> Outcome:
    """One chat completion with the whole (possibly truncated) context and the question."""
    import openai

    reserve = 1_000  # tokens for the question, the template and the answer
    max_chars = max(0, (backend.window_tokens - reserve) * CHARS_PER_TOKEN)
    context, truncated = truncate_middle(task.context, max_chars)
    prompt = BASE_TEMPLATE.format(context=context, question=task.question)
    client = openai.OpenAI(base_url=backend.base_url, api_key=backend.api_key, max_retries=2)
    started = time.perf_counter()
    try:
        reply = client.chat.completions.create(
            model=backend.model, messages=[{"role": "user", "content": prompt}], max_tokens=256
        )
    except openai.OpenAIError as error:
        return Outcome("", time.perf_counter() - started, 1, 0, 0, None, error=str(error)[:300])
    finally:
        client.close()
    usage = reply.usage
    tokens_in = usage.prompt_tokens if usage else 0
    tokens_out = usage.completion_tokens if usage else 0
    note = (
        f"context truncated to {backend.window_tokens:,} tokens (middle dropped)"
        if truncated
        else ""
    )
    return Outcome(
        reply.choices[0].message.content or "",
        time.perf_counter() - started,
        1,
        tokens_in,
        tokens_out,
        cost_of(backend, tokens_in, tokens_out),
        note,
    )


def run_rlm(task: Task, backend: Backend, environment: str, max_iterations: int) -> Outcome:
    """An RLM with the context in its REPL and the question as the root prompt."""
    from rlm import RLM

    started = time.perf_counter()
    try:
        with RLM(
            backend="openai",
            backend_kwargs={
                "model_name": backend.model,
                "base_url": backend.base_url,
                "api_key": backend.api_key,
            },
            environment=environment,
            max_iterations=max_iterations,
        ) as rlm:
            result = rlm.completion(task.context, root_prompt=task.question)
    except Exception as error:  # a failed run scores 0; the table says why
        return Outcome(
            "",
            time.perf_counter() - started,
            0,
            0,
            0,
            None,
            error=f"{type(error).__name__}: {str(error)[:300]}",
        )
    usage = result.usage_summary
    tokens_in, tokens_out = usage.total_input_tokens, usage.total_output_tokens
    cost = usage.total_cost
    if backend.price_in is not None or backend.price_out is not None or cost is None:
        cost = cost_of(backend, tokens_in, tokens_out)
    return Outcome(
        result.response,
        time.perf_counter() - started,
        usage.total_calls,
        tokens_in,
        tokens_out,
        cost,
    )
