"""The wallet's mempool, sans-IO: an engine in-process, the builder driven by trio, no sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import trio

from dag.channels import ChannelTerms, Iou, channel_id, close_payload, open_payload, settle_payload
from dag.vertex import Vertex
from protocols.dag_wallet import BatchSettings, Wallet
from tests.dag.helpers import GENESIS_MS, key, make_genesis, open_engine, signed

T = TypeVar("T")
ME, CLIENT, PROVIDER, IOU_KEY = key(1), key(2), key(3), key(4)
GENESIS = make_genesis([ME, CLIENT, PROVIDER], stakes=[100, 0, 0], balances=[0, 1_000, 0])
NOW = GENESIS_MS + 60_000


async def test_two_ends_of_one_channel_never_share_the_mempool() -> None:
    engine = open_engine(GENESIS, ME)
    built: list[Vertex] = []

    async def call(fn: Callable[..., T], *args: Any) -> T:
        return fn(*args)

    async def announce(vertex: Vertex) -> None:
        built.append(vertex)

    wallet = Wallet(
        engine=engine,
        key=ME,
        call=call,
        announce=announce,
        settings=BatchSettings(batch_window_s=0.0),
        wall_clock=lambda: NOW / 1000,
    )
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
