"""context: answer from the context. `k=3,b=7,x=1;b=` -> `7`.

Three to five key=value pairs, then a key to look up: the answer is only in the prompt,
so the model must read its context window rather than recall training data. Held out by
the whole prompt; exact match. Picking a random value of the prompt scores about 25.
"""

from __future__ import annotations

import random
import string

from experts.tasks.base import Example, GeneratedTask


def _make(rng: random.Random) -> Example:
    keys = rng.sample(string.ascii_lowercase, rng.randint(3, 5))
    values = [rng.choice(string.digits) for _ in keys]
    i = rng.randrange(len(keys))
    pairs = ",".join(f"{k}={v}" for k, v in zip(keys, values, strict=True))
    return Example(f"{pairs};{keys[i]}=", values[i])


RECALL = GeneratedTask(domain="context", metric="exact_match_key_lookup", max_tokens=3, make=_make)
