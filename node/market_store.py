"""The market's durable state: `market.sqlite` in the data dir (stdlib `sqlite3`, WAL).

Both sides of a channel keep it here: the client (its IOU key, its own count of what it owes,
the receipts it got) and the provider (a row per charged answer, with the IOU that pays for
it, from which its channel's total and newest IOU are read). A provider appends the charge
to a journal (`node.journal`: one `write`, where a commit writes pages of three B-trees to
the log) before it sends the answer, so a kill -9 after answering loses nothing it could
settle, and the receipt after it (the same row, whole); the rows reach the database
in batches (`flush`: the market does it every few tens of milliseconds, in slices that
share a transaction, every read of receipts does it first, and `open` replays what a crash
left).
Calls are small and inline (WAL with synchronous=NORMAL does not sync on commit); the trio
loop owns the connection. Copying the log into the database file (a checkpoint, which syncs)
is not left to whichever commit crosses SQLite's threshold, which would hold up a call for
milliseconds: the market's keeper runs `checkpoint` in a worker thread, on a connection of
its own.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import msgpack

from dag.channels import CHANNEL_ID_BYTES, ChannelTerms
from dag.codec import encode, packb
from dag.errors import SwarmError
from dag.kinds import default_registry
from dag.tx import Transaction
from node.journal import Journal, JournalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    id BLOB PRIMARY KEY, role TEXT NOT NULL, peer TEXT NOT NULL, counterpart BLOB NOT NULL,
    open_tx BLOB NOT NULL, deposit INTEGER NOT NULL, expiry_ms INTEGER NOT NULL,
    charged_milli INTEGER NOT NULL DEFAULT 0, seq INTEGER NOT NULL DEFAULT 0, iou BLOB,
    iou_key BLOB, state TEXT NOT NULL, end_tx BLOB, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS receipts (
    channel BLOB NOT NULL, seq INTEGER NOT NULL, role TEXT NOT NULL, peer TEXT NOT NULL,
    counterpart BLOB NOT NULL, expert TEXT NOT NULL, tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL, price INTEGER NOT NULL, cost_milli INTEGER NOT NULL,
    charged_milli INTEGER NOT NULL, body BLOB NOT NULL, at_ms INTEGER NOT NULL,
    disputed TEXT NOT NULL DEFAULT '', iou BLOB, PRIMARY KEY (channel, seq));
CREATE INDEX IF NOT EXISTS receipts_day ON receipts (at_ms);
-- A provider's channel total is its receipts' largest: read here, not by a scan of them. A
-- client keeps its totals in channels: its rows (one per answer) skip this index.
DROP INDEX IF EXISTS receipts_total;
CREATE INDEX IF NOT EXISTS receipts_provider_total ON receipts (channel, charged_milli)
    WHERE role = 'provider';
"""


def _wall_ms() -> int:
    return int(time.time() * 1000)


class MarketStoreError(SwarmError):
    """The market file cannot be used; the message names it."""


class ReceiptRow(NamedTuple):
    """A row of the receipts table, its columns in order (as inserted, and journaled by
    `record_served`; `record_charge` journals a charge's in a record of its own)."""

    channel_id: bytes
    seq: int
    role: str  # "client" or "provider": whose copy
    peer: str  # the other side's peer id
    counterpart: bytes  # the other side's account
    expert: str
    tokens_in: int
    tokens_out: int
    price_per_1k: int
    cost_milli: int
    charged_milli: int  # the channel's total after this call
    body: bytes  # the receipt's evidence (empty: a charge whose receipt is not made yet)
    at_ms: int
    disputed: str
    iou: bytes | None  # the IOU that pays for it, when it was checked (provider side)


@dataclass(frozen=True, slots=True)
class ChannelRow:
    id: bytes
    role: str  # "client" or "provider"
    peer: str  # the other side's peer id
    counterpart: bytes  # the other side's account
    open_tx: bytes
    deposit: int
    expiry_ms: int
    charged_milli: int
    seq: int
    iou: bytes | None
    iou_key: bytes | None  # the client's IOU key seed (client side only)
    state: str  # open, ending, ended
    end_tx: bytes | None

    def terms(self, chain: bytes) -> ChannelTerms:
        """The channel's terms, from the `channel_open` transaction kept with it."""
        tx = Transaction.from_bytes(self.open_tx, default_registry(), chain=chain)
        return ChannelTerms.of_open(tx)

    def public(self) -> dict[str, Any]:
        return {
            "channel": self.id.hex(),
            "role": self.role,
            "peer": self.peer,
            "counterpart": self.counterpart.hex(),
            "deposit": self.deposit,
            "expiry_ms": self.expiry_ms,
            "charged": self.charged_milli / 1000,
            "seq": self.seq,
            "state": self.state,
            "end_tx": self.end_tx.hex() if self.end_tx else None,
        }


