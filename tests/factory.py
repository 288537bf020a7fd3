"""The test-swarm factory: N real nodes in one trio process, on 127.0.0.1 with port 0."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from dag.crypto import Scheme
from dag.genesis import Genesis, GenesisAccount
from node.config import load_config
from node.daemon import Node, build_node
from node.datadir import Identity, write_node
from node.market_store import MarketStore

FORM_TIMEOUT_S = 30.0


def make_genesis(
    identities: list[Identity], chain_id: str = "test-chain", validators: int | None = None
) -> Genesis:
    """Every identity gets credits; the first `validators` (default: all) also get stake."""
    staked = len(identities) if validators is None else validators
    return Genesis(
        chain_id=chain_id,
        timestamp_ms=int(time.time() * 1000),
        accounts=tuple(
            GenesisAccount(
                f"n{i}",
                ident.account.account_id,
                ident.account.public_key,
                1_000_000,
                100 if i < staked else 0,
                ident.peer_id,
            )
            for i, ident in enumerate(identities)
        ),
    )


def make_node_dirs(
    root: Path,
    count: int,
    *,
    scheme: Scheme = Scheme.ML_DSA_65,
    chain_id: str = "test-chain",
    prefix: str = "n",
    validators: int | None = None,
    hosts: list[list[str]] | None = None,
    paid: list[bool] | None = None,
) -> list[Path]:
    """Data dirs for `count` nodes sharing one genesis; returns their paths. `hosts[i]`
    lists the experts node i serves (zoo domains, "ffn64"), `paid[i]` whether for pay."""
    identities = [Identity.generate(scheme) for _ in range(count)]
    genesis = make_genesis(identities, chain_id, validators)
    dirs = []
    for i, ident in enumerate(identities):
        data_dir = root / f"{prefix}{i}"
        write_node(
            data_dir,
            ident,
            name=f"{prefix}{i}",
            genesis=genesis,
            host=hosts[i] if hosts else None,
            serve_paid=paid[i] if paid else False,
        )
        dirs.append(data_dir)
    return dirs


@asynccontextmanager
async def running_nodes(
    dirs: list[Path],
    *,
    ping_interval_s: float = 5.0,
    wall_clock: Callable[[], float] = time.time,
    market: dict[str, Any] | None = None,
) -> AsyncIterator[list[Node]]:
    """Start a node for each data dir (with `nursery.start`) and stop them all at exit.
    `market` overrides settings of the `[market]` config section."""
    nodes = []
    for data_dir in dirs:
        config = load_config(data_dir)
        config = replace(config, network=replace(config.network, ping_interval_s=ping_interval_s))
        if market:
            config = replace(config, market=replace(config.market, **market))
        nodes.append(build_node(config, wall_clock=wall_clock))
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        yield nodes
        nursery.cancel_scope.cancel()


async def connect_all(nodes: list[Node]) -> None:
    """Dial every node to the first one; peer exchange does the rest. Waits for a full mesh."""
    with trio.fail_after(FORM_TIMEOUT_S):
        for node in nodes[1:]:
            await node.p2p.connect(nodes[0].p2p.addrs()[0])
        for node in nodes:
            await node.peers.wait_for_members(len(nodes) - 1)


@asynccontextmanager
async def swarm(
    root: Path, count: int, *, scheme: Scheme = Scheme.ML_DSA_65, ping_interval_s: float = 5.0
) -> AsyncIterator[list[Node]]:
    """`count` nodes on one genesis, fully connected, torn down cleanly at exit."""
    dirs = make_node_dirs(root, count, scheme=scheme)
    async with running_nodes(dirs, ping_interval_s=ping_interval_s) as nodes:
        await connect_all(nodes)
        yield nodes


def kill_store(store: MarketStore) -> None:
    """Let go of a market store's files as a process killed with -9 does: nothing flushed
    (its journal's lock goes with its descriptor)."""
    store._journal.close()
    store._conn.close()
