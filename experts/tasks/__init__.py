"""The six domains of the zoo: corpora made by code (or read from Python's own stdlib),
held-out eval sets that never meet the training data, and a metric per domain."""

from __future__ import annotations

from collections.abc import Mapping

from experts.tasks.arithmetic import ARITHMETIC
from experts.tasks.base import Example, Split, Task, held_out
from experts.tasks.code import CODE
from experts.tasks.logic import LOGIC
from experts.tasks.prose import Prose
from experts.tasks.recall import RECALL
from experts.tasks.tools import TOOLS


def all_tasks() -> Mapping[str, Task]:
    """One task per domain, keyed by domain, in the manifest's domain order."""
    tasks: tuple[Task, ...] = (LOGIC, CODE, Prose(), ARITHMETIC, TOOLS, RECALL)
    return {t.domain: t for t in tasks}


__all__ = ["Example", "Split", "Task", "all_tasks", "held_out"]
