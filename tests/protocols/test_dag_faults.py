"""Faults over real libp2p hosts: a double-spending author, a lying voter."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from dag.vertex import Vertex
from node.daemon import Node
from tests.dag.helpers import transfer
from tests.factory import swarm


def conflicting_vertices(author: Node, to_a: bytes, to_b: bytes) -> tuple[Vertex, Vertex]:
    """Two vertices by `author`, each spending the same nonce to a different account."""
    engine = author.dag.engine
    nonce = engine.next_free_nonce(author.keys.account.account_id)
    vertices = []
    for to in (to_a, to_b):
        tx = transfer(author.keys.account, author.genesis, to, 100, nonce)
        vertices.append(
            Vertex.create(
                author.keys.account,
                chain=engine.chain,
                parents=engine.frontier()[:1] or [engine.root],
                timestamp_ms=int(time.time() * 1000),
                txs=[tx],
            )
        )
    return vertices[0], vertices[1]


async def decided(nodes: list[Node], tx_ids: list[bytes]) -> dict[str, list[str]]:
    return {n.config.name: [await n.dag.tx_status(t) for t in tx_ids] for n in nodes}


async def test_double_spend_to_two_halves_accepts_at_most_one_everywhere(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with swarm(tmp_path, 5) as nodes:
            cheat, honest = nodes[0], nodes[1:]
            v1, v2 = conflicting_vertices(
                cheat, honest[0].keys.account.account_id, honest[1].keys.account.account_id
            )
            tx_ids = [v1.txs[0].id, v2.txs[0].id]
            # each half of the honest nodes hears of a different spend first
            async with trio.open_nursery() as nursery:
                for i, node in enumerate(honest):
                    first, second = (v1, v2) if i < 2 else (v2, v1)
                    nursery.start_soon(node.dag.ingest, first.to_bytes(), cheat.peer_id)
            for node in honest:
                await node.dag.ingest(
                    v2.to_bytes() if node in honest[:2] else v1.to_bytes(), cheat.peer_id
                )
            # honest traffic keeps the votes flowing until the conflict is decided everywhere
            for node in honest:
                await node.dag.transfer(nodes[0].keys.account.account_id, 1)

            async def settled() -> bool:
                states = await decided(honest, tx_ids)
                return all("applied" in s or s == ["rejected", "rejected"] for s in states.values())

            # Avalanche promises safety, not a decision, when the split is even; the honest
            # traffic usually tips it within seconds. Safety is checked either way.
            with trio.move_on_after(30):
                for node in honest:
                    await node.dag.wait_for(settled)
            states = await decided(honest, tx_ids)
            for outcome in states.values():
                assert outcome.count("applied") <= 1, states  # never both spends
            finished = {tuple(s) for s in states.values() if "applied" in s}
            assert len(finished) <= 1, states  # every node that decided chose the same one
            balances = [await n.dag.balances() for n in honest]
            for rows in balances:  # conservation on every node, decided or not
                assert sum(r["balance"] for r in rows) == nodes[0].genesis.supply
            if await settled():
                assert all(b == balances[0] for b in balances)


async def test_an_inverted_voter_with_20_percent_stake_cannot_stop_progress(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with swarm(tmp_path, 5) as nodes:
            liar = nodes[4]

            async def inverted(peer: str, vertex_ids: tuple[bytes, ...]) -> tuple[bool, ...]:
                return tuple(not v for v in await honest_answer(peer, vertex_ids))

            honest_answer = liar.dag._answer
            liar.dag._answer = inverted  # type: ignore[method-assign]
            sent = [
                await nodes[i].dag.transfer(nodes[(i + 1) % 4].keys.account.account_id, 5)
                for i in range(4)
            ]

            async def all_applied(node: Node) -> bool:
                return all([await node.dag.tx_status(t) == "applied" for t in sent])

            for node in nodes[:4]:
                await node.dag.wait_for(lambda n=node: all_applied(n))  # type: ignore[misc]
            balances = [await n.dag.balances() for n in nodes[:4]]
            assert all(b == balances[0] for b in balances)
