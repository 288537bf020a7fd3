"""The node's durable DAG: SQLite (stdlib `sqlite3`) in WAL mode, with a synchronous API.

Every call blocks on disk, so the network layer runs them with `trio.to_thread.run_sync`
from one task at a time (the connection is opened with `check_same_thread=False` for that,
and is not shared between threads concurrently).

What is kept: every valid vertex received (its canonical bytes and status: processing,
accepted or rejected), the order in which this node accepted vertices, each transaction's
status, and the ledger state (amounts per bucket, next nonces, accepted transactions still
waiting, extra conflict keys claimed). `commit` writes one batch of decisions and the ledger
changes they caused in a single SQLite transaction, and the engine reports nothing before it
returns: what was reported accepted survives a kill -9 (WAL with synchronous=NORMAL is durable
against a process crash; pass `durable=True` for synchronous=FULL against power loss too).

On open the file is checked (`PRAGMA quick_check`, schema version, genesis digest); a
damaged or foreign file raises `StoreCorrupt` or `StoreMismatch` and is never replaced.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

from dag.errors import SwarmError
from dag.kinds import Bucket

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE vertices (
    id BLOB PRIMARY KEY, body BLOB NOT NULL, timestamp_ms INTEGER NOT NULL,
    status INTEGER NOT NULL, accepted_seq INTEGER UNIQUE);
CREATE TABLE txs (
    id BLOB PRIMARY KEY, vertex BLOB NOT NULL, account BLOB NOT NULL, nonce INTEGER NOT NULL,
    status INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE amounts (locked INTEGER NOT NULL, key BLOB NOT NULL, amount INTEGER NOT NULL,
    PRIMARY KEY (locked, key));
CREATE TABLE nonces (account BLOB PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE waiting (account BLOB NOT NULL, nonce INTEGER NOT NULL, tx BLOB NOT NULL,
    PRIMARY KEY (account, nonce));
CREATE TABLE claimed (key BLOB PRIMARY KEY);
"""
# What each older schema lacks. Version 1 had no channel kinds, hence nothing claimed.
_MIGRATIONS = {1: "CREATE TABLE claimed (key BLOB PRIMARY KEY);"}


class StoreError(SwarmError):
    """The store cannot be used; the message says why and names the file."""


class StoreCorrupt(StoreError):
    """The file is not a sound swarm-node store. It is left as it is for inspection."""


class StoreMismatch(StoreError):
    """The file belongs to another chain (genesis digest) or another schema version."""


class VertexStatus(IntEnum):
    PROCESSING = 0
    ACCEPTED = 1
    REJECTED = 2


class TxStatus(IntEnum):
    WAITING = 0  # accepted, not applied yet
    APPLIED = 1
    FAILED = 2
    REJECTED = 3


@dataclass(frozen=True, slots=True)
class TxRecord:
    """One transaction's row; `reason` is set when it failed."""

    tx_id: bytes
    vertex_id: bytes
    account: bytes
    nonce: int
    status: TxStatus
    reason: str = ""


@dataclass(frozen=True, slots=True)
class LedgerRows:
    """The ledger state as stored: see `dag.ledger.Ledger.restore`."""

    amounts: dict[Bucket, int]
    nonces: dict[bytes, int]
    waiting: list[bytes]
    claimed: list[bytes]


