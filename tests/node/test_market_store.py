"""market.sqlite: checkpoints off the call path, and a damaged file refused untouched."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from dag.codec import encode
from node.market_store import _SELECT, ChannelRow, MarketStore, MarketStoreError
from protocols import market_wire as mw
from tests.factory import kill_store

CHANNEL = bytes(range(32))


def mw_body(receipt: mw.Receipt) -> bytes:
    return encode(receipt.evidence())


def journaled(path: Path) -> bool:
    """Whether the store's journal holds anything (past its records, it is zeros)."""
    return bool(path.with_name(path.name + ".served").read_bytes().strip(b"\0"))


def receipt(seq: int) -> mw.Receipt:
    return mw.Receipt(CHANNEL, seq, "e" * 64, b"r" * 16, b"o" * 16, 1, 1, 10, 20, 20 * seq)


def test_a_charge_is_kept_until_its_receipt_replaces_it_across_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite"
    r = receipt(1)
    now = int(time.time() * 1000)
    charge = (CHANNEL, 1, "peer", b"c" * 32, r.expert, r.tokens_in, r.tokens_out)
    counts = (r.price_per_1k, r.cost_milli)

    def bodies(store: MarketStore) -> list[tuple[int, int]]:
        store.flush()
        rows = store._conn.execute("SELECT seq, length(body) FROM receipts ORDER BY seq")
        return rows.fetchall()

    store = MarketStore.open(path)
    store.record_charge(*charge, *counts, r.charged_milli, now, b"iou")
    store.record_charge(CHANNEL, 2, *charge[2:], *counts, 40, now, None)
    store.record_served("peer", b"c" * 32, receipt(1), b"iou")  # made after the answer
    # A kill -9 now: the journal holds both charges and the one receipt, in that order.
    kill_store(store)
    again = MarketStore.open(path)
    assert bodies(again) == [(1, len(mw_body(receipt(1)))), (2, 0)]  # seq 2's never made
    columns = "peer, counterpart, expert, tokens_in, tokens_out, price, cost_milli, charged_milli"
    kept = again._conn.execute(f"SELECT {columns}, at_ms, iou FROM receipts WHERE seq = 2")
    assert kept.fetchone() == (*charge[2:], *counts, 40, now, None)
    assert again.tokens_today("provider") == 4  # both charges count
    again.record_served("peer", b"c" * 32, receipt(2), None)
    assert bodies(again) == [(1, len(mw_body(receipt(1)))), (2, len(mw_body(receipt(2))))]
    again.close()


def test_answers_never_checkpoint_and_the_keepers_checkpoint_keeps_everything(
    tmp_path: Path,
) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    for seq in range(1, 2_001):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
        store.flush()  # the market's flusher: here as often as it can be
    wal = path.with_name("market.sqlite-wal")
    # SQLite's own threshold is 1,000 pages: with it the log would have been reset by now.
    assert wal.stat().st_size > 4 * 1_000 * 4096
    assert store.checkpoint() > 1_000
    store.record_served("peer", b"c" * 32, receipt(2_001), b"iou")
    store.flush()
    assert 0 < store.checkpoint() < 10  # the log started over: one answer's pages
    store.close()
    again = MarketStore.open(path)
    assert len(again.receipts("provider", limit=10_000)) == 2_001
    again.close()