# The log a checkpoint leaves for reuse; what a burst grew beyond it is given back.
WAL_KEEP_BYTES = 16 << 20
SERVED_JOURNAL = ".served"  # beside the database file: the provider's rows not flushed yet
_RECEIPT_COLUMNS = len(ReceiptRow._fields)
# A charge's journal record (a receipts row is msgpack: an array, never this first byte): the
# tag, channel, seq, tokens in and out, price, cost, the channel's total, time; the sizes of
# the peer id, client account and expert id that follow; then the IOU, if any, to the end.
_CHARGE_TAG = 1
_CHARGE = struct.Struct(f">B{CHANNEL_ID_BYTES}sQQQQQQQHHH")
_RECEIPT_SLOTS = ", ".join("?" * _RECEIPT_COLUMNS)
_INSERT_RECEIPT = f"INSERT OR REPLACE INTO receipts VALUES ({_RECEIPT_SLOTS})"
_COLUMNS = "id, role, peer, counterpart, open_tx, deposit, expiry_ms, charged_milli, seq, iou, "
_COLUMNS += "iou_key, state, end_tx"
# A provider keeps one receipts row per answer, with its IOU (journaled on the call's path,
# see `record_served`); its channel's total, last seq and newest IOU are read from them.
_SELECT = """
SELECT id, role, peer, counterpart, open_tx, deposit, expiry_ms,
  CASE WHEN role = 'provider' THEN MAX(charged_milli, COALESCE(
    (SELECT MAX(r.charged_milli) FROM receipts r
      WHERE r.channel = c.id AND r.role = 'provider'), 0))
    ELSE charged_milli END,
  CASE WHEN role = 'provider' THEN MAX(seq, COALESCE(
    (SELECT MAX(r.seq) FROM receipts r WHERE r.channel = c.id), 0))
    ELSE seq END,
  CASE WHEN role = 'provider' THEN COALESCE((SELECT r.iou FROM receipts r
    WHERE r.channel = c.id AND r.iou IS NOT NULL ORDER BY r.seq DESC LIMIT 1), iou)
    ELSE iou END,
  iou_key, state, end_tx FROM channels c"""


def _row(r: tuple[Any, ...]) -> ChannelRow:
    return ChannelRow(
        bytes(r[0]),
        r[1],
        r[2],
        bytes(r[3]),
        bytes(r[4]),
        r[5],
        r[6],
        r[7],
        r[8],
        None if r[9] is None else bytes(r[9]),
        None if r[10] is None else bytes(r[10]),
        r[11],
        None if r[12] is None else bytes(r[12]),
    )


