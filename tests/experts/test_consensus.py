"""The consensus rule, a pure function of the answers (the network layer reuses it)."""

from __future__ import annotations

import pytest

from experts import Answer, ExpertInputError, combine


def test_two_agreeing_lighter_experts_outvote_one_heavier() -> None:
    answers = [
        Answer("aaa", "mathematics", 0.45, "42", tokens_in=3, tokens_out=2),
        Answer("bbb", "reasoning", 0.30, " 41 ", tokens_in=3, tokens_out=4),
        Answer("ccc", "context", 0.25, "41", tokens_in=3, tokens_out=2),
    ]
    result = combine(answers)
    assert result.text == " 41 "  # the heaviest member's own text
    assert result.expert_id == "bbb"
    assert result.supporters == ("bbb", "ccc")
    assert result.agreement == pytest.approx(0.55)
    assert (result.tokens_in, result.tokens_out) == (9, 8)


def test_all_different_answers_pick_the_heaviest() -> None:
    answers = [Answer(f"e{i}", "coding", w, f"t{i}") for i, w in enumerate((0.2, 0.5, 0.3))]
    result = combine(answers)
    assert (result.text, result.agreement) == ("t1", pytest.approx(0.5))  # type: ignore[comparison-overlap]


def test_ties_are_broken_the_same_way_in_any_order() -> None:
    answers = [Answer("zz", "coding", 0.5, "x"), Answer("aa", "language", 0.5, "y")]
    assert combine(answers).text == combine(answers[::-1]).text == "y"


def test_no_answer_is_an_error() -> None:
    with pytest.raises(ExpertInputError):
        combine([])