def test_an_answer_is_kept_by_its_journal_until_flushed(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    flushes = []
    store.on_served = lambda: flushes.append(1)
    for seq in (1, 2):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou%d" % seq)
    assert flushes == [1]  # once per batch: the flusher is already on its way
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (0,)  # not written
    # A kill -9 now: the next store finds both answers in the journal, with their IOUs.
    kill_store(store)
    again = MarketStore.open(path)
    assert [r["seq"] for r in again.receipts("provider")] == [2, 1]
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (2,)
    assert not journaled(path)
    # Reads of the store that journaled see its rows (they are flushed first).
    again.record_served("peer", b"c" * 32, receipt(3), b"iou3")
    assert again.tokens_today("provider") == 6
    conn.close()
    again.close()


def test_a_flush_in_slices_is_one_transaction_and_clears_the_journal_at_its_end(
    tmp_path: Path,
) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    conn = sqlite3.connect(path)  # (another reader: it sees what is committed)

    def written() -> list[int]:
        return [seq for (seq,) in conn.execute("SELECT seq FROM receipts ORDER BY seq")]

    for seq in (1, 2, 3):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
    assert store.flush(2) and written() == [] and journaled(path)  # (not committed yet)
    store.record_served("peer", b"c" * 32, receipt(4), b"iou")  # (journaled between slices)
    assert not store.flush(2) and written() == [1, 2, 3, 4] and not journaled(path)
    for seq in (5, 6, 7):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
    assert store.flush(2) and written() == [1, 2, 3, 4]
    # A read of the store's own ends the batch first (so does each write of its own).
    assert [r["seq"] for r in store.receipts("provider")] == [7, 6, 5, 4, 3, 2, 1]
    assert written() == [1, 2, 3, 4, 5, 6, 7] and not journaled(path)
    for seq in (8, 9, 10):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
    assert store.flush(2)
    # A kill -9 part-way: the open transaction is rolled back, and the journal, which holds
    # every row since it was cleared, replays them.
    kill_store(store)
    again = MarketStore.open(path)
    assert written() == list(range(1, 11)) and not journaled(path)
    assert not again.flush(2)  # (nothing left)
    conn.close()
    again.close()


DAMAGED_CHARGES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "no sizes": (lambda record: record[:1], "a charge cut short"),
    "expert cut short": (lambda record: record[:-1], "a charge cut short"),
    "expert not text": (lambda record: record[:-1] + b"\xff", "not UTF-8"),
}


@pytest.mark.parametrize("damage", DAMAGED_CHARGES)
def test_a_charge_record_that_does_not_parse_is_refused(tmp_path: Path, damage: str) -> None:
    # Whole records (their checks pass) whose contents are wrong: no row is made of them.
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    store.record_charge(CHANNEL, 1, "peer", b"c" * 32, "e" * 64, 1, 1, 10, 20, 20, 1, None)
    record = store._served[0]
    assert isinstance(record, bytes)
    damaged, why = DAMAGED_CHARGES[damage]
    store._journal.clear()
    store._journal.append(damaged(record))
    kill_store(store)
    with pytest.raises(MarketStoreError, match=why):
        MarketStore.open(path)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (0,)
    conn.close()


def test_a_damaged_journal_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    for seq in (1, 2):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
    kill_store(store)
    journal = path.with_name("market.sqlite.served")
    data = bytearray(journal.read_bytes())
    data[20] ^= 0xFF  # inside the first of two records
    journal.write_bytes(bytes(data))
    with pytest.raises(MarketStoreError, match="damaged at byte 0"):
        MarketStore.open(path)
    assert journal.read_bytes() == bytes(data)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (0,)
    conn.close()


def test_a_damaged_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(MarketStoreError, match="market store"):
        MarketStore.open(path)
    assert path.read_bytes() == b"not a database" * 100


def test_a_channels_totals_are_read_without_scanning_its_receipts(tmp_path: Path) -> None:
    # The keeper reads every active channel each second: a channel of a million receipts must
    # cost it what a channel of ten does. Counted in SQLite's VM steps, not in time.
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    row = ChannelRow(
        CHANNEL, "provider", "peer", b"c" * 32, b"tx", 5, 2**40, 0, 0, None, None, "open", None
    )
    store.put_channel(row)
    conn = sqlite3.connect(path)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    cost = {}
    for total in (10, 5_000):
        for seq in range(len(store.receipts("provider", limit=10_000)) + 1, total + 1):
            store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
        store.flush()
        steps = 0
        (found,) = conn.execute(f"{_SELECT} WHERE id = ?", (CHANNEL,)).fetchall()
        assert found[7] == 20 * total  # the channel's total: its newest receipt's
        cost[total] = steps
    assert cost[5_000] < 2 * cost[10], cost
    conn.close()
    store.close()


