"""market.sqlite: checkpoints off the call path, and a damaged file refused untouched."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.market_store import MarketStore, MarketStoreError
from protocols import market_wire as mw

CHANNEL = bytes(range(32))


def receipt(seq: int) -> mw.Receipt:
    return mw.Receipt(CHANNEL, seq, "e" * 64, b"r" * 32, b"o" * 32, 1, 1, 10, 20, 20 * seq, b"s")


def test_answers_never_checkpoint_and_the_keepers_checkpoint_keeps_everything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    for seq in range(1, 2_001):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
    wal = path.with_name("market.sqlite-wal")
    # SQLite's own threshold is 1,000 pages: with it the log would have been reset by now.
    assert wal.stat().st_size > 4 * 1_000 * 4096
    assert store.checkpoint() > 1_000
    store.record_served("peer", b"c" * 32, receipt(2_001), b"iou")
    assert 0 < store.checkpoint() < 10  # the log started over: one answer's pages
    store.close()
    again = MarketStore.open(path)
    assert len(again.receipts("provider", limit=10_000)) == 2_001
    again.close()


def test_a_damaged_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(MarketStoreError, match="market store"):
        MarketStore.open(path)
    assert path.read_bytes() == b"not a database" * 100
