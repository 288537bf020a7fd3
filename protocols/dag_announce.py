"""New vertices of ours out to the mesh: pushed to each peer in one hop, or gossiped.

Gossipsub on `swarm/dag/1` reaches every subscriber through a few hops, at the cost of a
signed pubsub message and several forwarded copies per vertex. On a mesh small enough
that every member is a direct peer, a push over `/swarm/dag/push/1.0.0` reaches each of
them in one hop with one copy; that is the case here up to `DIRECT_PUSH_MAX` members, as
long as every staked validator is among them. Otherwise we gossip.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from dag.errors import RemoteProtocolError
from protocols import ids
from protocols.dag_sync import Outbox, PushChannel
from protocols.errors import NetworkError

if TYPE_CHECKING:
    from protocols.p2p import P2PService

log = logging.getLogger("swarm.dag")
DIRECT_PUSH_MAX = 16
PUSH_BATCH = 16  # vertices per push frame (ours are under 256 KiB each)
OUTBOX_LIMIT = 4096


class Announcer:
    """Sends the vertices we build; `validators` are the staked accounts but ours (hex)."""

    def __init__(self, p2p: P2PService, validators: set[str], send_timeout_s: float) -> None:
        self.p2p = p2p
        self._validators = validators
        self._send_timeout_s = send_timeout_s
        self._pushes: dict[str, Outbox[bytes]] = {}  # by peer id
        self.pushed = 0
        self.gossiped = 0
        # The per-peer senders run here; set by the DAG service while it runs.
        self.nursery: trio.Nursery | None = None

    async def announce(self, data: bytes) -> None:
        """Send the bytes of a vertex we built: pushed to each member, or gossiped."""
        members = self._push_targets()
        if members is None:
            self.gossiped += 1
            await self.p2p.publish(ids.TOPIC_DAG, data)
            return
        self.pushed += 1
        for peer in members:
            self._outbox(peer).put(data)

    def stats(self) -> dict[str, int]:
        return {
            "vertices_pushed": self.pushed,
            "vertices_gossiped": self.gossiped,
            "push_backlog": max((len(o) for o in self._pushes.values()), default=0),
            "push_dropped": sum(o.dropped for o in self._pushes.values()),
        }

    def _push_targets(self) -> list[str] | None:
        """The peers to push to, or None to gossip: pushing reaches only direct peers, so it
        is used while every validator is one, and members are few enough that one copy
        each is cheaper than gossip's (which also forwards copies among them)."""
        members = {e.peer_id: e.account for e in self.p2p.peers.connected_members()}
        if len(members) > DIRECT_PUSH_MAX or self.nursery is None:
            return None
        if not self._validators <= set(members.values()):
            return None
        return list(members)

    def _outbox(self, peer: str) -> Outbox[bytes]:
        outbox = self._pushes.get(peer)
        if outbox is None:
            channel = PushChannel(peer, self.p2p.open_stream, ids.DAG_PUSH)

            async def send(batch: list[bytes]) -> None:
                try:
                    with trio.fail_after(self._send_timeout_s):
                        await channel.push(batch)
                except (NetworkError, RemoteProtocolError, trio.TooSlowError) as exc:
                    # The peer fetches what it missed when it is asked about a descendant.
                    log.info("push to %s failed: %s", peer, exc)

            outbox = self._pushes[peer] = Outbox(send, batch=PUSH_BATCH, limit=OUTBOX_LIMIT)
            assert self.nursery is not None
            self.nursery.start_soon(outbox.run)
        return outbox