class MarketStore:
    """`now_ms` stamps rows and tells the day (usage per day, day limits): the node's clock."""

    def __init__(
        self, conn: sqlite3.Connection, path: str, now_ms: Callable[[], int] = _wall_ms
    ) -> None:
        self._conn = conn
        self.path = path
        self._now_ms = now_ms
        self._checkpointer: sqlite3.Connection | None = None
        # Journaled rows not in the database yet (a charge: its record, made a row by `flush`).
        self._served: list[ReceiptRow | bytes] = []
        self._written = 0  # how many of them `flush` wrote (the journal holds them all)
        self.on_served: Callable[[], None] = lambda: None  # a row was journaled
        try:
            self._journal = Journal(path + SERVED_JOURNAL)
        except JournalError as exc:
            raise MarketStoreError(str(exc)) from None
        try:
            self._served = [_journaled(body) for body in self._journal.read()]
        except (JournalError, ValueError) as exc:
            self._journal.close()
            raise MarketStoreError(f"market store {path}: {exc}") from None
        self.flush()

    @classmethod
    def open(cls, path: str | Path, now_ms: Callable[[], int] = _wall_ms) -> MarketStore:
        where = str(path)
        try:
            conn = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA schema_version")  # opens the file now
        except sqlite3.Error as exc:
            raise MarketStoreError(f"cannot open market store {where}: {exc}") from None
        try:
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise MarketStoreError(f"market store {where} failed its integrity check")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # see `checkpoint`
            conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
            conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise MarketStoreError(f"market store {where} is damaged: {exc}") from None
        return cls(conn, where, now_ms)

    def close(self) -> None:
        self.flush()
        self._journal.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._conn.close()

    def checkpoint(self) -> int:
        """Copy the log into the database file; returns the frames copied. It blocks (the
        copy is synced): call it from a worker thread. PASSIVE: it never waits for the
        loop's writes, nor they for it."""
        try:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
            row = self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            raise MarketStoreError(f"market store {self.path}: checkpoint failed: {exc}") from None
        return int(row[2])

    # -- channels -------------------------------------------------------------------------

    def put_channel(self, row: ChannelRow) -> None:
        self.flush()  # (the batch's transaction ended: this write is not part of it)
        self._conn.execute(
            f"INSERT OR REPLACE INTO channels ({_COLUMNS}, updated_ms) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.role,
                row.peer,
                row.counterpart,
                row.open_tx,
                row.deposit,
                row.expiry_ms,
                row.charged_milli,
                row.seq,
                row.iou,
                row.iou_key,
                row.state,
                row.end_tx,
                self._now_ms(),
            ),
        )

    def channels(
        self, role: str | None = None, state: str | None = None, *, active: bool = False
    ) -> list[ChannelRow]:
        """Channels, oldest change first; `active`: those not ended."""
        sql = f"{_SELECT} WHERE 1 = 1" + (" AND state != 'ended'" if active else "")
        args: list[Any] = []
        if role is not None:
            sql += " AND role = ?"
            args.append(role)
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        return [_row(r) for r in self._query(sql + " ORDER BY updated_ms", args)]

    def channel(self, channel_id: bytes) -> ChannelRow | None:
        r = self._query(f"{_SELECT} WHERE id = ?", (channel_id,)).fetchone()
        return None if r is None else _row(r)

    def set_state(self, channel_id: bytes, state: str, end_tx: bytes | None = None) -> None:
        self.flush()  # (the batch's transaction ended: this write is not part of it)
        self._conn.execute(
            "UPDATE channels SET state = ?, end_tx = COALESCE(?, end_tx), updated_ms = ? "
            "WHERE id = ?",
            (state, end_tx, self._now_ms(), channel_id),
        )

    # -- receipts -------------------------------------------------------------------------

    def record_served(self, peer: str, client: bytes, receipt: Any, iou: bytes | None) -> None:
        """A provider's receipt (its fields: the seal goes on the frame that carries it) with
        the IOU that pays for it, once checked (None: it failed its late check, and an
        earlier one pays). The channel's total, seq and newest IOU are read back from these
        rows."""
        now = self._now_ms()
        row = _receipt_row("provider", peer, client, receipt, "", iou, _body(receipt), now)
        if not self._served:
            self.on_served()  # the first record since the last flush
        self._journal.append(packb(row))
        self._served.append(row)

    def record_charge(
        self,
        channel_id: bytes,
        seq: int,
        peer: str,
        client: bytes,
        expert: str,
        tokens_in: int,
        tokens_out: int,
        price_per_1k: int,
        cost_milli: int,
        charged_milli: int,
        at_ms: int,
        iou: bytes | None,
    ) -> None:
        """A provider's charged call, journaled before its answer goes out: what settlement
        needs (the counts, and the IOU when it was checked before the answer), no receipt
        yet. `record_served` replaces it once the receipt is made; a crash in between leaves
        it: the charge stands (a receipts row with an empty body), the receipt was never
        sent. On the call's path: one `struct` record, its row made when it is flushed."""
        if not self._served:
            self.on_served()  # the first record since the last flush
        who, what = peer.encode(), expert.encode()
        record = _CHARGE.pack(
            _CHARGE_TAG,
            channel_id,
            seq,
            tokens_in,
            tokens_out,
            price_per_1k,
            cost_milli,
            charged_milli,
            at_ms,
            len(who),
            len(client),
            len(what),
        )
        record += who + client + what + (iou or b"")
        self._journal.append(record)
        self._served.append(record)

    def flush(self, rows: int | None = None) -> bool:
        """Write the journaled rows into the database, then clear the journal (a crash in
        between replays rows already written: the same rows again). `rows`: at most that
        many, into the batch's transaction, left open while rows are left (see `commit`), so
        that a caller can let other work in between: a hundred rows at once held the
        market's loop for 1.5 ms, and one transaction for every few rows cost the loop more.
        Returns whether rows are left."""
        served, start = self._served, self._written
        end = len(served) if rows is None else min(len(served), start + rows)
        if start < end:
            # A receipt replaces its call's charge: only the newest row of each call.
            newest = {}
            for item in served[start:end]:
                row = _charge_row(item) if isinstance(item, bytes) else item
                newest[(row.channel_id, row.seq, row.role)] = row
            self._write(_INSERT_RECEIPT, newest.values())
            self._written = end
        if end < len(served):
            return True
        self.commit()
        return False

    def commit(self) -> None:
        """End the batch's transaction (`flush` in slices and `record_many` leave it open);
        once every journaled row is in, clear the journal. Every other write of the store,
        and every read, does it first. A crash before it loses nothing journaled."""
        c = self._conn
        if c.in_transaction:
            try:
                c.execute("COMMIT")
            except BaseException as exc:
                self._abort(exc)
        if self._served and self._written == len(self._served):
            self._served, self._written = [], 0
            self._journal.clear()

    def _write(self, sql: str, rows: Any) -> None:
        """`rows` into the batch's transaction (begun if none is open)."""
        c = self._conn
        try:
            if not c.in_transaction:
                c.execute("BEGIN IMMEDIATE")
            c.executemany(sql, rows)
        except BaseException as exc:
            self._abort(exc)

    def _abort(self, exc: BaseException) -> NoReturn:
        """Roll the batch back (its journaled rows stay queued: the next flush writes them)
        and raise (a `MarketStoreError` for SQLite's own)."""
        c = self._conn
        if c.in_transaction:
            c.execute("ROLLBACK")
        self._written = 0
        if isinstance(exc, sqlite3.Error):
            raise MarketStoreError(f"market store {self.path}: cannot write: {exc}") from None
        raise exc

    def _query(self, sql: str, args: Any = ()) -> sqlite3.Cursor:
        """A read: of the journaled rows too (they are flushed first, the batch committed)."""
        self.flush()
        return self._conn.execute(sql, args)

    def record_many(
        self, items: list[tuple[str, bytes, Any, int, str]], *, commit: bool = True
    ) -> None:
        """A client's checked receipts, (peer, counterpart, receipt, our total, dispute), each
        with its channel's new total by our own count (one update of each channel: its
        largest total and seq of these); `commit`: false leaves the batch's transaction open
        for more (see `commit`)."""
        now = self._now_ms()
        newest: dict[bytes, tuple[int, int]] = {}  # by channel: its largest total and seq
        for _, _, r, total, _ in items:
            had = newest.get(r.channel_id, (0, 0))
            newest[r.channel_id] = (max(had[0], total), max(had[1], r.seq))
        self._write(
            _INSERT_RECEIPT,
            [_receipt_row("client", p, cp, r, d, None, _body(r), now) for p, cp, r, _, d in items],
        )
        self._write(
            "UPDATE channels SET charged_milli = MAX(charged_milli, ?), seq = MAX(seq, ?), "
            "updated_ms = ? WHERE id = ?",
            [(total, seq, now, cid) for cid, (total, seq) in newest.items()],
        )
        if commit:
            self.commit()

    def receipts(self, role: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql = (
            "SELECT channel, seq, role, peer, counterpart, expert, tokens_in, tokens_out, price, "
            "cost_milli, charged_milli, at_ms, disputed FROM receipts"
        )
        args: list[Any] = []
        if role is not None:
            sql += " WHERE role = ?"
            args.append(role)
        rows = self._query(sql + " ORDER BY at_ms DESC LIMIT ?", [*args, limit])
        keys = [
            "channel",
            "seq",
            "role",
            "peer",
            "counterpart",
            "expert",
            "tokens_in",
            "tokens_out",
            "price_per_1k",
            "cost_milli",
            "charged_milli",
            "at_ms",
            "disputed",
        ]
        out = []
        for r in rows:
            item = dict(zip(keys, r, strict=True))
            item["channel"] = bytes(item["channel"]).hex()
            item["counterpart"] = bytes(item["counterpart"]).hex()
            out.append(item)
        return out

    def usage(self, days: int = 30) -> list[dict[str, Any]]:
        """Tokens and credits per day, role (used or earned), expert and peer."""
        since = self._now_ms() - days * 86_400_000
        rows = self._query(
            "SELECT date(at_ms / 1000, 'unixepoch') AS day, role, expert, counterpart, "
            "COUNT(*), SUM(tokens_in), SUM(tokens_out), SUM(cost_milli) FROM receipts "
            "WHERE at_ms >= ? GROUP BY day, role, expert, counterpart ORDER BY day, role",
            (since,),
        )
        return [
            {
                "day": day,
                "kind": "used" if role == "client" else "earned",
                "expert": expert,
                "peer_account": bytes(counterpart).hex(),
                "calls": calls,
                "tokens_in": tin,
                "tokens_out": tout,
                "credits": cost / 1000,
            }
            for day, role, expert, counterpart, calls, tin, tout, cost in rows
        ]

    def tokens_today(self, role: str, counterpart: bytes | None = None) -> int:
        """Tokens served (provider) or used (client) since midnight UTC, for the day limits."""
        start = self._now_ms() // 86_400_000 * 86_400_000
        sql = "SELECT COALESCE(SUM(tokens_in + tokens_out), 0) FROM receipts "
        sql += "WHERE role = ? AND at_ms >= ?"
        args: list[Any] = [role, start]
        if counterpart is not None:
            sql += " AND counterpart = ?"
            args.append(counterpart)
        return int(self._query(sql, args).fetchone()[0])

    def reputation(self) -> list[dict[str, Any]]:
        """Per provider, from the receipts this node got: calls, tokens, disputes."""
        rows = self._query(
            "SELECT peer, counterpart, COUNT(*), SUM(tokens_in + tokens_out), SUM(cost_milli), "
            "SUM(disputed != '') FROM receipts WHERE role = 'client' GROUP BY peer, counterpart"
        )
        return [
            {
                "provider": peer,
                "account": bytes(account).hex(),
                "paid_calls": calls,
                "tokens": tokens,
                "credits": cost / 1000,
                "disputed": disputed,
            }
            for peer, account, calls, tokens, cost, disputed in rows
        ]


def _journaled(body: bytes) -> ReceiptRow:
    """A receipts row back from its journal record (`ValueError` if it is not one)."""
    if body[0] == _CHARGE_TAG:
        return _charge_row(body)
    try:
        row = msgpack.unpackb(body)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"journal record is not msgpack: {exc}") from None
    if isinstance(row, list) and len(row) == _RECEIPT_COLUMNS:
        return ReceiptRow(*row)
    raise ValueError("journal record is not a receipts row")


