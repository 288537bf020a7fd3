"""The DHT fallback: a node whose directory lacks a provider finds it in Kademlia, dials it
and fetches its announcement, over real libp2p hosts on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import experts
from node.config import load_config
from node.daemon import Node, build_node
from protocols import ids
from tests.factory import make_node_dirs


def without_announcement_gossip(node: Node) -> Node:
    """Drop every announcement `node` would publish on `swarm/experts/1`: no peer can hear
    of its experts by gossip, directly or relayed."""
    publish = node.p2p.publish

    async def publish_all_but_announcements(topic: str, data: bytes) -> None:
        if topic != ids.TOPIC_EXPERTS:
            await publish(topic, data)

    node.p2p.publish = publish_all_but_announcements  # type: ignore[method-assign]
    return node


@asynccontextmanager
async def started(nodes: list[Node]) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        yield
        nursery.cancel_scope.cancel()


async def test_a_provider_whose_gossip_never_arrives_is_found_through_the_dht(
    tmp_path: Path,
) -> None:
    dirs = make_node_dirs(tmp_path, 3, hosts=[[], ["mathematics"], []])
    a, b, c = (build_node(load_config(d)) for d in dirs)
    without_announcement_gossip(b)  # before it starts: not even its first announcement
    math_id = experts.find("mathematics").expert_id
    with trio.fail_after(60):
        async with started([a, b, c]):
            # b reaches the DHT through c alone; a joins c after that
            await b.p2p.connect(c.p2p.addrs()[0])
            await b.experts.wait_provided()
            await a.p2p.connect(c.p2p.addrs()[0])
            assert not a.experts.directory.providers(now_ms=a.experts._now_ms())

            answer = await a.experts.inference.generate(
                "457+268=", domain="mathematics", max_tokens=8
            )
            assert answer.provider == b.peer_id and answer.expert_id == math_id
            assert answer.text is not None and answer.text.strip() == "725"
            # b is in a's directory now, with the offer it signed
            (listing,) = a.experts.directory.providers(now_ms=a.experts._now_ms())
            assert (listing.provider, listing.offer.domain) == (b.peer_id, "mathematics")
            assert listing.account == b.keys.account.account_id
            # nothing more to find: the lookup by expert id adds no one
            assert await a.experts.discover(expert_id=math_id) == 0


async def test_discover_needs_an_expert_or_a_domain(tmp_path: Path) -> None:
    (data_dir,) = make_node_dirs(tmp_path, 1)
    node = build_node(load_config(data_dir))
    with trio.fail_after(30):
        async with started([node]):
            with pytest.raises(ValueError, match="expert id or a domain"):
                await node.experts.discover()
            # a domain nobody provides: an empty answer, not an error
            assert await node.experts.discover(domain="coding") == 0
