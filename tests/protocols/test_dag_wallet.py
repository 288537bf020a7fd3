"""The wallet's mempool, sans-IO: an engine in-process, the builder driven by trio, no sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

import trio
import trio.testing

from dag.channels import ChannelTerms, Iou, channel_id, close_payload, open_payload, settle_payload
from dag.engine import Engine
from dag.vertex import Vertex
from protocols.dag_wallet import BatchSettings, Wallet
from tests.dag.helpers import GENESIS_MS, key, make_genesis, open_engine, signed, transfer

T = TypeVar("T")
ME, CLIENT, PROVIDER, IOU_KEY = key(1), key(2), key(3), key(4)
GENESIS = make_genesis([ME, CLIENT, PROVIDER], stakes=[100, 0, 0], balances=[0, 1_000, 0])
NOW = GENESIS_MS + 60_000


def _wallet(engine: Engine, settings: BatchSettings, built: list[Vertex]) -> Wallet:
    """Our wallet over `engine`, its engine calls inline; what it announces lands in `built`."""

    async def call(fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def announce(vertex: Vertex) -> None:
        built.append(vertex)

    return Wallet(
        engine=engine,
        key=ME,
        call=call,
        announce=announce,
        settings=settings,
        wall_clock=lambda: NOW / 1000,
    )


async def test_two_ends_of_one_channel_never_share_the_mempool() -> None:
    built: list[Vertex] = []
    wallet = _wallet(open_engine(GENESIS, ME), BatchSettings(batch_window_s=0.0), built)
    payload = open_payload(PROVIDER.account_id, 100, NOW + 5_000, IOU_KEY.public_key)
    terms = ChannelTerms.of_open(signed(CLIENT, GENESIS, 0, "channel_open", payload))
    iou = Iou.create(IOU_KEY, channel_id(GENESIS.digest, terms), 10, seq=1)
    settle = signed(PROVIDER, GENESIS, 0, "channel_settle", settle_payload(terms, iou))
    close = signed(CLIENT, GENESIS, 1, "channel_close", close_payload(terms))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wallet.run_builder)
            verdicts = await wallet.submit_many([settle, close])
            nursery.cancel_scope.cancel()
    assert verdicts[0] == "stored"
    assert verdicts[1].startswith("refused") and "conflict set" in verdicts[1]
    assert [tx.id for v in built for tx in v.txs] == [settle.id]


async def test_the_mempool_waits_while_enough_of_our_vertices_are_undecided() -> None:
    # We hold no stake and nobody answers our polls: our vertices stay undecided.
    voter = key(5)
    genesis = make_genesis([ME, CLIENT, voter], stakes=[0, 0, 100], balances=[0, 1_000, 0])
    built: list[Vertex] = []
    settings = BatchSettings(batch_window_s=0.0, max_undecided=2)
    wallet = _wallet(open_engine(genesis, ME), settings, built)
    txs = [transfer(CLIENT, genesis, voter.account_id, 1, n) for n in range(4)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wallet.run_builder)
            for tx in txs[:2]:
                assert await wallet.submit_many([tx]) == ["stored"]
            for tx in txs[2:]:
                nursery.start_soon(wallet.submit_many, [tx])
            await trio.testing.wait_all_tasks_blocked()
            assert len(built) == 2 and len(wallet) == 2  # two undecided: the rest waits
            wallet.settings = replace(wallet.settings, max_undecided=3)
            wallet.kick()  # as a decision would
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert len(wallet) == 0
    assert [sorted(tx.nonce for tx in v.txs) for v in built] == [[0], [1], [2, 3]]


async def test_our_undecided_empty_vertices_do_not_hold_up_the_mempool() -> None:
    # The engine asks for vertices while transactions wait undecided, never for empty ones:
    # counted against the limit, empty vertices alone would keep the mempool waiting forever.
    voter = key(5)
    genesis = make_genesis([ME, CLIENT, voter], stakes=[0, 0, 100], balances=[0, 1_000, 0])
    engine = open_engine(genesis, ME)
    engine.build_vertex(ME, [], NOW)
    built: list[Vertex] = []
    wallet = _wallet(engine, BatchSettings(batch_window_s=0.0, max_undecided=1), built)
    tx = transfer(CLIENT, genesis, voter.account_id, 1, 0)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wallet.run_builder)
            assert await wallet.submit_many([tx]) == ["stored"]
            nursery.cancel_scope.cancel()
    assert [[t.id for t in v.txs] for v in built] == [[tx.id]]