def _charge_row(record: bytes) -> ReceiptRow:
    """The receipts row of a charge's journal record (`record_charge`; `ValueError` if it is
    not one)."""
    if len(record) < _CHARGE.size:
        raise ValueError("journal record is a charge cut short")
    tag, channel, seq, tokens_in, tokens_out, price, cost, total, at_ms, *sizes = (
        _CHARGE.unpack_from(record)
    )
    at, parts = _CHARGE.size, []
    for size in sizes:
        parts.append(record[at : at + size])
        at += size
    if at > len(record):
        raise ValueError("journal record is a charge cut short")
    who, client, what = parts
    try:
        peer, expert = who.decode(), what.decode()
    except UnicodeDecodeError:
        raise ValueError("journal record is a charge with a name that is not UTF-8") from None
    iou = record[at:] or None
    row = (channel, seq, "provider", peer, client, expert, tokens_in, tokens_out, price, cost)
    return ReceiptRow(*row, total, b"", at_ms, "", iou)


def _body(receipt: Any) -> bytes:
    # `protocols.market_wire.Receipt.evidence` (a receipt's fields are typed)
    return encode(receipt.evidence(), types_checked=True)


def _receipt_row(
    role: str,
    peer: str,
    counterpart: bytes,
    receipt: Any,
    disputed: str,
    iou: bytes | None,
    body: bytes,
    at_ms: int,
) -> ReceiptRow:
    return ReceiptRow(
        receipt.channel_id,
        receipt.seq,
        role,
        peer,
        counterpart,
        receipt.expert,
        receipt.tokens_in,
        receipt.tokens_out,
        receipt.price_per_1k,
        receipt.cost_milli,
        receipt.charged_milli,
        body,
        at_ms,
        disputed,
        iou,
    )
