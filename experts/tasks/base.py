"""What a domain task is: prompts with reference answers, split into train and eval sets
that never overlap, and a scorer that says whether an output is right for its domain.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Split = Literal["train", "eval"]


@dataclass(frozen=True)
class Example:
    """A prompt and the completion a perfect expert would generate."""

    prompt: str
    answer: str


class Task(Protocol):
    """A domain: its corpus, its held-out set and its metric."""

    @property
    def domain(self) -> str: ...

    @property
    def metric(self) -> str: ...

    @property
    def max_tokens(self) -> int:
        """Tokens a generation may take in the evaluation; enough for every answer."""
        ...

    @property
    def teacher_forced(self) -> bool:
        """True: score next-token accuracy on the answer given the prompt (language
        modelling); False: generate greedily from the prompt and score the output."""
        ...

    def examples(self, split: Split, n: int, seed: int) -> list[Example]:
        """`n` examples of `split`, the same for the same seed."""
        ...

    def score(self, example: Example, output: str) -> float:
        """1.0 when `output` is right for `example` in this domain's sense, else 0.0."""
        ...


def held_out(key: str) -> bool:
    """Whether an item belongs to the eval split: a fifth of keys, chosen by hash so the
    split is the same on every machine and no eval key ever reaches training."""
    return hashlib.blake2b(key.encode(), digest_size=8).digest()[0] % 5 == 0


def rng_for(domain: str, split: Split, seed: int) -> random.Random:
    """A private stream per (domain, split, seed); string seeds hash the same everywhere."""
    return random.Random(f"{domain}/{split}/{seed}")


Maker = Callable[[random.Random], Example]
KeyOf = Callable[[Example], str]
Scorer = Callable[[Example, str], float]


def collect(
    make: Maker, split: Split, n: int, seed: int, domain: str, key_of: KeyOf
) -> list[Example]:
    """Draw examples until `n` of them fall on the requested side of the split."""
    rng = rng_for(domain, split, seed)
    out: list[Example] = []
    want_eval = split == "eval"
    while len(out) < n:
        ex = make(rng)
        if held_out(key_of(ex)) == want_eval:
            out.append(ex)
    return out


def exact(example: Example, output: str) -> float:
    """1.0 when the output is the reference answer, character for character."""
    return 1.0 if output == example.answer else 0.0


def by_prompt(example: Example) -> str:
    return example.prompt


@dataclass(frozen=True)
class GeneratedTask:
    """A task whose examples come from a seeded generator function, split by `key_of`."""

    domain: str
    metric: str
    max_tokens: int
    make: Maker
    scorer: Scorer = exact
    key_of: KeyOf = by_prompt
    teacher_forced: bool = False

    def examples(self, split: Split, n: int, seed: int) -> list[Example]:
        return collect(self.make, split, n, seed, self.domain, self.key_of)

    def score(self, example: Example, output: str) -> float:
        return self.scorer(example, output)
