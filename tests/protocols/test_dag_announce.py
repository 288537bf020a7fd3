"""Where a vertex we built goes: pushed to each direct peer, or gossiped when that would
miss a validator or the mesh is too large. A fake host, no sockets."""

from __future__ import annotations

import time

import trio
import trio.testing

from protocols import ids
from protocols.dag_announce import DIRECT_PUSH_MAX, Announcer
from protocols.dag_sync import serve_push
from protocols.peers import PeerTable
from protocols.stream import Stream, memory_stream_pair


class FakeHost:
    """The part of `P2PService` the announcer uses; pushes land in `received`."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.peers = PeerTable(time.time)
        self.published: list[tuple[str, bytes]] = []
        self.received: dict[str, list[bytes]] = {}
        self._nursery = nursery

    def add_member(self, peer: str, account: str) -> None:
        self.peers.on_connected(peer)
        self.peers.on_member(peer, name=peer, account=account, addrs=[])

    async def open_stream(self, peer: str, protocol: str) -> Stream:
        assert protocol == ids.DAG_PUSH
        ours, theirs = memory_stream_pair("me", peer)

        async def ingest(item: bytes, sender: str) -> None:
            self.received.setdefault(peer, []).append(item)

        self._nursery.start_soon(serve_push, theirs, ingest)
        return ours

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))


async def announce(members: dict[str, str], validators: set[str], data: bytes) -> FakeHost:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            host = FakeHost(nursery)
            for peer, account in members.items():
                host.add_member(peer, account)
            announcer = Announcer(host, validators, send_timeout_s=5)  # type: ignore[arg-type]
            announcer.nursery = nursery
            await announcer.announce(data)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    return host


async def test_a_small_mesh_of_direct_peers_gets_one_push_each() -> None:
    host = await announce({"p1": "a1", "p2": "a2", "p3": "a3"}, {"a1", "a2"}, b"vertex")
    assert host.received == {"p1": [b"vertex"], "p2": [b"vertex"], "p3": [b"vertex"]}
    assert host.published == []


async def test_a_validator_that_is_not_a_direct_peer_means_gossip() -> None:
    host = await announce({"p1": "a1"}, {"a1", "a2"}, b"vertex")
    assert host.published == [(ids.TOPIC_DAG, b"vertex")]
    assert host.received == {}


async def test_a_large_mesh_means_gossip() -> None:
    members = {f"p{i}": f"a{i}" for i in range(DIRECT_PUSH_MAX + 1)}
    host = await announce(members, {"a0"}, b"vertex")
    assert host.published == [(ids.TOPIC_DAG, b"vertex")]
    assert host.received == {}
