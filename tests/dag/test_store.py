import sqlite3
from pathlib import Path

import pytest

from dag.kinds import balance_of
from dag.store import (
    Store,
    StoreCorrupt,
    StoreMismatch,
    TxRecord,
    TxStatus,
    VertexStatus,
)

DIGEST = b"\x01" * 32


def _commit(store: Store, **kw: object) -> None:
    args: dict[str, object] = {
        "accepted": [],
        "rejected": [],
        "txs": [],
        "amounts": {},
        "nonces": {},
        "waiting_added": [],
        "waiting_removed": [],
    }
    args.update(kw)
    store.commit(**args)  # type: ignore[arg-type]


def test_new_store_is_wal_and_keeps_vertices_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "dag.sqlite"
    store = Store.open(path, DIGEST)
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not store.has_ledger()
    store.put_vertex(b"a" * 32, b"body-a", 5)
    store.put_vertex(b"b" * 32, b"body-b", 6)
    _commit(
        store,
        accepted=[b"a" * 32],
        txs=[TxRecord(b"t" * 32, b"a" * 32, b"acct", 0, TxStatus.APPLIED)],
        amounts={balance_of(b"acct"): 7},
        nonces={b"acct": 1},
        waiting_added=[(b"acct", 3, b"tx-bytes")],
    )
    store.close()
    again = Store.open(path, DIGEST)
    assert again.vertex_status(b"a" * 32) is VertexStatus.ACCEPTED
    assert again.processing_bodies() == [b"body-b"]
    assert again.accepted_ids() == [b"a" * 32] == again.latest_accepted(4)
    assert again.vertex_timestamp(b"b" * 32) == 6
    rows = again.load_ledger()
    assert rows.amounts == {balance_of(b"acct"): 7} and rows.nonces == {b"acct": 1}
    assert rows.waiting == [b"tx-bytes"]
    record = again.tx_record(b"t" * 32)
    assert record is not None and record.status is TxStatus.APPLIED
    assert again.counts() == {"processing": 1, "accepted": 1, "rejected": 0}


def test_a_rejected_instance_never_overwrites_an_accepted_transaction(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", DIGEST)
    applied = TxRecord(b"t" * 32, b"a" * 32, b"acct", 0, TxStatus.APPLIED)
    _commit(store, txs=[applied])
    _commit(store, txs=[TxRecord(b"t" * 32, b"b" * 32, b"acct", 0, TxStatus.REJECTED)])
    assert store.tx_record(b"t" * 32) == applied


def test_a_failing_commit_writes_nothing(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "s", DIGEST)
    store.put_vertex(b"a" * 32, b"body", 1)
    with pytest.raises(sqlite3.Error):
        _commit(store, accepted=[b"a" * 32], nonces={b"acct": "not", b"x": object()})
    assert store.vertex_status(b"a" * 32) is VertexStatus.PROCESSING
    assert store.accepted_ids() == [] and not store.has_ledger()


def test_a_store_of_another_chain_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path / "s", DIGEST).close()
    with pytest.raises(StoreMismatch, match="another chain"):
        Store.open(tmp_path / "s", b"\x02" * 32)


def test_a_damaged_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreCorrupt, match="damaged"):
        Store.open(path, DIGEST)
    assert path.read_bytes() == b"this is not a database" * 100


def test_a_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorrupt, match="not a swarm-node store"):
        Store.open(path, DIGEST)


def test_a_store_with_a_torn_page_fails_its_check(tmp_path: Path) -> None:
    path = tmp_path / "s"
    store = Store.open(path, DIGEST)
    for i in range(300):
        store.put_vertex(i.to_bytes(32, "big"), bytes(200), i)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    data = bytearray(path.read_bytes())
    data[4096 * 3 : 4096 * 3 + 200] = b"\xff" * 200
    path.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt):
        Store.open(path, DIGEST)
