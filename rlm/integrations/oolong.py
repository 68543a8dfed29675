"""An OOLONG-style long-context aggregation taskset for ``verifiers``, generated offline.

Each task is a long log of labelled records (``[2024-03-07] user 0412 | label: billing | ...``)
and a question that needs every record to answer: how many records carry one label. Nothing is
downloaded: the records come from a seeded generator, so the same config gives the same tasks.
The reward follows OOLONG's numeric scoring: 1.0 for the exact count, ``0.75 ** |error|``
otherwise, 0.0 without a number.

    vf-eval rlm_oolong    # plugin id of this module (see rlm_oolong); from Python: README

The taskset module also exports the RLM harness, so it is this taskset's default harness.
"""

from __future__ import annotations

import random
import re

from rlm.integrations import require

require("verifiers", "verifiers")

import verifiers.v1 as vf  # noqa: E402
from pydantic import Field  # noqa: E402

from rlm.integrations.verifiers import RLMSandboxHarness, RLMSandboxHarnessConfig  # noqa: E402

__all__ = [
    "OolongData",
    "OolongTask",
    "OolongTaskset",
    "OolongTasksetConfig",
    "RLMSandboxHarness",
    "RLMSandboxHarnessConfig",
    "count_reward",
    "make_record_log",
]

LABELS = ("billing", "shipping", "returns", "account", "technical", "feedback")
WORDS = [
    "order",
    "parcel",
    "refund",
    "invoice",
    "password",
    "login",
    "screen",
    "update",
    "delay",
    "courier",
    "label",
    "charge",
    "address",
    "warranty",
    "app",
    "crash",
    "manual",
    "review",
    "survey",
    "discount",
    "card",
]
_NUMBER = re.compile(r"-?\d+")


class OolongData(vf.TaskData):
    """A task's data: the record log (the long context), the question and the gold count."""

    context: str = ""
    label: str = ""
    answer: int = 0


def make_record_log(rng: random.Random, records: int) -> tuple[str, list[str]]:
    """``records`` labelled log lines, and each line's label."""
    lines, labels = [], []
    for i in range(records):
        label = rng.choice(LABELS)
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        day = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        lines.append(f"[{day}] user {rng.randint(0, 9999):04d} | label: {label} | {words}")
        labels.append(label)
        del i
    return "\n".join(lines), labels


def count_reward(reply: str, gold: int) -> float:
    """OOLONG's numeric score of ``reply`` (the last integer in it) against ``gold``."""
    numbers = _NUMBER.findall(reply or "")
    if not numbers:
        return 0.0
    return 0.75 ** abs(int(numbers[-1]) - gold)


class OolongTask(vf.Task[OolongData, vf.State, vf.TaskConfig]):
    """Scores the RLM's answer (``trace.last_reply``) against the gold count."""

    @vf.reward
    async def count_accuracy(self, task: OolongData, trace: vf.Trace) -> float:
        return count_reward(trace.last_reply, task.answer)

    @vf.metric
    async def context_chars(self, task: OolongData) -> float:
        return float(len(task.context))


class OolongTasksetConfig(vf.TasksetConfig):
    """How many tasks and how long their contexts (``--env.taskset.*``)."""

    id: str = "rlm_oolong"
    num_tasks: int = Field(20, gt=0)
    records: int = Field(2000, gt=0)
    """Records per context (about 90 characters each)."""
    seed: int = 0


class OolongTaskset(vf.Taskset[OolongTask, OolongTasksetConfig]):
    """Seeded, offline OOLONG-style counting tasks over long record logs."""

    def load(self):
        config = self.config
        rng = random.Random(config.seed)
        for index in range(config.num_tasks):
            context, labels = make_record_log(rng, config.records)
            label = rng.choice(LABELS)
            yield OolongTask(
                OolongData(
                    id=f"oolong-{config.seed}-{index}",
                    prompt=(
                        f"The context is a log of {config.records} support records, one per "
                        f"line. How many records have the label '{label}'? Answer with the "
                        "number only."
                    ),
                    context=context,
                    label=label,
                    answer=labels.count(label),
                ),
                config.task,
            )