class Store:
    """One open store file. Use `Store.open`; call `close` when done."""

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self._conn = conn
        self.path = path
        self._seq = conn.execute("SELECT COALESCE(MAX(accepted_seq), 0) FROM vertices").fetchone()[
            0
        ]

    @classmethod
    def open(cls, path: str | Path, genesis_digest: bytes, *, durable: bool = False) -> Store:
        """Open or create the store at `path` for the chain of `genesis_digest`."""
        where = str(path)
        try:
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {where}: {exc}") from None
        try:
            _check_and_init(conn, where, genesis_digest, durable)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreCorrupt(f"store {where} is damaged: {exc}") from None
        except StoreError:
            conn.close()
            raise
        return cls(conn, where)

    def close(self) -> None:
        self._conn.close()

    # -- vertices -------------------------------------------------------------------------

    def put_vertex(self, vertex_id: bytes, body: bytes, timestamp_ms: int) -> None:
        """Keep a valid vertex as processing (a no-op if it is already kept)."""
        self._conn.execute(
            "INSERT OR IGNORE INTO vertices (id, body, timestamp_ms, status) VALUES (?, ?, ?, ?)",
            (vertex_id, body, timestamp_ms, VertexStatus.PROCESSING),
        )

    def vertex_status(self, vertex_id: bytes) -> VertexStatus | None:
        row = self._conn.execute(
            "SELECT status FROM vertices WHERE id = ?", (vertex_id,)
        ).fetchone()
        return None if row is None else VertexStatus(row[0])

    def vertex_body(self, vertex_id: bytes) -> bytes | None:
        """The canonical bytes of a kept vertex, to serve to a peer that syncs."""
        row = self._conn.execute("SELECT body FROM vertices WHERE id = ?", (vertex_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def vertex_timestamp(self, vertex_id: bytes) -> int | None:
        row = self._conn.execute(
            "SELECT timestamp_ms FROM vertices WHERE id = ?", (vertex_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def processing_bodies(self) -> list[bytes]:
        """Vertices still processing, in the order they were kept (parents first)."""
        rows = self._conn.execute(
            "SELECT body FROM vertices WHERE status = ? ORDER BY rowid", (VertexStatus.PROCESSING,)
        )
        return [bytes(r[0]) for r in rows]

    def accepted_ids(self, *, after_seq: int = 0, limit: int = 1000) -> list[bytes]:
        """Accepted vertex ids in this node's order of acceptance, from `after_seq` on."""
        rows = self._conn.execute(
            "SELECT id FROM vertices WHERE accepted_seq > ? ORDER BY accepted_seq LIMIT ?",
            (after_seq, limit),
        )
        return [bytes(r[0]) for r in rows]

    def latest_accepted(self, count: int) -> list[bytes]:
        """The `count` most recently accepted vertex ids, oldest first."""
        rows = self._conn.execute(
            "SELECT id FROM vertices WHERE accepted_seq IS NOT NULL "
            "ORDER BY accepted_seq DESC LIMIT ?",
            (count,),
        )
        return [bytes(r[0]) for r in rows][::-1]

    def counts(self) -> dict[str, int]:
        rows = self._conn.execute("SELECT status, COUNT(*) FROM vertices GROUP BY status")
        found = {VertexStatus(s).name.lower(): n for s, n in rows}
        return {s.name.lower(): found.get(s.name.lower(), 0) for s in VertexStatus}

    # -- transactions and ledger ----------------------------------------------------------

    def tx_record(self, tx_id: bytes) -> TxRecord | None:
        row = self._conn.execute(
            "SELECT id, vertex, account, nonce, status, reason FROM txs WHERE id = ?", (tx_id,)
        ).fetchone()
        if row is None:
            return None
        return TxRecord(
            bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3], TxStatus(row[4]), row[5]
        )

    def load_ledger(self) -> LedgerRows:
        amounts = {
            Bucket(bool(locked), bytes(key)): amount
            for locked, key, amount in self._conn.execute("SELECT locked, key, amount FROM amounts")
        }
        nonces = {bytes(a): n for a, n in self._conn.execute("SELECT account, next FROM nonces")}
        waiting = [bytes(r[0]) for r in self._conn.execute("SELECT tx FROM waiting")]
        claimed = [bytes(r[0]) for r in self._conn.execute("SELECT key FROM claimed")]
        return LedgerRows(amounts, nonces, waiting, claimed)

    def has_ledger(self) -> bool:
        """False for a fresh store, whose ledger starts from the genesis."""
        return self._meta("ledger") is not None

    def commit(
        self,
        *,
        accepted: Sequence[bytes],
        rejected: Sequence[bytes],
        txs: Iterable[TxRecord],
        amounts: dict[Bucket, int],
        nonces: dict[bytes, int],
        waiting_added: Iterable[tuple[bytes, int, bytes]],
        waiting_removed: Iterable[tuple[bytes, int]],
        claimed: Iterable[bytes] = (),
    ) -> None:
        """Write one batch of decisions and its ledger changes atomically.

        `accepted` is in acceptance order. A transaction row that is already applied,
        failed or waiting is never turned into rejected (its other instance lost).
        """
        c = self._conn
        try:
            c.execute("BEGIN IMMEDIATE")
            for vertex_id in accepted:
                self._seq += 1
                c.execute(
                    "UPDATE vertices SET status = ?, accepted_seq = ? WHERE id = ?",
                    (VertexStatus.ACCEPTED, self._seq, vertex_id),
                )
            c.executemany(
                "UPDATE vertices SET status = ? WHERE id = ?",
                [(VertexStatus.REJECTED, v) for v in rejected],
            )
            # One statement per verb for the whole batch (a vertex's worth of rows), in
            # order within each: a transaction has one record per batch.
            for verb, rows in _tx_rows(txs).items():
                c.executemany(
                    f"{verb} INTO txs (id, vertex, account, nonce, status, reason) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
            c.executemany(
                "INSERT OR REPLACE INTO amounts (locked, key, amount) VALUES (?, ?, ?)",
                [(int(b.locked), b.key, a) for b, a in amounts.items()],
            )
            c.executemany(
                "INSERT OR REPLACE INTO nonces (account, next) VALUES (?, ?)", nonces.items()
            )
            c.executemany("INSERT OR REPLACE INTO waiting VALUES (?, ?, ?)", waiting_added)
            c.executemany("DELETE FROM waiting WHERE account = ? AND nonce = ?", waiting_removed)
            c.executemany("INSERT OR IGNORE INTO claimed VALUES (?)", ((k,) for k in claimed))
            c.execute("INSERT OR REPLACE INTO meta VALUES ('ledger', x'01')")
            c.execute("COMMIT")
        except BaseException:
            if c.in_transaction:
                c.execute("ROLLBACK")
            raise

    def _meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])


def _check_and_init(
    conn: sqlite3.Connection, where: str, genesis_digest: bytes, durable: bool
) -> None:
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise StoreCorrupt(f"store {where} failed its integrity check: {result}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        # One script, one transaction: a crash while creating leaves an empty file behind,
        # which the next open creates again, never a half-made schema.
        conn.executescript(
            f"BEGIN IMMEDIATE;{_SCHEMA}"
            f"INSERT INTO meta VALUES ('schema', x'{str(SCHEMA_VERSION).encode().hex()}');"
            f"INSERT INTO meta VALUES ('genesis', x'{genesis_digest.hex()}');"
            "COMMIT;"
        )
        return
    if "meta" not in tables:
        raise StoreCorrupt(f"store {where} is an SQLite file but not a swarm-node store")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("genesis") != genesis_digest:
        raise StoreMismatch(f"store {where} belongs to another chain (genesis digest differs)")
    schema = meta.get("schema")
    if schema is not None and schema.isdigit() and int(schema) in _MIGRATIONS:
        conn.executescript(
            f"BEGIN IMMEDIATE;{_MIGRATIONS[int(schema)]}"
            f"UPDATE meta SET value = x'{str(SCHEMA_VERSION).encode().hex()}' WHERE key = 'schema';"
            "COMMIT;"
        )
        schema = str(SCHEMA_VERSION).encode()
    if schema != str(SCHEMA_VERSION).encode():
        raise StoreMismatch(f"store {where} has schema {schema!r}, want {SCHEMA_VERSION}")


def _tx_rows(records: Iterable[TxRecord]) -> dict[str, list[tuple[Any, ...]]]:
    """Transaction rows by how they are written: a rejection never overwrites a record."""
    rows: dict[str, list[tuple[Any, ...]]] = {"INSERT OR IGNORE": [], "INSERT OR REPLACE": []}
    for r in records:
        verb = "INSERT OR IGNORE" if r.status is TxStatus.REJECTED else "INSERT OR REPLACE"
        rows[verb].append((r.tx_id, r.vertex_id, r.account, r.nonce, r.status, r.reason))
    return rows
