"""The market's batches in slices, each as a call of ours goes out (`node.slices.in_slices`).

The clock is a mock that stands still: time passes only where a test jumps it, so a deadline
here could never come. Each test is bounded by pytest's timeout instead."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from node.slices import BEAT_WAIT_S, Beat, in_slices


async def test_each_slice_waits_for_the_next_beat_and_a_stop_does_the_rest_at_once(
    mock_clock: trio.testing.MockClock,
) -> None:
    done: list[list[Any]] = []
    beat = Beat()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_slices, list(range(10)), 4, beat, done.append)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # (no call of ours went out yet)
        beat()
        await trio.testing.wait_all_tasks_blocked()
        assert done == [[0, 1, 2, 3]]
        beat()
        beat()  # (two at once are one: each slice waits for a beat after it started)
        await trio.testing.wait_all_tasks_blocked()
        assert done == [[0, 1, 2, 3], [4, 5, 6, 7]]
        nursery.cancel_scope.cancel()  # a node stopping: the rest is not dropped
    assert done == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_with_no_beat_a_slice_goes_after_a_short_wait(
    mock_clock: trio.testing.MockClock,
) -> None:
    done: list[list[Any]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(in_slices, list(range(5)), 2, Beat(), done.append)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        for slices in (1, 2, 3):
            mock_clock.jump(BEAT_WAIT_S)
            await trio.testing.wait_all_tasks_blocked()
            assert len(done) == slices
    assert done == [[0, 1], [2, 3], [4]]
    done.clear()
    await in_slices(list(range(5)), 2, None, done.append)  # (no beat to wait for)
    assert done == [[0, 1], [2, 3], [4]]
