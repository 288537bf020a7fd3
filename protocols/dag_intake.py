"""Vertices in from peers: add them through the engine, park the ones that arrive before
their parents, and fetch what is missing over `/swarm/dag/sync/1.0.0`.

Push, gossip, sync and the answers to queries all end in `Intake.ingest`. A vertex that
breaks a rule lowers its sender's score and changes nothing.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from dag.engine import Engine, Received
from dag.errors import RemoteProtocolError, SwarmError
from protocols import dag_wire as wire
from protocols import ids
from protocols.dag_orphans import OrphanPool
from protocols.dag_sync import fetch_frontier, fetch_vertices
from protocols.dag_wallet import Call
from protocols.errors import NetworkError

if TYPE_CHECKING:
    from protocols.p2p import P2PService

log = logging.getLogger("swarm.dag")
MAX_ORPHANS = 50_000
ORPHAN_GRACE_S = 0.5
FETCH_SOURCES = 2
FETCH_TIMEOUT_S = 10.0


class Intake:
    """Adds vertices from peers; `on_added(vertex_id)` hears of each one added."""

    def __init__(
        self,
        *,
        engine: Engine,
        p2p: P2PService,
        call: Call,
        inline: Call,
        on_added: Callable[[bytes], None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.p2p = p2p
        self._call = call
        self._inline = inline
        self._on_added = on_added
        self._wall = wall_clock
        self._orphans = OrphanPool(MAX_ORPHANS)
        self._fetching: set[bytes] = set()
        self.orphan_fetches = 0  # parents fetched because push or gossip did not bring them
        # Fetches run here; None once the DAG service stops (handlers may outlive it).
        self.nursery: trio.Nursery | None = None

    @property
    def orphans(self) -> int:
        return len(self._orphans)

    async def ingest(self, data: bytes, peer: str | None, *, fetch: bool = True) -> set[bytes]:
        """A vertex from push, gossip or sync: add it, or park it until its parents are here
        (and fetch them later, unless `fetch` is False). Adds what waited on it. Returns the
        ids still missing."""
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
                self._on_added(received.vertex_id)
                pending.extend(self._orphans.release(received.vertex_id))
        return missing

    def _receive(self, data: bytes, peer: str | None) -> Received:
        account = self._account_of(peer) if peer else None
        return self.engine.receive(data, now_ms=int(self._wall() * 1000), peer=account)

    def _park(self, received: Received, data: bytes, peer: str | None, *, fetch: bool) -> None:
        if not self._orphans.park(received.vertex_id, data, peer, received.missing):
            return
        wanted = [m for m in received.missing if m not in self._fetching]
        if fetch and wanted and self.nursery is not None:
            self._fetching.update(wanted)
            self.nursery.start_soon(self._fetch_missing, peer, wanted)

    async def _fetch_missing(self, peer: str | None, wanted: list[bytes]) -> None:
        """Parents a parked vertex lacks: give push and gossip a moment to bring them, then
        fetch them from the peer that sent the child, else from other members."""
        asked = list(wanted)
        try:
            # A parent usually arrives within this grace; a fetch costs a new stream.
            await trio.sleep(ORPHAN_GRACE_S)
            members = [e.peer_id for e in self.p2p.peers.connected_members() if e.peer_id != peer]
            random.shuffle(members)
            for source in ([peer] if peer else []) + members[:FETCH_SOURCES]:
                wanted = [w for w in wanted if self._orphans.is_wanted(w)]
                if not wanted:
                    return
                self.orphan_fetches += len(wanted)
                await self.fetch_vertices(source, wanted)
        finally:
            self._fetching.difference_update(asked)

    def fetch_soon(self, peer: str, wanted: list[bytes]) -> None:
        """Fetch `wanted` and any ancestors we lack from `peer`, in the background (a peer
        that asks us about a vertex holds all of its ancestors)."""
        wanted = [w for w in wanted if w not in self._fetching]
        if not wanted or self.nursery is None:
            return
        self._fetching.update(wanted)

        async def fetch() -> None:
            try:
                with trio.move_on_after(FETCH_TIMEOUT_S):
                    await self.fetch_vertices(peer, wanted, ancestry=True)
            finally:
                self._fetching.difference_update(wanted)

        self.nursery.start_soon(fetch)

    async def fetch_vertices(
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
        unknown = await self._inline(lambda: [i for i in answer.ids if not self.engine.knows(i)])
        unknown = [i for i in unknown if i not in self._fetching]
        if unknown:
            self._fetching.update(unknown)
            try:
                await self.fetch_vertices(peer, unknown)
            finally:
                self._fetching.difference_update(unknown)

    def _account_of(self, peer: str) -> bytes | None:
        entry = self.p2p.peers.get(peer)
        return bytes.fromhex(entry.account) if entry is not None and entry.account else None

    def _penalize(self, peer: str | None, exc: SwarmError) -> None:
        log.info("rejected vertex from %s: %s", peer or "?", exc)
        if peer is not None:
            self.p2p.peers.on_misbehaved(peer, str(exc))
