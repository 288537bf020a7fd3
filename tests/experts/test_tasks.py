"""The domain corpora: splits never overlap, scorers judge outputs as documented."""

from __future__ import annotations

import pytest

from experts.tasks import Example, all_tasks
from experts.tasks.code import parses
from experts.tasks.routing import routing_examples
from experts.tasks.tools import valid_call


@pytest.mark.parametrize("domain", ["reasoning", "coding", "mathematics", "tool_use", "context"])
def test_train_and_eval_never_share_a_prompt(domain: str) -> None:
    task = all_tasks()[domain]
    train = {e.prompt for e in task.examples("train", 3000, seed=1)}
    held = task.examples("eval", 300, seed=0)
    assert len(held) == 300
    assert not train & {e.prompt for e in held}
    assert task.examples("eval", 300, seed=0) == held  # same seed, same set


@pytest.mark.parametrize("domain", ["reasoning", "coding", "mathematics", "tool_use", "context"])
def test_reference_answers_score_full_marks(domain: str) -> None:
    task = all_tasks()[domain]
    for ex in task.examples("eval", 50, seed=0):
        assert task.score(ex, ex.answer) == 1.0


def test_language_eval_comes_from_other_modules_than_training() -> None:
    task = all_tasks()["language"]
    held = task.examples("eval", 50, seed=0)
    assert len(held) == 50 and all(30 <= len(e.answer) <= 160 for e in held)


@pytest.mark.parametrize(
    ("output", "valid"),
    [
        ('{"tool":"weather","city":"Oslo"}', True),
        ('{"tool":"convert","amount":3,"from":"USD","to":"EUR"}', True),
        ('{"tool":"convert","amount":"3","from":"USD","to":"EUR"}', False),
        ('{"tool":"weather","city":"Oslo","extra":1}', False),
        ('{"tool":"launch","city":"Oslo"}', False),
        ('{"tool":"weather","city":"Oslo"', False),
        ('["weather"]', False),
    ],
)
def test_valid_tool_call(output: str, valid: bool) -> None:
    assert valid_call(output) is valid


def test_code_score_is_parse_of_signature_plus_completion() -> None:
    task = all_tasks()["coding"]
    ex = Example("def f(a):\n", "    return a\n")
    assert task.score(ex, ex.answer) == 1.0
    assert task.score(ex, "") == 0.0  # a def without a body does not parse
    assert not parses("def f(a):\n    return (a\n")


def test_routing_sets_cover_every_domain_and_do_not_overlap() -> None:
    train = routing_examples("train", 200, seed=1)
    held = routing_examples("eval", 50, seed=0)
    assert {d for _, d in held} == set(all_tasks())
    overlap = {t for t, _ in train} & {t for t, _ in held}
    assert len(overlap) < 0.05 * len(held)  # short template texts can coincide by chance
