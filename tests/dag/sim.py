"""A simulated network of in-process engines, with no sockets and no real time.

Messages (gossiped vertices, queries, answers, sync fetches) go through one event queue
ordered by simulated time. A seeded `random.Random` picks delays and drops, so a run is the
same every time. Byzantine voters answer queries at random or inverted; everything else
about them is honest (they store and gossip vertices), which is what makes their votes hurt.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from dag.avalanche import PollRequest
from dag.crypto import SigningKey
from dag.engine import Engine, TxAccepted
from dag.genesis import Genesis
from dag.params import Params
from dag.store import Store, VertexStatus
from dag.tx import Transaction
from dag.vertex import Vertex
from tests.dag.helpers import GENESIS_MS, REGISTRY


@dataclass
class SimNode:
    index: int
    key: SigningKey
    engine: Engine
    byzantine: str = ""  # "", "random" or "inverted"
    mempool: list[Transaction] = field(default_factory=list)
    last_build: float = -1.0
    offline: bool = False  # a stopped process: it neither sends nor receives

    @property
    def account(self) -> bytes:
        return self.key.account_id


class Network:
    """N engines and the messages between them."""

    def __init__(
        self,
        genesis: Genesis,
        keys: list[SigningKey],
        params: Params,
        *,
        seed: int = 0,
        drop: float = 0.0,
        byzantine: dict[int, str] | None = None,
        store_paths: list[str] | None = None,
    ) -> None:
        self.genesis = genesis
        self.params = params
        self.rng = random.Random(seed)
        self.drop = drop
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        byzantine = byzantine or {}
        paths = store_paths or [":memory:"] * len(keys)
        self.nodes = [
            SimNode(i, k, self._engine(k, paths[i], seed * 1000 + i), byzantine.get(i, ""))
            for i, k in enumerate(keys)
        ]

    def _engine(self, key: SigningKey, path: str, seed: int) -> Engine:
        store = Store.open(path, self.genesis.digest)
        return Engine.open(self.genesis, store, self.params, key.account_id, random.Random(seed))

    def restart(self, node: SimNode, path: str) -> None:
        """A new engine on the same store file (the caller closed the old one), which then
        syncs: it asks one peer for its frontier and pulls what it lacks."""
        node.engine = self._engine(node.key, path, node.index + 500)
        node.offline = False
        peer = next(n for n in self.honest if n is not node)
        for vertex_id in peer.engine.frontier():
            body = peer.engine.vertex_bytes(vertex_id)
            if body is not None:
                self.later(self.delay(), partial(self.deliver, node, body))

    @property
    def in_flight(self) -> int:
        """Messages not delivered yet."""
        return len(self._queue)

    @property
    def honest(self) -> list[SimNode]:
        return [n for n in self.nodes if not n.byzantine]

    def now_ms(self) -> int:
        return GENESIS_MS + 1_000 + int(self.now * 1000)

    def later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, (self.now + delay, next(self._seq), action))

    def delay(self) -> float:
        return self.rng.uniform(0.001, 0.02)

    # -- dissemination --------------------------------------------------------------------

    def gossip(self, origin: SimNode, data: bytes, targets: list[SimNode] | None = None) -> None:
        for node in targets if targets is not None else self.nodes:
            if node is not origin:
                self.later(self.delay(), partial(self.deliver, node, data))

    def deliver(self, node: SimNode, data: bytes) -> None:
        if node.offline:
            return
        result = node.engine.receive(data, now_ms=self.now_ms())
        for missing in result.missing:
            self.later(self.delay(), partial(self._sync, node, missing, data))

    def _sync(self, node: SimNode, missing: bytes, waiting: bytes) -> None:
        # A sync fetch: any node that holds the vertex serves it; then retry the waiting one.
        for other in self.nodes:
            body = other.engine.vertex_bytes(missing)
            if body is not None:
                self.deliver(node, body)
                break
        self.deliver(node, waiting)

    # -- voting ---------------------------------------------------------------------------

    def _poll(self, node: SimNode) -> None:
        by_account = {n.account: n for n in self.nodes}
        for req in node.engine.polls_to_send(self.now):
            for peer in req.peers:
                if self.rng.random() < self.drop:
                    continue  # lost: the poll's deadline counts it as no
                target = by_account[peer]
                self.later(self.delay(), partial(self._query, node, target, req))

    def _query(self, asker: SimNode, peer: SimNode, req: PollRequest) -> None:
        if peer.offline or asker.offline:
            return
        if peer.engine.vertex_bytes(req.vertex_id) is None:
            body = asker.engine.vertex_bytes(req.vertex_id)
            if body is not None:
                self.deliver(peer, body)
        answer = peer.engine.vote_for(req.vertex_id)
        if peer.byzantine == "random":
            answer = self.rng.random() < 0.5
        elif peer.byzantine == "inverted":
            answer = not answer
        self.later(self.delay(), lambda: asker.engine.on_vote(req.poll_id, peer.account, answer))

    def _build(self, node: SimNode) -> None:
        if node.mempool or (node.engine.needs_vertex() and self.now - node.last_build > 0.05):
            txs, node.mempool = node.mempool[:64], node.mempool[64:]
            vertex = node.engine.build_vertex(node.key, txs, self.now_ms())
            node.last_build = self.now
            self.gossip(node, vertex.to_bytes())

    # -- running --------------------------------------------------------------------------

    def run(self, seconds: float, *, tick: float = 0.01) -> None:
        end = self.now + seconds
        next_tick = self.now
        while self.now < end:
            if self._queue and self._queue[0][0] <= next_tick:
                self.now, _, action = heapq.heappop(self._queue)
                action()
                continue
            self.now = next_tick
            next_tick += tick
            for node in self.nodes:
                if not node.offline:
                    self._build(node)
                    self._poll(node)

    def inject(self, origin: SimNode, vertex: Vertex, targets: list[SimNode]) -> None:
        """Hand a vertex built outside the engines to some nodes (and only those, at first)."""
        for node in targets:
            self.later(self.delay(), partial(self.deliver, node, vertex.to_bytes()))

    # -- what the tests compare -----------------------------------------------------------

    def accepted(self, node: SimNode) -> set[bytes]:
        return set(node.engine.store.accepted_ids(limit=1_000_000))

    def accepted_txs(self, node: SimNode) -> set[bytes]:
        return {tx.id for vid in self.accepted(node) for tx in _vertex(node, vid).txs}

    def balances(self, node: SimNode) -> dict[bytes, int]:
        return {a.account: node.engine.ledger.balance(a.account) for a in self.genesis.accounts}


def _vertex(node: SimNode, vertex_id: bytes) -> Vertex:
    body = node.engine.store.vertex_body(vertex_id)
    assert body is not None
    assert node.engine.store.vertex_status(vertex_id) is VertexStatus.ACCEPTED
    return Vertex.from_bytes(body, REGISTRY, chain=node.engine.chain)


def tx_events(node: SimNode) -> list[TxAccepted]:
    return [e for e in node.engine.drain_events() if isinstance(e, TxAccepted)]
