"""The DAG over real libp2p hosts: gossip, queries to real peers, sync, restart."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from dag.crypto import Scheme, Signature
from dag.vertex import Vertex
from node.daemon import Node
from protocols.dag_service import InsufficientCredits
from tests.dag.helpers import transfer
from tests.factory import connect_all, make_node_dirs, running_nodes, swarm


async def balances(node: Node) -> dict[str, int]:
    return {row["account"]: row["balance"] for row in await node.dag.balances()}


async def applied(node: Node, tx_id: bytes) -> bool:
    return await node.dag.tx_status(tx_id) == "applied"


async def test_a_transfer_is_accepted_with_the_same_balances_everywhere(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 3) as nodes:
            a, b, _ = nodes
            before = await balances(a)
            to = b.keys.account.account_id
            tx_id = await a.dag.transfer(to, 250)
            assert await a.dag.wait_decided(tx_id, 30) == "applied"
            # three direct peers: the vertex went to each in one hop, not through gossipsub
            status = await a.dag.status()
            assert status["vertices_pushed"] >= 1 and status["vertices_gossiped"] == 0
            expected = dict(before)
            expected[a.keys.account.account_id.hex()] -= 250
            expected[to.hex()] += 250
            for node in nodes:
                await node.dag.wait_for(lambda n=node: applied(n, tx_id))  # type: ignore[misc]
                assert await balances(node) == expected
                assert sum(expected.values()) == a.genesis.supply


async def test_overdraft_is_refused_by_the_wallet(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 2) as (a, b):
            with pytest.raises(InsufficientCredits, match="spendable"):
                await a.dag.transfer(b.keys.account.account_id, a.genesis.supply)
            # pending transfers count against what may still be sent
            half = (await a.dag.balance(a.keys.account.account_id))["balance"] // 2 + 1
            await a.dag.transfer(b.keys.account.account_id, half)
            with pytest.raises(InsufficientCredits):
                await a.dag.transfer(b.keys.account.account_id, half)


async def test_late_joiner_and_restarted_node_reach_the_same_balances(tmp_path: Path) -> None:
    # c holds credits but no stake: voting needs alpha of the validators online (75% by
    # default), so a validator that is down on purpose would stall everyone
    dirs = make_node_dirs(tmp_path, 3, validators=2)
    with trio.fail_after(90):
        async with running_nodes(dirs[:2]) as (a, b):
            await connect_all([a, b])
            sent = [await a.dag.transfer(b.keys.account.account_id, 10 + i) for i in range(5)]
            for node in (a, b):
                await node.dag.wait_for(lambda n=node: all_applied(n, sent))  # type: ignore[misc]
            expected = await balances(a)
            # c was down for all of it: it joins, syncs the history, and agrees
            async with running_nodes(dirs[2:]) as (c,):
                await c.p2p.connect(a.p2p.addrs()[0])
                await c.dag.wait_for(lambda: all_applied(c, sent))
                assert await balances(c) == expected
        # everyone stopped; a restarts from its store alone and still knows it all
        async with running_nodes(dirs[:1]) as (a2,):
            assert await balances(a2) == expected
            assert await all_applied(a2, sent)
            # and its wallet continues after its last nonce, not over it
            assert (await a2.dag.balance(a2.keys.account.account_id))["next_nonce"] == 5


async def test_a_peer_that_leaves_takes_its_query_stream_along(tmp_path: Path) -> None:
    # A node holds a query stream per validator it polls; one per peer ever seen would grow
    # without end on a long-lived node whose peers come and go.
    dirs = make_node_dirs(tmp_path, 2, scheme=Scheme.ED25519)
    with trio.fail_after(60):
        async with running_nodes(dirs[:1]) as (a,):
            async with running_nodes(dirs[1:]) as (b,):
                await connect_all([a, b])
                tx_id = await a.dag.transfer(b.keys.account.account_id, 5)
                assert await a.dag.wait_decided(tx_id, 30) == "applied"
                assert b.peer_id in a.dag._channels  # a asked b for its votes
            await a.peers.wait_disconnected(b.peer_id)
            assert b.peer_id not in a.dag._channels


async def test_invalid_vertex_from_a_peer_is_rejected_and_stored_nowhere(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 2) as (a, b):
            engine = a.dag.engine
            vertex = Vertex.create(
                b.keys.account,
                chain=engine.chain,
                parents=[engine.root],
                timestamp_ms=int(time.time() * 1000),
                txs=[],
            )
            bad_sig = Signature(vertex.signature.scheme, bytes(len(vertex.signature.value)))
            forged = replace(vertex, signature=bad_sig)
            before = await a.dag.status()
            for junk in (forged.to_bytes(), b"\x93garbage", vertex.to_bytes()[:-1]):
                await a.dag.ingest(junk, b.peer_id)
            after = await a.dag.status()
            assert (after["accepted"], after["processing"]) == (
                before["accepted"],
                before["processing"],
            )
            assert not engine.knows(vertex.id)
            entry = a.peers.get(b.peer_id)
            assert entry is not None and entry.score == -3
            # a forged vertex naming a parent nobody has is not parked, nor fetched for
            orphan = Vertex.create(
                b.keys.account,
                chain=engine.chain,
                parents=[bytes(32)],
                timestamp_ms=int(time.time() * 1000),
                txs=[],
            )
            forged_orphan = replace(orphan, signature=bad_sig)
            await a.dag.ingest(forged_orphan.to_bytes(), b.peer_id)
            assert (await a.dag.status())["orphans"] == 0 and entry.score == -4
            # the genuine vertex is still welcome afterwards
            await a.dag.ingest(vertex.to_bytes(), b.peer_id)
            assert engine.knows(vertex.id)


async def all_applied(node: Node, tx_ids: list[bytes]) -> bool:
    return all([await node.dag.tx_status(t) == "applied" for t in tx_ids])


async def test_duplicate_and_conflicting_submissions_do_not_sink_a_batch(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with swarm(tmp_path, 2) as (a, b):
            to = a.keys.account.account_id
            honest, dup, rival = (
                transfer(b.keys.account, a.genesis, to, amount, nonce)
                for nonce, amount in ((0, 5), (1, 6), (1, 7))
            )
            verdicts = await a.dag.submit_many([honest, dup, dup, rival])
            assert verdicts[:3] == ["stored", "stored", "stored"]
            assert verdicts[3].startswith("refused") and "already queued" in verdicts[3]
            await a.dag.wait_for(lambda: all_applied(a, [honest.id, dup.id]))
