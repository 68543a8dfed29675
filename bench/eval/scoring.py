"""Scoring answers against gold (RULER's string-match metrics, plus exact match for counts)."""

from __future__ import annotations

import re

from .tasks import Task


def normalise(text: str) -> str:
    """Lower case, punctuation and surrounding space removed, inner space collapsed."""
    text = re.sub(r"[^\w\s-]", " ", text.lower())
    return " ".join(text.split())


def score(task: Task, answer: str) -> float:
    """1.0 or 0.0 (``all``: the fraction of gold strings found, as RULER's string_match_all)."""
    got = normalise(answer)
    gold = [normalise(a) for a in task.answers]
    if task.match == "exact":
        return float(got in gold)
    if task.match == "all":
        return sum(g in got for g in gold) / len(gold)
    return float(any(g in got for g in gold))
