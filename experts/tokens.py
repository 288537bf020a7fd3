"""The one way tokens are counted, by both peers of a call: this is what the market bills.

A token is one byte of the UTF-8 encoding of the text. `tokens_in` of a call is
`count_tokens(prompt)` (the whole prompt, even the part older than the model's context
window), and `tokens_out` is `count_tokens(text)` of the generated text; the end-of-text
token a generator emits to stop is not text and is not billed. Generators only emit
printable ASCII, tab and newline, so the generated text round-trips exactly and the client
can recount it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# Bytes a generator may emit: tab, newline and printable ASCII.
EMITTABLE = (9, 10, *range(32, 127))


def count_tokens(text: str) -> int:
    """Billable tokens of a text: its UTF-8 length in bytes."""
    return len(text.encode("utf-8"))


def encode(text: str) -> npt.NDArray[np.int64]:
    """Token ids of a text (its UTF-8 bytes)."""
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


def decode(tokens: list[int]) -> str:
    """Text of emitted token ids; only EMITTABLE bytes are ever emitted, so this is exact."""
    return bytes(tokens).decode("ascii")
