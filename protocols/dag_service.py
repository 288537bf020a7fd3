"""Drives the sans-IO DAG engine over libp2p: dissemination, polls to real peers, sync.

One lock serialises every engine call. Calls that may verify signatures or write the store
run in a worker thread (they would otherwise stall the loop); short reads run inline under
the same lock, since a thread hand-off costs more than they do. The tasks that use it: the
vertex readers (push and gossip), the poller, the wallet's builder (`dag_wallet`), and the
stream handlers peers call.

New vertices reach peers in one hop over `/swarm/dag/push/1.0.0` when every member is a
direct peer and they are few (the loopback mesh), else over gossipsub on `swarm/dag/1`;
both paths end in `ingest`. Polls go to each peer through an `Outbox`, so the polls that
queue while one query is in flight share the next query message.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import trio
from libp2p.peer.id import ID

from dag.avalanche import PollRequest, VertexAccepted
from dag.crypto import SigningKey
from dag.engine import Engine, Event, TxAccepted, TxApplied, TxRejected
from dag.errors import RemoteProtocolError
from dag.kinds import locked_under
from dag.params import Params
from dag.tx import Transaction
from dag.vertex import Vertex
from protocols import dag_wire as wire
from protocols import ids
from protocols.dag_announce import Announcer
from protocols.dag_intake import Intake
from protocols.dag_sync import (
    Outbox,
    QueryChannel,
    RateLimit,
    serve_push,
    serve_query,
    serve_sync,
)
from protocols.dag_views import balance_view, totals_view, tx_status_of, vertex_view
from protocols.dag_wallet import BatchSettings, InsufficientCredits, Wallet
from protocols.errors import NetworkError
from protocols.metrics import METRICS_WINDOW_S, Latencies
from protocols.stream import Stream

if TYPE_CHECKING:
    from protocols.p2p import P2PService

__all__ = ["DagService", "DagSettings", "InsufficientCredits"]

log = logging.getLogger("swarm.dag")
T = TypeVar("T")
OUTBOX_LIMIT = 4096  # polls waiting for one peer


@dataclass(frozen=True, slots=True)
class DagSettings:
    params: Params
    batch_window_s: float = 0.05  # how long a transaction waits for others to share a vertex
    empty_vertex_interval_s: float = 0.1  # the fastest rate of vertices with no transactions
    sync_rate: float = 5000.0  # vertices a peer may fetch from us per second


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
        self._votes_in: list[tuple[bytes, list[int], tuple[bool, ...]]] = []
        self._seen: dict[bytes, float] = {}  # vertex id -> when we first held it
        self._added = trio.Event()  # pulsed whenever a vertex is added
        self._queries: dict[bytes, Outbox[tuple[int, bytes]]] = {}  # by account
        self._channels: dict[str, QueryChannel] = {}  # by peer id, while it is connected
        validators = {  # hex, as the peer table keeps accounts
            a.account.hex()
            for a in engine.genesis.accounts
            if a.stake > 0 and a.account != key.account_id
        }
        # A push waits behind the peer's reading; past this the peer fetches instead.
        self.announcer = Announcer(p2p, validators, settings.params.query_timeout_s * 4)
        self._sync_limit = RateLimit(settings.sync_rate, settings.sync_rate * 2)
        self.intake = Intake(
            engine=engine,
            p2p=p2p,
            call=self._call,
            inline=self._inline,
            on_added=self._on_added,
            wall_clock=wall_clock,
        )
        self.wallet = Wallet(
            engine=engine,
            key=key,
            call=self._call,
            announce=self._announce,
            settings=BatchSettings(settings.batch_window_s, settings.empty_vertex_interval_s),
            wall_clock=wall_clock,
        )
        self.vertex_latency = Latencies()
        self._nursery: trio.Nursery | None = None
        self._decided = trio.Event()  # pulsed after every batch of decisions
        self.query_rtt = Latencies()  # our polls: time until a peer's votes came back
        self.queries_answered = 0
        self.calls_threaded = 0  # engine calls run in a worker thread
        self.calls_inline = 0
        self.voting_rounds = 0
        self.queries_unknown = 0  # asked about a vertex we did not hold yet

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        subscription = await self.p2p.subscribe(ids.TOPIC_DAG)
        self.p2p.set_handler(ids.DAG_QUERY, self._serve_query)
        self.p2p.set_handler(ids.DAG_SYNC, self._serve_sync)
        self.p2p.set_handler(ids.DAG_PUSH, self._serve_push)

        def joined(peer: str) -> None:
            nursery.start_soon(self.intake.sync_from, peer)

        def left(peer: str) -> None:
            # Its stream went with the connection; a member that comes back gets a new one.
            self._channels.pop(peer, None)

        async with trio.open_nursery() as nursery:
            self._nursery = self.intake.nursery = self.announcer.nursery = nursery
            nursery.start_soon(self._gossip_reader, subscription)
            nursery.start_soon(self._poller)
            nursery.start_soon(self.wallet.run_builder)
            for entry in self.p2p.peers.connected_members():
                nursery.start_soon(self.intake.sync_from, entry.peer_id)
            with self.p2p.member_events(joined=joined, left=left):
                task_status.started(self)
                try:
                    await trio.sleep_forever()
                finally:
                    # Handlers run in the host's tasks and may outlive us: nothing new starts.
                    self._nursery = self.intake.nursery = self.announcer.nursery = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one engine call in a worker thread, then act on the events it produced."""

        def work() -> tuple[T, list[Event]]:
            return fn(*args), self.engine.drain_events()

        self.calls_threaded += 1
        async with self._lock:
            result, events = await trio.to_thread.run_sync(work)
        self._on_events(events)
        return result

    async def _inline(self, fn: Callable[..., T], *args: Any) -> T:
        """Run one short engine call that neither verifies nor writes, on the loop."""
        self.calls_inline += 1
        async with self._lock:
            result = fn(*args)
            events = self.engine.drain_events()
        self._on_events(events)
        return result

    # -- transactions in (see `Wallet`) ---------------------------------------------------

    async def transfer(self, to: bytes, amount: int) -> bytes:
        """Sign a transfer from our account and submit it; returns once it is stored."""
        return await self.wallet.transfer(to, amount)

    async def send(
        self,
        kind: str,
        payload: tuple[Any, ...],
        *,
        keep: Callable[[Transaction], None] | None = None,
    ) -> Transaction:
        """Sign a transaction of `kind` from our account and submit it (see `Wallet.send`)."""
        return await self.wallet.send(kind, payload, keep=keep)

    async def submit(self, tx: Transaction) -> bytes:
        """Submit a transaction someone else signed; returns once it is stored."""
        return await self.wallet.submit(tx)

    async def locked(self, key: bytes) -> int:
        """Credits the ledger holds locked under `key` (a channel's deposit while it is open)."""
        return await self._inline(self.engine.ledger.amount, locked_under(key))

    async def submit_many(self, txs: list[Transaction]) -> list[str]:
        """Submit signed transactions; one status each (`stored`, or why it was refused)."""
        return await self.wallet.submit_many(txs)

    async def wait_decided(self, tx_id: bytes, timeout_s: float) -> str:
        """`accepted`, `applied`, `failed: ...`, `rejected`, or `pending` after `timeout_s`."""
        return await self.wallet.wait_decided(tx_id, timeout_s)

    async def wait_for(self, check: Callable[[], Awaitable[bool]]) -> None:
        """Return once `check()` holds; it is re-checked after every batch of decisions."""
        while True:
            decided = self._decided
            if await check():
                return
            await decided.wait()

    async def tx_status(self, tx_id: bytes) -> str:
        """`applied`, `failed`, `waiting`, `rejected` (from the store), else `unknown`."""
        return await self._inline(tx_status_of, self.engine, tx_id)

    # -- vertices in (see `Intake`) -------------------------------------------------------

    async def ingest(self, data: bytes, peer: str | None, *, fetch: bool = True) -> set[bytes]:
        """A vertex from a peer: add it, or park it until its parents are here (fetching
        them, unless `fetch` is False). Returns the ids still missing."""
        return await self.intake.ingest(data, peer, fetch=fetch)

    def _on_added(self, vertex_id: bytes) -> None:
        self._seen.setdefault(vertex_id, trio.current_time())
        self._kick_poller.set()
        self._added.set()
        self._added = trio.Event()

    async def _gossip_reader(self, subscription: Any) -> None:
        while True:
            message = await subscription.get()
            peer = ID(message.from_id).to_base58()
            if peer != self.p2p.peer_id:
                await self.ingest(message.data, peer)

    async def _serve_push(self, stream: Stream) -> None:
        await serve_push(stream, self.ingest)

    # -- vertices out (see `Announcer`) ---------------------------------------------------

    async def _announce(self, vertex: Vertex) -> None:
        self._seen[vertex.id] = trio.current_time()
        await self.announcer.announce(vertex.to_bytes())
        self._kick_poller.set()

    # -- answering peers ------------------------------------------------------------------

    async def _serve_query(self, stream: Stream) -> None:
        await serve_query(stream, self._answer)

    async def _answer(self, peer: str, vertex_ids: tuple[bytes, ...]) -> tuple[bool, ...]:
        votes, unknown = await self._inline(self._votes, vertex_ids)
        self.queries_answered += len(vertex_ids)
        self.queries_unknown += len(unknown)
        if unknown:
            # A query can outrun the vertex it names: wait a little for push or gossip to
            # bring it. Past that, answer now (unknown is a no) and fetch it from the asker
            # meanwhile: a fetch here would hold up every later query on this stream.
            with trio.move_on_after(self.settings.params.query_timeout_s / 8):
                while unknown:
                    await self._added.wait()
                    unknown = await self._inline(self._unknown, unknown)
            if unknown:
                self.intake.fetch_soon(peer, unknown)
            votes, _ = await self._inline(self._votes, vertex_ids)
        return votes

    def _votes(self, vertex_ids: tuple[bytes, ...]) -> tuple[tuple[bool, ...], list[bytes]]:
        return tuple(self.engine.vote_for(v) for v in vertex_ids), self._unknown(vertex_ids)

    def _unknown(self, vertex_ids: tuple[bytes, ...] | list[bytes]) -> list[bytes]:
        return [v for v in vertex_ids if not self.engine.knows(v)]

    async def _serve_sync(self, stream: Stream) -> None:
        async def frontier() -> list[bytes]:
            return await self._inline(self.engine.frontier)

        async def bodies(wanted: tuple[bytes, ...]) -> list[bytes]:
            return await self._inline(
                lambda: [b for v in wanted if (b := self.engine.vertex_bytes(v)) is not None]
            )

        await serve_sync(stream, frontier, bodies, self._sync_limit)

    # -- voting ---------------------------------------------------------------------------

    async def _poller(self) -> None:
        """Each round, in one engine call: apply the votes that came back, close overdue
        polls, open new ones; then queue each new poll to its peers' outboxes."""
        params = self.settings.params
        while True:
            votes, self._votes_in = self._votes_in, []
            self.voting_rounds += 1
            polls, wants_vertex = await self._call(self._voting_round, votes, trio.current_time())
            # A worker thread's call finishes even when we are cancelled meanwhile (the node
            # stopping): stop here, before queueing to outboxes whose nursery is gone.
            await trio.lowlevel.checkpoint_if_cancelled()
            for poll in polls:
                for account in poll.peers:
                    self._query_outbox(account).put((poll.poll_id, poll.vertex_id))
            if wants_vertex:
                self.wallet.kick()
            # Open polls need their deadlines checked; with none, wait for something to do.
            busy = bool(polls) or self.engine.avalanche.outstanding_polls > 0  # a len()
            with trio.move_on_after(params.query_timeout_s / 4 if busy else math.inf):
                await self._kick_poller.wait()
            self._kick_poller = trio.Event()

    def _voting_round(
        self, votes: list[tuple[bytes, list[int], tuple[bool, ...]]], now: float
    ) -> tuple[list[PollRequest], bool]:
        for account, poll_ids, yes in votes:
            for poll_id, vote in zip(poll_ids, yes, strict=True):
                self.engine.on_vote(poll_id, account, vote)
        polls = self.engine.polls_to_send(now)
        return polls, not polls and self.engine.needs_vertex()

    def _query_outbox(self, account: bytes) -> Outbox[tuple[int, bytes]]:
        outbox = self._queries.get(account)
        if outbox is None:

            async def send(asks: list[tuple[int, bytes]]) -> None:
                await self._ask(account, asks)

            outbox = self._queries[account] = Outbox(
                send, batch=wire.MAX_QUERY_IDS, limit=OUTBOX_LIMIT
            )
            assert self._nursery is not None
            self._nursery.start_soon(outbox.run)
        return outbox

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
        self._votes_in.append((account, [p for p, _ in asks], votes))
        self._kick_poller.set()

    # -- events ---------------------------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        if events:
            self._decided.set()
            self._decided = trio.Event()
            self.wallet.kick()  # a decision may make room for the mempool's next vertex
        now = trio.current_time()
        for event in events:
            if isinstance(event, VertexAccepted):
                seen = self._seen.pop(event.vertex_id, None)
                if seen is not None:
                    self.vertex_latency.add(now, now - seen)
            elif isinstance(event, TxAccepted | TxApplied | TxRejected):
                self.wallet.on_tx_event(event, now)
            else:
                self._seen.pop(event.vertex_id, None)

    # -- peers ----------------------------------------------------------------------------

    def _peer_of(self, account: bytes) -> str | None:
        hexed = account.hex()
        for entry in self.p2p.peers.connected_members():
            if entry.account == hexed:
                return entry.peer_id
        return None

    # -- reads for the local API ------------------------------------------------------------

    async def status(self, window_s: float = METRICS_WINDOW_S) -> dict[str, Any]:
        stats = await self._call(self.engine.stats)
        return {
            **stats,
            "txs_accepted": self.wallet.txs_accepted,
            "query_rtt": self.query_rtt.summary(window_s),
            "queries_answered": self.queries_answered,
            "queries_unknown": self.queries_unknown,
            "engine_calls": {"threaded": self.calls_threaded, "inline": self.calls_inline},
            "voting_rounds": self.voting_rounds,
            **self.announcer.stats(),
            "orphan_fetches": self.intake.orphan_fetches,
            "orphans": self.intake.orphans,
            "mempool": len(self.wallet),
            "finality": self.vertex_latency.summary(window_s),
            "tx_finality": self.wallet.tx_latency.summary(window_s),
            "window_s": window_s,
        }

    async def balance(self, account: bytes) -> dict[str, Any]:
        return await self._inline(balance_view, self.engine, account)

    async def balances(self) -> list[dict[str, Any]]:
        """Balances of the genesis accounts."""
        return [
            {"name": a.name, **await self.balance(a.account)} for a in self.engine.genesis.accounts
        ]

    async def totals(self) -> dict[str, int]:
        """The supply, and how much of it is in balances and how much locked."""
        return await self._inline(totals_view, self.engine)

    async def vertex_info(self, vertex_id: bytes) -> dict[str, Any] | None:
        return await self._call(vertex_view, self.engine, vertex_id)
