"""mathematics: addition of two numbers of 1 to 3 digits, `a+b=` -> the sum.

Held out by the pair (a, b): the eval set asks only sums never seen in training, scored by
exact match. A model that memorised the training pairs scores near zero here.
"""

from __future__ import annotations

import random

from experts.tasks.base import Example, GeneratedTask


def _operand(rng: random.Random) -> int:
    digits = rng.randint(1, 3)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _make(rng: random.Random) -> Example:
    a, b = _operand(rng), _operand(rng)
    return Example(f"{a}+{b}=", str(a + b))


ARITHMETIC = GeneratedTask(
    domain="mathematics", metric="exact_match_unseen_additions", max_tokens=6, make=_make
)
