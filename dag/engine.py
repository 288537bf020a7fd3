"""The DAG engine: validation, voting, ledger and store, composed into one sans-IO object.

This is what the network layer drives. It takes bytes, ids, votes and times; it returns
poll requests, answers and events. It never sleeps, reads a clock or opens a socket. Two
clocks come in as arguments: `now_ms`, wall-clock milliseconds from the node's one injected
clock (vertex timestamps), and `now`, monotonic seconds (`trio.current_time()`, poll
deadlines).

Driver loop (one trio task owns the engine; store calls block, so the whole engine call may
be run in `trio.to_thread.run_sync` or the store kept on a fast disk)::

    engine = Engine.open(genesis, store, Params.default(), my_account, random.Random())
    # a vertex arrives by gossip or sync
    result = engine.receive(data, now_ms=clock_ms(), peer=peer_account)
    for missing_id in result.missing: fetch it over /swarm/dag/sync/1.0.0, then receive again
    # every few ms, and after every event below
    for req in engine.polls_to_send(trio.current_time()):
        for peer in req.peers: ask peer over /swarm/dag/query/1.0.0 about req.vertex_id,
            then engine.on_vote(req.poll_id, peer, answer)   # timeout or error: no call;
        the poll closes by itself at its deadline (or call engine.on_poll_timeout)
    # a peer asks us
    answer = engine.vote_for(vertex_id)
    # local transactions, batched over a short window
    vertex = engine.build_vertex(account_key, txs, now_ms)   # then gossip vertex.to_bytes()
    if engine.needs_vertex(): build an empty vertex (rate-limited) so votes keep flowing
    for event in engine.drain_events(): notify wallets, metrics ...

Events are reported only after the store has committed them: accepted is forever. If a
commit raises (disk full, I/O error), the in-memory state is ahead of the file: stop the node
and restart it from the store.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from dag.avalanche import Avalanche, PollRequest, VertexAccepted, VertexRejected
from dag.crypto import SigningKey
from dag.errors import (
    AlreadyClaimed,
    InvalidTransaction,
    InvalidVertex,
    RemoteProtocolError,
    ReplayedNonce,
    SwarmError,
)
from dag.genesis import Genesis
from dag.kinds import KindRegistry, balance_of, default_registry
from dag.ledger import Ledger, TxOutcome
from dag.params import Params
from dag.store import Store, TxRecord, TxStatus, VertexStatus
from dag.tx import Transaction
from dag.vertex import MAX_PARENTS, Vertex, genesis_vertex_id


@dataclass(frozen=True, slots=True)
class TxAccepted:
    """A transaction is accepted; `applied` is False while it waits (turn or funds)."""

    tx_id: bytes
    vertex_id: bytes
    applied: bool


@dataclass(frozen=True, slots=True)
class TxApplied:
    """A transaction that waited has now had its effect (or failed, with `reason`)."""

    tx_id: bytes
    ok: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TxRejected:
    """A transaction lost its conflict set (or sat on a losing vertex): never accepted."""

    tx_id: bytes
    vertex_id: bytes


Event = VertexAccepted | VertexRejected | TxAccepted | TxApplied | TxRejected


@dataclass(frozen=True, slots=True)
class Received:
    """What `receive` did: `status` is "added", "known" or "missing" (nothing stored; fetch
    `missing` by id and call `receive` again)."""

    vertex_id: bytes
    status: Literal["added", "known", "missing"]
    missing: tuple[bytes, ...] = ()


class Engine:
    """One node's DAG. Build it with `Engine.open`."""

    def __init__(
        self,
        genesis: Genesis,
        store: Store,
        avalanche: Avalanche,
        ledger: Ledger,
        registry: KindRegistry,
    ) -> None:
        self.genesis = genesis
        self.chain = genesis.digest
        self.root = genesis_vertex_id(genesis)
        self.store = store
        self.avalanche = avalanche
        self.ledger = ledger
        self.registry = registry
        self._processing: dict[bytes, Vertex] = {}
        self._events: list[Event] = []

    @classmethod
    def open(
        cls,
        genesis: Genesis,
        store: Store,
        params: Params,
        self_account: bytes,
        rng: random.Random,
        registry: KindRegistry | None = None,
    ) -> Engine:
        """Resume from `store` (empty for a new node): ledger state, then processing vertices
        re-added in the order they came (their chits restart from zero)."""
        registry = registry or default_registry()
        chain = genesis.digest
        if store.has_ledger():
            rows = store.load_ledger()
            waiting = [Transaction.from_bytes(t, registry, chain=chain) for t in rows.waiting]
            ledger = Ledger.restore(
                genesis, registry, rows.amounts, rows.nonces, waiting, rows.claimed
            )
        else:
            ledger = Ledger(genesis, registry)
        validators = {a.account: a.stake for a in genesis.accounts}
        tips = store.latest_accepted(MAX_PARENTS) or [genesis_vertex_id(genesis)]
        avalanche = Avalanche(params, validators, self_account, rng, tips)
        engine = cls(genesis, store, avalanche, ledger, registry)
        for body in store.processing_bodies():
            engine._admit(Vertex.from_bytes(body, registry, chain=chain))
        engine._commit()
        return engine

    # -- vertices in ----------------------------------------------------------------------

    def receive(self, data: bytes, *, now_ms: int, peer: bytes | None = None) -> Received:
        """Validate a vertex from outside and add it. Raises a `RemoteProtocolError` subclass
        (with `.peer` set) if it is malformed or breaks a rule; then nothing is stored."""
        try:
            vertex = Vertex.from_bytes(data, self.registry, chain=self.chain)
            return self._receive(vertex, now_ms, verify=True)
        except RemoteProtocolError as exc:
            exc.peer = exc.peer or (peer.hex() if peer else None)
            raise

    def _receive(self, vertex: Vertex, now_ms: int, *, verify: bool) -> Received:
        if self._known(vertex.id):
            return Received(vertex.id, "known")
        if verify:
            # Before "missing" too: a forged vertex must not get a peer to hold it or to go
            # fetching parents for it.
            vertex.verify()
        missing = tuple(p for p in vertex.parents if not self._known(p))
        if missing:
            return Received(vertex.id, "missing", missing)
        vertex.check_time(now_ms, (self._timestamp(p) for p in vertex.parents))
        self._check_fresh(vertex.txs)
        self._check_not_before(vertex)
        self.store.put_vertex(vertex.id, vertex.to_bytes(), vertex.timestamp_ms)
        self._admit(vertex)
        self._commit()
        return Received(vertex.id, "added")

    def build_vertex(self, key: SigningKey, txs: Sequence[Transaction], now_ms: int) -> Vertex:
        """Sign a vertex of `txs` on the preferred frontier, add it, and return it to gossip.

        The timestamp is `now_ms`, raised if needed to the latest parent's. Each of `txs`
        must have passed `check_transaction` (their signatures are not checked again).
        """
        parents = self.avalanche.choose_parents(MAX_PARENTS)
        timestamp = max([now_ms, *(self._timestamp(p) for p in parents)])
        vertex = Vertex.create(
            key, chain=self.chain, parents=parents, timestamp_ms=timestamp, txs=txs
        )
        self._receive(vertex, timestamp, verify=False)
        return vertex

    def check_transaction(self, tx: Transaction, now_ms: int | None = None) -> None:
        """Check a transaction a local client submits before it is batched: its signature,
        that its conflict sets are still open here, and (given `now_ms`) that a vertex made
        now may carry it (`RemoteProtocolError` if not)."""
        if tx.chain != self.chain:
            raise InvalidTransaction("transaction is for another chain")
        tx.verify()
        self._check_fresh([tx])
        if now_ms is not None and (not_before := self.registry.not_before_ms(tx)) > now_ms:
            raise InvalidTransaction(f"a {tx.kind} may not be carried before {not_before} ms")

    def _check_fresh(self, txs: Sequence[Transaction]) -> None:
        seen: set[tuple[bytes, int]] = set()
        for tx in txs:
            for key in self.registry.conflict_keys(tx):
                if self.ledger.is_decided(key):
                    if key == tx.conflict_key:
                        raise ReplayedNonce(f"nonce {tx.nonce} of this account is already used")
                    raise AlreadyClaimed(f"a {tx.kind} for key {key[0].hex()} is already accepted")
                if key in seen:
                    # Voting counts a set once per vertex; two members in one vertex could both
                    # be accepted.
                    raise InvalidVertex(f"vertex holds two transactions of conflict set {key!r}")
                seen.add(key)

    def _check_not_before(self, vertex: Vertex) -> None:
        for tx in vertex.txs:
            not_before = self.registry.not_before_ms(tx)
            if vertex.timestamp_ms < not_before:
                raise InvalidTransaction(
                    f"a {tx.kind} in a vertex of {vertex.timestamp_ms} ms, before {not_before} ms"
                )

    def _known(self, vertex_id: bytes) -> bool:
        return (
            vertex_id == self.root
            or vertex_id in self._processing
            or self.store.vertex_status(vertex_id) is not None
        )

    def _timestamp(self, vertex_id: bytes) -> int:
        held = self._processing.get(vertex_id)
        if held is not None:
            return held.timestamp_ms
        if vertex_id == self.root:
            return self.genesis.timestamp_ms
        return self.store.vertex_timestamp(vertex_id) or 0

    def _admit(self, vertex: Vertex) -> None:
        self._processing[vertex.id] = vertex
        for parent in vertex.parents:
            # The voting state forgets decided vertices; tell it which parents lost.
            if (
                parent not in self._processing
                and parent != self.root
                and (self.store.vertex_status(parent) is VertexStatus.REJECTED)
            ):
                self.avalanche.note_rejected(parent)
        keys = [key for tx in vertex.txs for key in self.registry.conflict_keys(tx)]
        self.avalanche.add(vertex.id, vertex.parents, keys)

    # -- voting ---------------------------------------------------------------------------

    def polls_to_send(self, now: float) -> list[PollRequest]:
        """New polls to send (`now`: monotonic seconds); overdue ones are closed first."""
        requests = self.avalanche.polls_to_send(now)
        self._commit()
        return requests

    def on_vote(self, poll_id: int, peer: bytes, yes: bool) -> None:
        """A peer's answer to a poll (only its first answer counts)."""
        self.avalanche.on_vote(poll_id, peer, yes)
        self._commit()

    def on_poll_timeout(self, poll_id: int) -> None:
        """Close a poll now; peers that did not answer count as no."""
        self.avalanche.on_poll_timeout(poll_id)
        self._commit()

    def vote_for(self, vertex_id: bytes) -> bool:
        """Our answer to a peer's query: yes if accepted, or processing and strongly preferred.
        Unknown is no (the driver may fetch the vertex so that later answers can be yes)."""
        if vertex_id in self._processing:
            return self.avalanche.is_strongly_preferred(vertex_id)
        return (
            vertex_id == self.root or self.store.vertex_status(vertex_id) is VertexStatus.ACCEPTED
        )

    def undecided_by(self, author: bytes) -> int:
        """How many vertices of `author` with transactions are still processing here (the
        engine asks for more vertices while such wait, see `needs_vertex`; it does not for
        empty ones)."""
        return sum(1 for v in self._processing.values() if v.author == author and v.txs)

    def knows(self, vertex_id: bytes) -> bool:
        """True if the vertex is held (processing, accepted or rejected): no need to fetch."""
        return self._known(vertex_id)

    def next_free_nonce(self, account: bytes) -> int:
        """The lowest nonce of `account` that neither the ledger nor a held vertex has used.

        A wallet that restarts must not reuse a nonce its own undecided transactions hold,
        or it would double-spend against itself."""
        used = [tx.nonce for tx in self._undecided_of(account)]
        return max([self.ledger.next_nonce(account), *(n + 1 for n in used)])

    def _undecided_of(self, account: bytes) -> list[Transaction]:
        """`account`'s transactions in processing vertices, and its accepted ones that wait."""
        held = [tx for v in self._processing.values() for tx in v.txs if tx.account == account]
        return held + [tx for tx in self.ledger.waiting() if tx.account == account]

    def spendable(self, account: bytes, queued: Sequence[Transaction] = ()) -> int:
        """`account`'s balance less what its undecided, waiting and `queued` transactions
        would take from it: what a wallet may still spend without a transfer that waits."""
        mine = self._undecided_of(account) + [tx for tx in queued if tx.account == account]
        source = balance_of(account)
        spent = 0
        for tx in {tx.id: tx for tx in mine}.values():
            try:
                moves = self.registry.get(tx.kind).plan(self.ledger, tx)
            except SwarmError:
                continue  # a kind that would fail takes nothing
            spent += sum(m.amount for m in moves if m.source == source)
        return self.ledger.balance(account) - spent

    def stats(self) -> dict[str, int]:
        """Counts for `dag status`: vertices by status in the store, and voting state."""
        return {**self.store.counts(), **self.avalanche.stats()}

    def needs_vertex(self) -> bool:
        """See `Avalanche.needs_vertex`."""
        return self.avalanche.needs_vertex()

    def frontier(self) -> list[bytes]:
        """What to offer a peer that syncs: our newest vertex ids (see `Avalanche.frontier`).
        It fetches each one it lacks with `vertex_bytes` and feeds it to `receive`, which
        names the missing ancestors to fetch next."""
        return self.avalanche.frontier()

    def vertex_bytes(self, vertex_id: bytes) -> bytes | None:
        """The canonical bytes of a kept vertex, to answer a sync request."""
        held = self._processing.get(vertex_id)
        return held.to_bytes() if held is not None else self.store.vertex_body(vertex_id)

    def drain_events(self) -> list[Event]:
        """Events since the last call, each already durable in the store."""
        events, self._events = self._events, []
        return events

    # -- decisions ------------------------------------------------------------------------

    def _commit(self) -> None:
        decisions = self.avalanche.drain_decisions()
        if not decisions:
            return
        accepted: list[bytes] = []
        rejected: list[bytes] = []
        records: dict[bytes, TxRecord] = {}
        events: list[Event] = []
        for decision in decisions:
            vertex = self._processing.pop(decision.vertex_id)
            events.append(decision)
            if isinstance(decision, VertexAccepted):
                accepted.append(vertex.id)
                for tx in vertex.txs:
                    records[tx.id] = TxRecord(
                        tx.id, vertex.id, tx.account, tx.nonce, TxStatus.WAITING
                    )
                    applied = False
                    for o in self.ledger.accept(tx):
                        records[o.tx_id] = self._settled(o, records)
                        if o.tx_id == tx.id:
                            applied = o.applied
                        else:
                            events.append(TxApplied(o.tx_id, o.applied, o.reason))
                    events.append(TxAccepted(tx.id, vertex.id, applied))
            else:
                rejected.append(vertex.id)
                for tx in vertex.txs:
                    if tx.id in records or self._settled_before(tx.id):
                        continue  # another instance of this very transaction won
                    records[tx.id] = TxRecord(
                        tx.id, vertex.id, tx.account, tx.nonce, TxStatus.REJECTED
                    )
                    events.append(TxRejected(tx.id, vertex.id))
        changes = self.ledger.take_changes()
        added = {t.conflict_key: t for t in changes.waiting_added}
        for key in changes.waiting_removed:
            added.pop(key, None)
        self.store.commit(
            accepted=accepted,
            rejected=rejected,
            txs=records.values(),
            amounts=changes.amounts,
            nonces=changes.nonces,
            waiting_added=[(t.account, t.nonce, t.to_bytes()) for t in added.values()],
            waiting_removed=changes.waiting_removed,
            claimed=changes.claimed,
        )
        self._events.extend(events)

    def _settled(self, outcome: TxOutcome, batch: dict[bytes, TxRecord]) -> TxRecord:
        earlier = batch.get(outcome.tx_id) or self.store.tx_record(outcome.tx_id)
        vertex_id = earlier.vertex_id if earlier is not None else b""
        status = TxStatus.APPLIED if outcome.applied else TxStatus.FAILED
        return TxRecord(
            outcome.tx_id, vertex_id, outcome.account, outcome.nonce, status, outcome.reason
        )

    def _settled_before(self, tx_id: bytes) -> bool:
        record = self.store.tx_record(tx_id)
        return record is not None and record.status is not TxStatus.REJECTED
