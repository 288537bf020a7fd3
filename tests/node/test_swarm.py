"""Integration: real libp2p hosts in one process on 127.0.0.1, port 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from dag.errors import SwarmError
from protocols import ids
from protocols.errors import PeerRefused
from protocols.framing import encode_frame
from protocols.stream import FramedStream
from tests.factory import connect_all, make_node_dirs, running_nodes, swarm


async def test_three_nodes_form_a_full_mesh_from_one_bootstrap(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 3) as nodes:
            for node in nodes:
                members = {e.peer_id for e in node.peers.connected_members()}
                assert members == {n.peer_id for n in nodes} - {node.peer_id}
                names = {e.name for e in node.peers.connected_members()}
                assert node.config.name not in names
            # every member is bound to the account the genesis names for its peer id
            for entry in nodes[0].peers.connected_members():
                account = nodes[0].genesis.account(bytes.fromhex(entry.account))
                assert account is not None and account.peer_id == entry.peer_id


async def test_gossipsub_carries_a_message_to_every_node(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 3) as nodes:
            subs = [await n.p2p.subscribe("swarm/test/1") for n in nodes]
            # Subscriptions spread asynchronously: publish until each subscriber has the
            # message, waiting on the subscription itself (bounded by the fail_after above).
            for i, sub in enumerate(subs[1:]):
                while True:
                    await nodes[0].p2p.publish("swarm/test/1", f"hello {i}".encode())
                    with trio.move_on_after(0.25):
                        msg = await sub.get()
                        break
                assert msg.data.startswith(b"hello ")
                assert msg.from_id == nodes[0].p2p.host.get_id().to_bytes()


async def test_ping_measures_rtt_and_dht_knows_members(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 2, ping_interval_s=0.05) as nodes:
            a, b = nodes
            await a.peers.wait_until(
                lambda: (e := a.peers.get(b.peer_id)) is not None and e.rtt_ms is not None
            )
            entry = a.peers.get(b.peer_id)
            assert entry is not None and entry.rtt_ms is not None and 0 < entry.rtt_ms < 5000
            assert a.p2p.dht is not None and a.p2p.dht.get_routing_table_size() >= 1


async def test_another_genesis_is_refused_on_both_sides(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ours = make_node_dirs(tmp_path / "a", 1, chain_id="chain-a")
    theirs = make_node_dirs(tmp_path / "b", 1, chain_id="chain-b", prefix="m")
    with trio.fail_after(60):
        async with running_nodes(ours + theirs) as (a, b):
            with pytest.raises(PeerRefused, match="genesis mismatch") as info:
                await b.p2p.connect(a.p2p.addrs()[0])
            assert "chain-a" in str(info.value) and "chain-b" in str(info.value)
            # the refuser recorded and logged why, too
            await a.peers.wait_until(lambda: bool((e := a.peers.get(b.peer_id)) and e.refused))
            entry = a.peers.get(b.peer_id)
            assert entry is not None and "genesis mismatch" in entry.refused
            assert not entry.member and a.peers.connected_members() == []
            assert b.peers.connected_members() == []
    assert any("refused peer" in r.getMessage() for r in caplog.records)


async def test_garbage_on_a_stream_does_not_disturb_the_node(tmp_path: Path) -> None:
    dirs = make_node_dirs(tmp_path, 3)
    with trio.fail_after(60):
        async with running_nodes(dirs[:2]) as (a, b):
            await connect_all([a, b])
            for junk in [b"\xff" * 64, encode_frame({"t": "hello", "v": 1}), b"\x00\x00", b""]:
                stream = await b.p2p.open_stream(a.peer_id, ids.HELLO)
                await stream.send_all(junk)
                await stream.aclose()
            # A header announcing a 2 GB frame is refused at once, its body never read.
            framed = FramedStream(await b.p2p.open_stream(a.peer_id, ids.HELLO))
            await framed.stream.send_all(b"\x7f\xff\xff\xff")
            reply = await framed.receive_required()
            assert reply["t"] == "refuse" and "exceeds the limit" in reply["reason"]
            await framed.aclose()
            # `a` still serves: a third node on the same chain joins through it.
            async with running_nodes(dirs[2:]) as (c,):
                await c.p2p.connect(a.p2p.addrs()[0])
                await c.peers.wait_for_members(2)
            entry = a.peers.get(b.peer_id)
            assert entry is not None and entry.member and entry.connected


async def test_unreachable_bootstrap_peer_does_not_stop_the_node(tmp_path: Path) -> None:
    dirs = make_node_dirs(tmp_path, 2)
    with trio.fail_after(60):
        async with running_nodes(dirs[:1]) as (a,):
            # a dead address: connect fails with a clear error, the node keeps running
            dead = f"/ip4/127.0.0.1/tcp/1/p2p/{a.peer_id}"
            with pytest.raises(SwarmError):
                await a.p2p.connect(dead)
            assert a.status()["peer_id"] == a.peer_id
