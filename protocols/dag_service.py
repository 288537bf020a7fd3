"""Drives the sans-IO DAG engine over libp2p: gossip, polls to real peers, sync, batching.

One lock serialises every engine call, and each call runs in a worker thread (signature
checks and SQLite writes would otherwise stall the loop). Four kinds of task use it: the
gossip reader, the poller, the vertex builder, and the stream handlers peers call.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from libp2p.peer.id import ID

from dag.avalanche import VertexAccepted
from dag.crypto import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey
from dag.engine import Engine, Event, Received, TxAccepted, TxApplied, TxRejected
from dag.errors import RemoteProtocolError, ReplayedNonce, SwarmError
from dag.kinds import transfer_payload
from dag.params import Params
from dag.tx import Transaction
from protocols import dag_wire as wire
from protocols import ids
from protocols.dag_orphans import OrphanPool
from protocols.dag_sync import (
    QueryChannel,
    RateLimit,
    fetch_frontier,
    fetch_vertices,
    serve_query,
    serve_sync,
)
from protocols.dag_views import balance_view, tx_status_of, vertex_view
from protocols.errors import NetworkError
from protocols.metrics import METRICS_WINDOW_S, Latencies
from protocols.stream import Stream

if TYPE_CHECKING:
    from protocols.p2p import P2PService

log = logging.getLogger("swarm.dag")
T = TypeVar("T")
MAX_ORPHANS = 50_000
ORPHAN_GRACE_S = 0.5
FETCH_SOURCES = 2
MAX_BATCH = 256
# A vertex travels as one gossipsub message; py-libp2p batches messages into RPCs of up to
# 1 MiB, so a vertex stays well under that.
MAX_BATCH_BYTES = 256 * 1024
TX_OVERHEAD_BYTES = 160


class InsufficientCredits(SwarmError):
    """Our wallet refuses a transfer its spendable balance does not cover."""


@dataclass(frozen=True, slots=True)
class DagSettings:
    params: Params
    batch_window_s: float = 0.05  # how long a transaction waits for others to share a vertex
    empty_vertex_interval_s: float = 0.1  # the fastest rate of vertices with no transactions
    sync_rate: float = 5000.0  # vertices a peer may fetch from us per second


@dataclass
class _TxWait:
    """A submitted transaction: stored once its vertex is; decided later."""

    stored: trio.Event = field(default_factory=trio.Event)
    decided: trio.Event = field(default_factory=trio.Event)
    outcome: str = "pending"
    submitted: float = 0.0


class DagService:
    def __init__(
        self,
        *,
        engine: Engine,
        p2p: P2PService,
        key: SigningKey,
        settings: DagSettings,
        wall_clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.p2p = p2p
        self.key = key
        self.settings = settings
        self._wall = wall_clock
        self._lock = trio.Lock()
        self._kick_poller = trio.Event()
        self._kick_builder = trio.Event()
        self._mempool: list[Transaction] = []
        self._queued: set[tuple[bytes, int]] = set()  # (account, nonce) of what the mempool holds
        self._waits: dict[bytes, _TxWait] = {}
        self._seen: dict[bytes, float] = {}  # vertex id -> when we first held it
        self._orphans = OrphanPool(MAX_ORPHANS)
        self._fetching: set[bytes] = set()
        self._channels: dict[str, QueryChannel] = {}
        self._next_nonce: int | None = None
        self._last_empty = -1e9
        self._sync_limit = RateLimit(settings.sync_rate, settings.sync_rate * 2)
        self.vertex_latency = Latencies()
        self.tx_latency = Latencies()
        self._nursery: trio.Nursery | None = None
        self._decided = trio.Event()  # pulsed after every batch of decisions
        self.txs_accepted = 0
        self.query_rtt = Latencies()  # our polls: time until a peer's votes came back
        self.queries_answered = 0
        self.queries_unknown = 0  # asked about a vertex we did not hold yet

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        subscription = await self.p2p.subscribe(ids.TOPIC_DAG)
        self.p2p.set_handler(ids.DAG_QUERY, self._serve_query)
        self.p2p.set_handler(ids.DAG_SYNC, self._serve_sync)

        def joined(peer: str) -> None:
            nursery.start_soon(self.sync_from, peer)

        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._gossip_reader, subscription)
            nursery.start_soon(self._poller)
            nursery.start_soon(self._builder)
            for entry in self.p2p.peers.connected_members():
                nursery.start_soon(self.sync_from, entry.peer_id)
            with self.p2p.member_events(joined=joined):
                task_status.started(self)
                await trio.sleep_forever()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one engine call in a worker thread, then act on the events it produced."""

        def work() -> tuple[T, list[Event]]:
            return fn(*args), self.engine.drain_events()

        async with self._lock:
            result, events = await trio.to_thread.run_sync(work)
        self._on_events(events)
        return result

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    # -- transactions in ------------------------------------------------------------------

    async def transfer(self, to: bytes, amount: int) -> bytes:
        """Sign a transfer from our account and submit it; returns once it is stored."""

        def make() -> Transaction:
            account = self.key.account_id
            available = self.engine.spendable(account, self._mempool)
            if amount > available:
                raise InsufficientCredits(
                    f"cannot send {amount} credits: {available} are spendable "
                    f"(balance less transfers still pending)"
                )
            if self._next_nonce is None:
                self._next_nonce = self.engine.next_free_nonce(account)
            tx = Transaction.create(
                self.key,
                chain=self.engine.chain,
                nonce=self._next_nonce,
                kind="transfer",
                payload=transfer_payload(to, amount),
                registry=self.engine.registry,
            )
            self.engine.check_transaction(tx)
            self._next_nonce += 1
            return tx

        tx = await self._call(make)
        return await self._enqueue(tx)

    async def submit(self, tx: Transaction) -> bytes:
        """Submit a transaction someone else signed; returns once it is stored."""
        await self._call(self.engine.check_transaction, tx)
        return await self._enqueue(tx)

    async def submit_many(self, txs: list[Transaction]) -> list[str]:
        """Submit signed transactions; one status each (`stored`, or why it was refused).
        Returns once every accepted one is stored."""

        def check() -> list[str]:
            verdicts = []
            for tx in txs:
                try:
                    self.engine.check_transaction(tx)
                    verdicts.append("stored")
                except SwarmError as exc:
                    verdicts.append(f"refused: {exc}")
            return verdicts

        verdicts = await self._call(check)
        waits = []
        for i, (tx, verdict) in enumerate(zip(txs, verdicts, strict=True)):
            if verdict == "stored":
                try:
                    waits.append(self._queue(tx))
                except SwarmError as exc:
                    verdicts[i] = f"refused: {exc}"
        for wait in waits:
            await wait.stored.wait()
        return verdicts

    def _queue(self, tx: Transaction) -> _TxWait:
        """Put `tx` in the mempool once; a second transaction for its (account, nonce) while
        the first waits there is refused, since one vertex may not hold both."""
        wait = self._waits.get(tx.id)
        if wait is not None:
            return wait  # the same transaction again: wait with the first submitter
        if tx.conflict_key in self._queued:
            raise ReplayedNonce(f"nonce {tx.nonce} of this account is already queued here")
        wait = self._waits[tx.id] = _TxWait(submitted=trio.current_time())
        self._queued.add(tx.conflict_key)
        self._mempool.append(tx)
        self._kick_builder.set()
        return wait

    async def _enqueue(self, tx: Transaction) -> bytes:
        await self._queue(tx).stored.wait()
        return tx.id

    async def wait_for(self, check: Callable[[], Awaitable[bool]]) -> None:
        """Return once `check()` holds; it is re-checked after every batch of decisions."""
        while True:
            decided = self._decided
            if await check():
                return
            await decided.wait()

    async def tx_status(self, tx_id: bytes) -> str:
        """`applied`, `failed`, `waiting`, `rejected` (from the store), else `unknown`."""
        return await self._call(tx_status_of, self.engine, tx_id)

    async def wait_decided(self, tx_id: bytes, timeout_s: float) -> str:
        """`accepted`, `applied`, `failed: ...`, `rejected`, or `pending` after `timeout_s`."""
        wait = self._waits.get(tx_id)
        if wait is None:
            return "unknown"
        with trio.move_on_after(timeout_s):
            await wait.decided.wait()
        return wait.outcome

    # -- vertices in ----------------------------------------------------------------------

    async def ingest(self, data: bytes, peer: str | None, *, fetch: bool = True) -> set[bytes]:
        """A vertex from gossip or sync: add it, or park it until its parents are here (and
        fetch them later, unless `fetch` is False). Adds what waited on it. Returns the ids
        still missing."""
        pending = deque([(data, peer)])
        missing: set[bytes] = set()
        while pending:
            data, peer = pending.popleft()
            try:
                received = await self._call(self._receive, data, peer)
            except RemoteProtocolError as exc:
                self._penalize(peer, exc)
                continue
            if received.status == "missing":
                self._park(received, data, peer, fetch=fetch)
                missing.update(received.missing)
            elif received.status == "added":
                missing.discard(received.vertex_id)
                self._seen.setdefault(received.vertex_id, trio.current_time())
                self._kick_poller.set()
                pending.extend(self._orphans.release(received.vertex_id))
        return missing

    def _receive(self, data: bytes, peer: str | None) -> Received:
        account = self._account_of(peer) if peer else None
        return self.engine.receive(data, now_ms=self._now_ms(), peer=account)

    def _park(self, received: Received, data: bytes, peer: str | None, *, fetch: bool) -> None:
        if not self._orphans.park(received.vertex_id, data, peer, received.missing):
            return
        wanted = [m for m in received.missing if m not in self._fetching]
        if fetch and wanted and self._nursery is not None:
            self._fetching.update(wanted)
            self._nursery.start_soon(self._fetch_missing, peer, wanted)

    async def _fetch_missing(self, peer: str | None, wanted: list[bytes]) -> None:
        """Parents a parked vertex lacks: give gossip a moment to bring them, then fetch
        them from the peer that sent the child, else from other members."""
        asked = list(wanted)
        try:
            # Gossip usually delivers a parent within this grace; a fetch costs a new stream.
            await trio.sleep(ORPHAN_GRACE_S)
            members = [e.peer_id for e in self.p2p.peers.connected_members() if e.peer_id != peer]
            random.shuffle(members)
            for source in ([peer] if peer else []) + members[:FETCH_SOURCES]:
                wanted = [w for w in wanted if self._orphans.is_wanted(w)]
                if not wanted:
                    return
                await self._fetch_vertices(source, wanted)
        finally:
            self._fetching.difference_update(asked)

    async def _fetch_vertices(
        self, peer: str, wanted: list[bytes], *, ancestry: bool = False
    ) -> None:
        """Fetch `wanted` from `peer` and ingest what it sends; failures are only logged.
        With `ancestry`, also fetch from `peer` every ancestor we turn out to lack (a peer
        that asks us about a vertex holds all of its ancestors)."""
        try:
            while wanted:
                missing: set[bytes] = set()
                for start in range(0, len(wanted), wire.MAX_GET_IDS):
                    batch = tuple(wanted[start : start + wire.MAX_GET_IDS])
                    with trio.fail_after(10):
                        answer = await fetch_vertices(
                            self.p2p.open_stream, ids.DAG_SYNC, peer, batch
                        )
                    for item in answer.items:
                        missing |= await self.ingest(item, peer, fetch=not ancestry)
                wanted = [m for m in missing if self._orphans.is_wanted(m)] if ancestry else []
        except (NetworkError, RemoteProtocolError, trio.TooSlowError) as exc:
            log.debug("fetch from %s failed: %s", peer, exc)

    async def sync_from(self, peer: str) -> None:
        """Pull what `peer` has and we lack: its frontier, then ancestors as they are missed."""
        try:
            with trio.fail_after(10):
                answer = await fetch_frontier(self.p2p.open_stream, ids.DAG_SYNC, peer)
        except (NetworkError, RemoteProtocolError, trio.TooSlowError) as exc:
            log.debug("sync from %s failed: %s", peer, exc)
            return
        unknown = await self._call(lambda: [i for i in answer.ids if not self.engine.knows(i)])
        unknown = [i for i in unknown if i not in self._fetching]
        if unknown:
            self._fetching.update(unknown)
            try:
                await self._fetch_vertices(peer, unknown)
            finally:
                self._fetching.difference_update(unknown)

    async def _gossip_reader(self, subscription: Any) -> None:
        while True:
            message = await subscription.get()
            peer = ID(message.from_id).to_base58()
            if peer != self.p2p.peer_id:
                await self.ingest(message.data, peer)

    # -- answering peers ------------------------------------------------------------------

    async def _serve_query(self, stream: Stream) -> None:
        await serve_query(stream, self._answer)

    async def _answer(self, peer: str, vertex_ids: tuple[bytes, ...]) -> tuple[bool, ...]:
        votes, unknown = await self._call(self._votes, vertex_ids)
        self.queries_answered += len(vertex_ids)
        self.queries_unknown += len(unknown)
        if unknown:
            # A query can outrun gossip: fetch from the asker, then answer for real.
            with trio.move_on_after(self.settings.params.query_timeout_s / 2):
                await self._fetch_vertices(peer, unknown, ancestry=True)
            votes, _ = await self._call(self._votes, vertex_ids)
        return votes

    def _votes(self, vertex_ids: tuple[bytes, ...]) -> tuple[tuple[bool, ...], list[bytes]]:
        unknown = [v for v in vertex_ids if not self.engine.knows(v)]
        return tuple(self.engine.vote_for(v) for v in vertex_ids), unknown

    async def _serve_sync(self, stream: Stream) -> None:
        async def frontier() -> list[bytes]:
            return await self._call(self.engine.frontier)

        async def bodies(wanted: tuple[bytes, ...]) -> list[bytes]:
            return await self._call(
                lambda: [b for v in wanted if (b := self.engine.vertex_bytes(v)) is not None]
            )

        await serve_sync(stream, frontier, bodies, self._sync_limit)

    # -- voting ---------------------------------------------------------------------------

    async def _poller(self) -> None:
        params = self.settings.params
        while True:
            polls = await self._call(self.engine.polls_to_send, trio.current_time())
            by_peer: dict[bytes, list[tuple[int, bytes]]] = {}
            for poll in polls:
                for account in poll.peers:
                    by_peer.setdefault(account, []).append((poll.poll_id, poll.vertex_id))
            assert self._nursery is not None
            for account, asks in by_peer.items():
                self._nursery.start_soon(self._ask, account, asks)
            if not polls and await self._call(self.engine.needs_vertex):
                self._kick_builder.set()
            # Open polls need their deadlines checked; with none, wait for something to do.
            busy = bool(polls) or self.engine.avalanche.outstanding_polls > 0  # a len()
            with trio.move_on_after(params.query_timeout_s / 4 if busy else math.inf):
                await self._kick_poller.wait()
            self._kick_poller = trio.Event()

    async def _ask(self, account: bytes, asks: list[tuple[int, bytes]]) -> None:
        peer = self._peer_of(account)
        if peer is None:
            return  # an unreachable validator: its votes count as no at the deadline
        channel = self._channels.get(peer)
        if channel is None:
            channel = self._channels[peer] = QueryChannel(peer, self.p2p.open_stream, ids.DAG_QUERY)
        started = trio.current_time()
        try:
            with trio.fail_after(self.settings.params.query_timeout_s):
                votes = await channel.ask([vertex_id for _, vertex_id in asks])
            self.query_rtt.add(trio.current_time(), trio.current_time() - started)
        except (NetworkError, RemoteProtocolError, trio.TooSlowError) as exc:
            log.debug("query to %s failed: %s", peer, exc)
            return
        await self._call(self._apply_votes, account, [p for p, _ in asks], votes)
        self._kick_poller.set()

    def _apply_votes(self, account: bytes, poll_ids: list[int], votes: tuple[bool, ...]) -> None:
        for poll_id, yes in zip(poll_ids, votes, strict=True):
            self.engine.on_vote(poll_id, account, yes)

    # -- building vertices ----------------------------------------------------------------

    async def _builder(self) -> None:
        settings = self.settings
        while True:
            await self._kick_builder.wait()
            self._kick_builder = trio.Event()
            if self._mempool:
                await trio.sleep(settings.batch_window_s)  # a deliberate delay: let a batch gather
                while self._mempool:
                    await self._build(self._take_batch())
            elif await self._call(self.engine.needs_vertex):
                # Votes only reach a vertex through its descendants; issue an empty one, at a
                # bounded rate, when nothing else would.
                await trio.sleep_until(self._last_empty + settings.empty_vertex_interval_s)
                self._last_empty = trio.current_time()
                await self._build([])

    def _take_batch(self) -> list[Transaction]:
        """The oldest queued transactions that fit one vertex and one gossip message."""
        size = 0
        for count, tx in enumerate(self._mempool[:MAX_BATCH]):
            size += PUBLIC_KEY_BYTES[tx.public_key.scheme] + SIGNATURE_BYTES[tx.public_key.scheme]
            size += TX_OVERHEAD_BYTES
            if size > MAX_BATCH_BYTES and count > 0:
                break
        else:
            count = min(len(self._mempool), MAX_BATCH)
        batch, self._mempool = self._mempool[:count], self._mempool[count:]
        return batch

    async def _build(self, batch: list[Transaction]) -> None:
        for tx in batch:
            self._queued.discard(tx.conflict_key)
        try:
            vertex = await self._call(self.engine.build_vertex, self.key, batch, self._now_ms())
        except SwarmError as exc:
            # Something in the batch went stale while it queued (its nonce got decided by a
            # vertex from elsewhere): fail just those transactions, queue the rest again.
            log.warning("could not build a vertex: %s", exc)
            verdicts = await self._call(self._recheck, batch)
            for tx, problem in zip(batch, verdicts, strict=True):
                if problem is None:
                    self._queue_again(tx)
                elif (wait := self._waits.pop(tx.id, None)) is not None:
                    wait.outcome = f"failed: {problem}"
                    wait.stored.set()
                    wait.decided.set()
                    if tx.account == self.key.account_id:
                        self._next_nonce = None  # recount: our dropped tx must leave no gap
            return
        now = trio.current_time()
        self._seen[vertex.id] = now
        for tx in batch:
            if (wait := self._waits.get(tx.id)) is not None:
                wait.stored.set()
        self._kick_poller.set()
        await self.p2p.publish(ids.TOPIC_DAG, vertex.to_bytes())

    def _recheck(self, batch: list[Transaction]) -> list[str | None]:
        problems: list[str | None] = []
        for tx in batch:
            try:
                self.engine.check_transaction(tx)
                problems.append(None)
            except SwarmError as exc:
                problems.append(str(exc))
        return problems

    def _queue_again(self, tx: Transaction) -> None:
        self._queued.add(tx.conflict_key)
        self._mempool.append(tx)
        self._kick_builder.set()

    # -- events ---------------------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        if events:
            self._decided.set()
            self._decided = trio.Event()
        now = trio.current_time()
        for event in events:
            if isinstance(event, VertexAccepted):
                seen = self._seen.pop(event.vertex_id, None)
                if seen is not None:
                    self.vertex_latency.add(now, now - seen)
            elif isinstance(event, TxAccepted | TxApplied | TxRejected):
                if isinstance(event, TxAccepted):
                    self.txs_accepted += 1
                self._settle_wait(event, now)
            else:
                self._seen.pop(event.vertex_id, None)

    def _settle_wait(self, event: TxAccepted | TxApplied | TxRejected, now: float) -> None:
        wait = self._waits.get(event.tx_id)
        if wait is None:
            return
        if isinstance(event, TxAccepted):
            wait.outcome = "applied" if event.applied else "accepted"
            self.tx_latency.add(now, now - wait.submitted)
        elif isinstance(event, TxApplied):
            wait.outcome = "applied" if event.ok else f"failed: {event.reason}"
        else:
            wait.outcome = "rejected"
        wait.decided.set()
        if wait.outcome != "accepted":  # "accepted" may still turn into applied or failed
            self._waits.pop(event.tx_id, None)

    # -- peers ----------------------------------------------------------------------------

    def _account_of(self, peer: str) -> bytes | None:
        entry = self.p2p.peers.get(peer)
        return bytes.fromhex(entry.account) if entry is not None and entry.account else None

    def _peer_of(self, account: bytes) -> str | None:
        hexed = account.hex()
        for entry in self.p2p.peers.connected_members():
            if entry.account == hexed:
                return entry.peer_id
        return None

    def _penalize(self, peer: str | None, exc: SwarmError) -> None:
        log.info("rejected vertex from %s: %s", peer or "?", exc)
        if peer is not None:
            self.p2p.peers.on_misbehaved(peer, str(exc))

    # -- reads for the local API ------------------------------------------------------------

    async def status(self, window_s: float = METRICS_WINDOW_S) -> dict[str, Any]:
        stats = await self._call(self.engine.stats)
        return {
            **stats,
            "txs_accepted": self.txs_accepted,
            "query_rtt": self.query_rtt.summary(window_s),
            "queries_answered": self.queries_answered,
            "queries_unknown": self.queries_unknown,
            "orphans": len(self._orphans),
            "mempool": len(self._mempool),
            "finality": self.vertex_latency.summary(window_s),
            "tx_finality": self.tx_latency.summary(window_s),
            "window_s": window_s,
        }

    async def balance(self, account: bytes) -> dict[str, Any]:
        return await self._call(balance_view, self.engine, account)

    async def balances(self) -> list[dict[str, Any]]:
        """Balances of the genesis accounts."""
        return [
            {"name": a.name, **await self.balance(a.account)} for a in self.engine.genesis.accounts
        ]

    async def vertex_info(self, vertex_id: bytes) -> dict[str, Any] | None:
        return await self._call(vertex_view, self.engine, vertex_id)
