"""Background batches in slices, each run as a call of ours goes out.

The market's batches (the receipts a client checks and keeps, the rows a provider flushes from
its journal) go in slices, each run as a call of ours goes out (`Beat`: a client's request, a
provider's answer), when the other side has the most to do before it needs us. In one go, a
batch held the loop for 1.5 ms, and a call or an answer that came meanwhile waited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

BEAT_WAIT_S = 0.02  # a slice waits this long at most for a call to go out


class Beat:
    """A moment that recurs: called as it comes; `next` waits for the next one (at most
    `BEAT_WAIT_S`, so that the work waiting on it is done when none comes). One waiter."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def __call__(self) -> None:
        self._event.set()

    async def next(self) -> None:
        self._event = event = trio.Event()
        with trio.move_on_after(BEAT_WAIT_S):
            await event.wait()


async def in_slices(
    items: list[Any], size: int, beat: Beat | None, work: Callable[[list[Any]], None]
) -> None:
    """`work` on `items` in slices of `size`, each after the next `beat` (if any). Cancelled
    part-way, it does the rest at once: items taken off a queue are not dropped."""
    for at in range(0, len(items), size):
        if beat is not None:
            try:
                await beat.next()
            except BaseException:  # (cancelled: a node that is stopping)
                work(items[at:])
                raise
        work(items[at : at + size])
