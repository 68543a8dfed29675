"""RULER-style long-context tasks, generated offline and deterministically from a seed.

Each task is a context (``context``), one question and the gold answers. Sizes are in tokens,
estimated at 4 characters per token (no tokenizer is downloadable here). Inserted facts never
contain a line break, so a reader that splits the context at line breaks never cuts one in two.
"""

from __future__ import annotations

import itertools
import random
import string
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .data import SENTENCE_END, haystack, hotpotqa, squad

CHARS_PER_TOKEN = 4

NIAH_QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
VT_QUESTION = "Find all variables that are assigned the value {value} in the text above."
COUNT_QUESTION = 'How many records have the answer "{answer}"?'
MODE_QUESTION = "Which title appears in the most records?"
VT_NOISE = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)


@dataclass
class Task:
    """One eval item: the context, the question and how to score an answer."""

    name: str
    tokens: int
    context: str
    question: str
    answers: list[str]
    match: str = "contains"
    """``contains``: the answer contains the (first) gold string; ``all``: every gold string;
    ``exact``: equal after normalisation."""
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)


def _word(rng: random.Random) -> str:
    """A random noun from wonderwords' list (RULER's key generator), seeded; letters without it."""
    try:
        from wonderwords import RandomWord

        return RandomWord(rng=rng).word(include_parts_of_speech=["nouns"]).replace(" ", "-")
    except ImportError:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(8))


def _number(rng: random.Random) -> str:
    return str(rng.randint(1_000_000, 9_999_999))


def _insert_at_sentences(text: str, facts: list[str], rng: random.Random) -> str:
    """Insert each fact after a sentence boundary at a random depth, keeping the text's layout."""
    boundaries = [m.end() for m in SENTENCE_END.finditer(text)] or [len(text)]
    positions = sorted(rng.sample(boundaries, min(len(facts), len(boundaries))))
    out, last = [], 0
    for position, fact in zip(positions, facts, strict=False):
        out += [text[last:position], fact, " "]
        last = position
    out.append(text[last:])
    return "".join(out)


def _budget(tokens: int, reserved: int) -> int:
    return max(1_000, tokens * CHARS_PER_TOKEN - reserved)


def niah(tokens: int, seed: int, keys: int = 1) -> Task:
    """S-NIAH: one needle (``keys=1``) or several needles with distinct keys, one of them asked."""
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < keys:
        key = _word(rng)
        if key not in {k for k, _ in pairs}:
            pairs.append((key, _number(rng)))
    needles = [f"One of the special magic numbers for {k} is: {v}." for k, v in pairs]
    text, label = haystack(_budget(tokens, sum(map(len, needles)) + keys), seed)
    context = _insert_at_sentences(text, needles, rng)
    key, value = pairs[rng.randrange(keys)]
    name = "niah_single" if keys == 1 else f"niah_multikey_{keys}"
    return Task(name, tokens, context, NIAH_QUESTION.format(key=key), [value], source=label)


def variable_tracking(tokens: int, seed: int, hops: int = 4, chains: int = 2) -> Task:
    """VT: chains ``VAR A = 12345``, ``VAR B = VAR A`` ... in repeated noise; one chain asked."""
    rng = random.Random(seed)
    names: set[str] = set()

    def fresh() -> str:
        while True:
            name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
            if name not in names:
                names.add(name)
                return name

    statements, chain_names, values = [], [], []
    for _ in range(chains):
        value = str(rng.randint(10_000, 99_999))
        chain = [fresh() for _ in range(hops + 1)]
        statements.append(f"VAR {chain[0]} = {value}.")
        statements += [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(chain)]
        chain_names.append(chain)
        values.append(value)
    chars = _budget(tokens, sum(map(len, statements)) + len(statements))
    noise = (VT_NOISE + "\n") * (chars // (len(VT_NOISE) + 1) + 1)
    # Statements must stay in chain order for the chain to be readable front to back.
    boundaries = [m.end() for m in SENTENCE_END.finditer(noise[:chars])]
    positions = sorted(rng.sample(boundaries, len(statements)))
    out, last = [], 0
    for position, statement in zip(positions, statements, strict=True):
        out += [noise[last:position], statement, " "]
        last = position
    out.append(noise[last:chars])
    asked = rng.randrange(chains)
    return Task(
        "variable_tracking",
        tokens,
        "".join(out),
        VT_QUESTION.format(value=values[asked]),
        chain_names[asked],
        match="all",
        source="generated (RULER's VT noise)",
    )


def _records(tokens: int, rng: random.Random, make: Callable[[int], str]) -> list[str]:
    chars, lines = tokens * CHARS_PER_TOKEN, []
    size = 0
    while size < chars:
        line = make(len(lines) + 1)
        lines.append(line)
        size += len(line) + 1
    return lines


def aggregation_count(tokens: int, seed: int) -> Task:
    """Aggregation over HotpotQA records: how many records have a given answer."""
    rng = random.Random(seed)
    source = hotpotqa()
    answer = "yes"
    chosen: list[tuple[str, str, str]] = []

    def make(i: int) -> str:
        question, gold, kind = rng.choice(source.items)
        chosen.append((question, gold, kind))
        return f"Record {i} | question: {question} | answer: {gold} | type: {kind}"

    lines = _records(tokens, rng, make)
    count = sum(1 for _, gold, _ in chosen if gold == answer)
    return Task(
        "aggregation_count",
        tokens,
        "\n".join(lines),
        COUNT_QUESTION.format(answer=answer),
        [str(count)],
        match="exact",
        source=source.label,
    )


def aggregation_mode(tokens: int, seed: int) -> Task:
    """Aggregation over SQuAD records: the most frequent article title (made unique)."""
    rng = random.Random(seed)
    source = squad()
    titles: list[str] = []

    def make(i: int) -> str:
        title, question = rng.choice(source.items)
        titles.append(title)
        return f"Record {i} | title: {title} | question: {question}"

    lines = _records(tokens, rng, make)
    top = Counter(titles).most_common(2)
    winner = top[0][0]
    if len(top) > 1 and top[0][1] == top[1][1]:  # break a tie so that the gold answer is unique
        lines.append(f"Record {len(lines) + 1} | title: {winner} | question: (tie-breaker)")
    return Task(
        "aggregation_mode",
        tokens,
        "\n".join(lines),
        MODE_QUESTION,
        [winner],
        match="exact",
        source=source.label,
    )


GENERATORS: dict[str, Callable[[int, int], Task]] = {
    "niah_single": lambda tokens, seed: niah(tokens, seed, keys=1),
    "niah_multikey": lambda tokens, seed: niah(tokens, seed, keys=4),
    "variable_tracking": variable_tracking,
    "aggregation_count": aggregation_count,
    "aggregation_mode": aggregation_mode,
}


def generate(names: list[str], sizes: list[int], samples: int, seed: int = 0) -> list[Task]:
    """Every task in ``names`` at every size, ``samples`` items each, reproducible from ``seed``."""
    tasks = []
    for name in names:
        if name not in GENERATORS:
            raise ValueError(f"unknown task {name!r}; choose from {sorted(GENERATORS)}")
        for tokens in sizes:
            for k in range(samples):
                item_seed = zlib.crc32(f"{name}:{tokens}:{k}:{seed}".encode())
                tasks.append(GENERATORS[name](tokens, item_seed))
    return tasks