def test_a_store_from_before_the_provider_only_index_is_upgraded_as_it_opens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    store.put_channel(
        ChannelRow(
            CHANNEL, "provider", "peer", b"c" * 32, b"tx", 5, 2**40, 0, 0, None, None, "open", None
        )
    )
    for seq in (1, 2, 3):
        store.record_served("peer", b"c" * 32, receipt(seq), b"iou")
    store.close()
    with closing(sqlite3.connect(path)) as conn:  # the index as it was: every row in it
        conn.execute("DROP INDEX receipts_provider_total")
        conn.execute("CREATE INDEX receipts_total ON receipts (channel, charged_milli)")
        conn.commit()
    store = MarketStore.open(path)
    with closing(sqlite3.connect(path)) as conn:
        indexes = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    assert "receipts_total" not in indexes
    assert "WHERE role = 'provider'" in indexes["receipts_provider_total"]
    row = store.channel(CHANNEL)
    assert row is not None and (row.charged_milli, row.seq) == (60, 3)
    store.close()


def test_a_clients_batch_of_receipts_leaves_each_channel_its_largest_total_and_seq(
    tmp_path: Path,
) -> None:
    store = MarketStore.open(tmp_path / "market.sqlite")
    other = bytes(32)
    for cid in (CHANNEL, other):
        store.put_channel(
            ChannelRow(
                cid, "client", "peer", b"c" * 32, b"tx", 5, 2**40, 0, 0, None, b"k", "open", None
            )
        )
    # Out of order, as answers of concurrent calls are counted; totals are ours.
    batch = [receipt(3), receipt(1), replace(receipt(2), channel_id=other), receipt(2)]
    totals = [60, 20, 40, 40]
    store.record_many([("peer", b"c" * 32, r, t, "") for r, t in zip(batch, totals, strict=True)])
    kept = {cid: store.channel(cid) for cid in (CHANNEL, other)}
    assert {cid: (row.charged_milli, row.seq) for cid, row in kept.items() if row} == {
        CHANNEL: (60, 3),
        other: (40, 2),
    }
    # A later batch with lower totals moves nothing back.
    store.record_many([("peer", b"c" * 32, receipt(4), 50, "")])
    row = store.channel(CHANNEL)
    assert row is not None and (row.charged_milli, row.seq) == (60, 4)
    assert len(store.receipts("client")) == 5
    store.close()


def test_days_are_told_by_the_nodes_clock(tmp_path: Path) -> None:
    now = [5 * 86_400_000 + 3_600_000]  # an hour into day 5, by the node's clock
    store = MarketStore.open(tmp_path / "market.sqlite", now_ms=lambda: now[0])
    store.record_served("peer", b"c" * 32, receipt(1), b"iou")
    assert store.tokens_today("provider") == 2
    (day,) = store.usage(days=10_000)
    assert day["day"] == "1970-01-06"
    now[0] += 86_400_000  # the next day: the day limits start again
    assert store.tokens_today("provider") == 0
    store.close()


class _FullDisk:
    """A connection whose writes fail as on a full disk (reads pass through)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def executemany(self, *args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_flush_that_cannot_write_keeps_the_rows_for_the_next(tmp_path: Path) -> None:
    path = tmp_path / "market.sqlite"
    store = MarketStore.open(path)
    store.record_served("peer", b"c" * 32, receipt(1), b"iou")
    conn = store._conn
    store._conn = _FullDisk(conn)  # type: ignore[assignment]
    with pytest.raises(MarketStoreError, match="disk is full"):
        store.flush()
    assert not conn.in_transaction  # rolled back
    assert journaled(path)  # still journaled
    store._conn = conn
    store.flush()
    assert [r["seq"] for r in store.receipts("provider")] == [1]
    assert not journaled(path)
    store.close()
