"""Text to a fixed-size vector for the router: hashed character n-grams.

The lower-cased text, padded with a space on each side, is cut into character 1-, 2- and
3-grams and whitespace-separated words; each is hashed (CRC-32, stable across machines
and Python runs, unlike `hash`) into one of `buckets` slots. Counts are log-damped and
the vector scaled to unit length, so long texts and short ones land on the same scale.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

NGRAMS = (1, 2, 3)
MAX_CHARS = 2048  # the router reads the head of a long prompt; that is where intent is


def _slots(text: str, buckets: int) -> list[int]:
    s = f" {text[:MAX_CHARS].lower()} "
    grams = [f"{n}:{s[i : i + n]}" for n in NGRAMS for i in range(len(s) - n + 1)]
    grams += [f"w:{w}" for w in s.split()]
    return [zlib.crc32(g.encode("utf-8")) % buckets for g in grams]


def featurize(texts: Sequence[str], buckets: int) -> npt.NDArray[np.float32]:
    """One unit-length row of `buckets` features per text."""
    out = np.zeros((len(texts), buckets), dtype=np.float32)
    for row, text in enumerate(texts):
        np.add.at(out[row], _slots(text, buckets), 1.0)
    np.log1p(out, out=out)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    out /= np.maximum(norms, np.float32(1e-6))
    return out
