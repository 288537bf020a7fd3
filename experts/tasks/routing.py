"""The routing corpus: texts labelled with the domain that should answer them.

Half are prompts in each zoo expert's own format (from its task's split), half are
requests in words from templates, with fillers (names, words, numbers) drawn so that the
eval split only holds fillers never seen in training. The phrasings themselves are shared
by both splits: the held-out set measures new content, not new ways of asking.
"""

from __future__ import annotations

import random
import string
from collections.abc import Mapping

from experts.tasks.base import Split, held_out, rng_for
from experts.tasks.code import NOUNS, VERBS
from experts.tasks.tools import CITIES, WORDS

TEMPLATES: Mapping[str, tuple[str, ...]] = {
    "reasoning": (
        "if {A} is taller than {B} and {B} is taller than {C}, who is tallest?",
        "all {w}s are {v}s and {A} is a {w}; is {A} a {v}?",
        "what follows from: {A} implies {B}, and {B} implies {C}?",
        "solve this logic puzzle about {A}, {B} and {C}",
        "which is larger, {A} or {C}, given {A} > {B} > {C}?",
        "deduce the order of {A}, {B} and {C}",
        "can we conclude that {A} came before {C}?",
        "is the argument valid: no {w} is a {v}, so no {v} is a {w}",
    ),
    "coding": (
        "write a python function that can {verb} the {noun}",
        "fix this bug: {verb}_{noun}({a}) raises TypeError",
        "how do I {verb} a list in python?",
        "refactor the function {verb}_{noun}",
        "implement {verb}_{noun} in python",
        "for {a} in range({n}): print({a})",
        "what does `return {a} + {b}` do in python?",
        "write a unit test for {verb}_{noun}",
    ),
    "language": (
        "continue this sentence: the {w} was",
        "rephrase this: the {w} near the {v} is old",
        "write a sentence about the {w}",
        "describe a {w} in plain english",
        "check the spelling of '{w}'",
        "what is a synonym for {w}?",
        "correct the grammar: he go to the {w} yesterday",
        "translate 'the {w} is {v}' into french",
    ),
    "mathematics": (
        "what is {n} plus {m}?",
        "add {n} and {m}",
        "compute {n} + {m}",
        "sum of {n} and {m}",
        "{n} + {m} = ?",
        "calculate {n} times {m}",
        "how much is {n} minus {m}?",
        "what is the square root of {n}?",
    ),
    "tool_use": (
        "book a table in {city} for {n} people",
        "send an email to {A} about the {w}",
        "set a timer for {n} minutes",
        "call the {w} api for {city}",
        "remind me to buy {w} at {n}",
        "look up the stock price of {A}",
        "search the web for {w} in {city}",
        "turn off the lights in the {w} room",
    ),
    "context": (
        "given the notes above, what is {a}?",
        "according to the text, what is the value of {a}?",
        "in the document: {a}={n}, {b}={m}. what is {a}?",
        "from the context, find {a}",
        "recall the {w} mentioned earlier",
        "the passage says {a} is {n}; what is {a}?",
        "look back at what I said: where is the {w}?",
        "based on the previous message, who is {A}?",
    ),
}
NAMES = [
    "Alice",
    "Bob",
    "Carol",
    "Dave",
    "Erin",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Niaj",
    "Olivia",
    "Peggy",
    "Rupert",
    "Sybil",
    "Trent",
    "Victor",
    "Walter",
    "Yvonne",
    "Zoe",
]


def _pick(rng: random.Random, pool: tuple[str, ...] | list[str], split: Split) -> str:
    side = [x for x in pool if held_out(x) == (split == "eval")]
    return rng.choice(side or list(pool))


def _fill(rng: random.Random, template: str, split: Split) -> str:
    words = list(WORDS) + list(NOUNS)
    names = rng.sample([n for n in NAMES if held_out(n) == (split == "eval")] or NAMES, 1)
    a, b = rng.sample(string.ascii_lowercase, 2)
    return template.format(
        A=names[0],
        B=_pick(rng, NAMES, split),
        C=_pick(rng, NAMES, split),
        w=_pick(rng, words, split),
        v=_pick(rng, words, split),
        verb=rng.choice(VERBS),
        noun=_pick(rng, NOUNS, split),
        city=_pick(rng, CITIES, split),
        a=a,
        b=b,
        n=rng.randint(2, 999),
        m=rng.randint(2, 999),
    )


def routing_examples(split: Split, n_per_domain: int, seed: int) -> list[tuple[str, str]]:
    """`(text, domain)` pairs, `n_per_domain` of each domain, half task prompts."""
    from experts.tasks import all_tasks  # the registry imports this module's siblings

    rng = rng_for("routing", split, seed)
    out: list[tuple[str, str]] = []
    for domain, task in all_tasks().items():
        for ex in task.examples(split, n_per_domain // 2, seed):
            # A language example is a sentence with no prompt: route on its first words.
            text = ex.prompt or " ".join(ex.answer.split()[: rng.randint(3, 8)])
            out.append((text, domain))
        for _ in range(n_per_domain - n_per_domain // 2):
            out.append((_fill(rng, rng.choice(TEMPLATES[domain]), split), domain))
    rng.shuffle(out)
    return out
