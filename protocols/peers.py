"""The peer table: who we are connected to, who passed hello on our chain, and how fast."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import trio


@dataclass(slots=True)
class PeerEntry:
    peer_id: str
    connected: bool = False
    member: bool = False  # passed hello: same genesis, valid account binding
    name: str = ""
    account: str = ""
    addrs: list[str] = field(default_factory=list)
    refused: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    rtt_ms: float | None = None
    score: int = 0  # lowered for every malformed or invalid message the peer sends


class PeerTable:
    """Peer state, plus a change pulse so waiters wake on events instead of polling."""

    def __init__(self, wall_clock: Callable[[], float]) -> None:
        self._clock = wall_clock
        self._peers: dict[str, PeerEntry] = {}
        self._changed = trio.Event()

    def _touch(self, peer_id: str) -> PeerEntry:
        now = self._clock()
        entry = self._peers.get(peer_id)
        if entry is None:
            entry = self._peers[peer_id] = PeerEntry(peer_id, first_seen=now)
        entry.last_seen = now
        return entry

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def on_connected(self, peer_id: str) -> None:
        self._touch(peer_id).connected = True
        self._pulse()

    def on_disconnected(self, peer_id: str) -> None:
        entry = self._touch(peer_id)
        entry.connected = False
        entry.rtt_ms = None
        self._pulse()

    def on_member(self, peer_id: str, *, name: str, account: str, addrs: list[str]) -> None:
        entry = self._touch(peer_id)
        entry.member, entry.refused = True, ""
        entry.name, entry.account, entry.addrs = name, account, list(addrs)
        self._pulse()

    def on_refused(self, peer_id: str, reason: str) -> None:
        entry = self._touch(peer_id)
        entry.member, entry.refused = False, reason
        self._pulse()

    def on_rtt(self, peer_id: str, rtt_ms: float) -> None:
        entry = self._touch(peer_id)
        entry.rtt_ms = rtt_ms
        self._pulse()

    def on_misbehaved(self, peer_id: str, reason: str) -> None:
        entry = self._touch(peer_id)
        entry.score -= 1
        self._pulse()

    def connected_members(self) -> list[PeerEntry]:
        return [e for e in self._peers.values() if e.connected and e.member]

    def connected_ids(self) -> list[str]:
        return [e.peer_id for e in self._peers.values() if e.connected]

    def snapshot(self) -> list[dict[str, Any]]:
        rows = sorted(self._peers.values(), key=lambda e: (not e.connected, e.name, e.peer_id))
        return [asdict(e) for e in rows]

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once `predicate()` holds; it is re-checked after every change."""
        while not predicate():
            await self._changed.wait()

    async def wait_for_members(self, count: int) -> None:
        """Return once at least `count` member peers are connected."""
        await self.wait_until(lambda: len(self.connected_members()) >= count)

    async def wait_disconnected(self, peer_id: str) -> None:
        """Return once `peer_id` is not connected."""
        await self.wait_until(lambda: not (e := self._peers.get(peer_id)) or not e.connected)
