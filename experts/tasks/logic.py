"""reasoning: order inference over a chain. `b<e,h>e;b?h=` -> `<`, `>` or `?` (undetermined).

Two or three facts relate a chain of letters, each fact written in either direction, the
facts shuffled; the question asks how the two ends compare. The answer follows only when
every link points the same way, so the model has to find the chain and compose it, not
pattern-match. Half the chains are consistent. Held out by the set of letters; exact
match. Always answering `?` scores 50.
"""

from __future__ import annotations

import random

from experts.tasks.base import Example, GeneratedTask

LETTERS = "abcdefghij"
_FLIP = {"<": ">", ">": "<"}


def _fact(rng: random.Random, x: str, rel: str, y: str) -> str:
    return f"{x}{rel}{y}" if rng.random() < 0.5 else f"{y}{_FLIP[rel]}{x}"


def _make(rng: random.Random) -> Example:
    chain = rng.sample(LETTERS, rng.randint(3, 4))
    if rng.random() < 0.5:
        rels = [rng.choice("<>")] * (len(chain) - 1)
    else:  # mixed directions: at least one link differs
        rels = [rng.choice("<>") for _ in chain[1:]]
        if len(set(rels)) == 1:
            rels[rng.randrange(len(rels))] = _FLIP[rels[0]]
    facts = [_fact(rng, a, rel, b) for a, rel, b in zip(chain, rels, chain[1:], strict=False)]
    rng.shuffle(facts)
    first, last = chain[0], chain[-1]
    answer = rels[0] if len(set(rels)) == 1 else "?"
    if rng.random() < 0.5:
        first, last = last, first
        answer = _FLIP.get(answer, answer)
    return Example(f"{','.join(facts)};{first}?{last}=", answer)


def _letters(ex: Example) -> str:
    return "".join(sorted({c for c in ex.prompt if c in LETTERS}))


LOGIC = GeneratedTask(
    domain="reasoning",
    metric="exact_match_unseen_letter_sets",
    max_tokens=3,
    make=_make,
    key_of=_letters,
)
