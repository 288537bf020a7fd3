"""The DAG over real libp2p hosts: gossip, queries to real peers, sync, restart."""

from __future__ import annotations

from pathlib import Path

import trio

from node.daemon import Node
from tests.factory import swarm


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
            expected = dict(before)
            expected[a.keys.account.account_id.hex()] -= 250
            expected[to.hex()] += 250
            for node in nodes:
                await node.dag.wait_for(lambda n=node: applied(n, tx_id))
                assert await balances(node) == expected
                assert sum(expected.values()) == a.genesis.supply
