"""The market in running nodes over real libp2p hosts: paid calls, settlement on the DAG,
the client's close after expiry, and bad market requests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

import node.market as market_module
from dag.channels import close_payload, open_payload
from dag.crypto import Scheme
from dag.errors import SwarmError
from dag.kinds import default_registry
from dag.tx import Transaction
from node.daemon import MARKET_STORE, Node
from node.market_provider import Ticket
from node.market_store import MarketStore
from protocols import ids
from protocols import infer_wire as wire
from protocols import market_wire as mw
from protocols.stream import FramedStream
from tests.factory import connect_all, make_node_dirs, running_nodes

PRICE = 10  # the default price per 1,000 tokens; a one-row ffn64 call is 2 tokens
LIFETIME_S = 600.0
MARGIN_S = 60.0


class Clock:
    """One wall clock for every node of a test, that the test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@asynccontextmanager
async def market_swarm(
    tmp_path: Path, clock: Clock, *, paid: bool = True, two_providers: bool = False, **market: Any
) -> AsyncIterator[list[Node]]:
    """provider (ffn64), client, and a third validator (with `two_providers`, a second
    provider of ffn64); Ed25519 keeps the test quick. `market` overrides [market] settings
    of every node."""
    third = ["ffn64"] if two_providers else []
    dirs = make_node_dirs(
        tmp_path,
        3,
        scheme=Scheme.ED25519,
        hosts=[["ffn64"], [], third],
        paid=[paid, False, paid and two_providers],
    )
    settings: dict[str, Any] = {"channel_lifetime_s": LIFETIME_S, "settle_margin_s": MARGIN_S}
    settings.update(market)
    async with running_nodes(dirs, wall_clock=clock, market=settings) as nodes:
        await connect_all(nodes)
        yield nodes


def ffn_of(provider: Node) -> str:
    return next(iter(provider.experts.host.experts))


async def totals(node: Node) -> dict[str, int]:
    return {row["account"]: row["balance"] for row in await node.dag.balances()}


async def wait_unlocked(nodes: list[Node], channel: bytes) -> None:
    for node in nodes:

        async def empty(n: Node = node) -> bool:
            return await n.dag.locked(channel) == 0

        await node.dag.wait_for(empty)


async def test_paid_calls_settle_on_the_dag_with_the_same_balances_everywhere(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with trio.fail_after(90):
        async with market_swarm(tmp_path, clock) as nodes:
            provider, client, _ = nodes
            before = await totals(provider)
            ffn = ffn_of(provider)
            rows = np.ones((1, 64), np.float32)
            infer = client.experts.inference
            first = await infer.tensor(ffn, rows, deadline_s=30, remote_only=True)
            assert first.provider == provider.peer_id and first.cost_milli == 2 * PRICE

            async def call() -> None:
                answer = await infer.tensor(ffn, rows, deadline_s=30, remote_only=True)
                assert answer.cost_milli == 2 * PRICE

            async with trio.open_nursery() as nursery:
                for _ in range(24):
                    nursery.start_soon(call)

            await client.market.payer.check_receipts(wait_s=10)  # what its background task does
            (channel,) = client.market.store.channels(role="client")
            assert channel.state == "open" and channel.charged_milli == 25 * 2 * PRICE
            served = provider.market.till.state(channel.id)
            assert served is not None and served.charged_milli == 25 * 2 * PRICE
            assert len(client.market.store.receipts("client")) == 25
            assert len(provider.market.store.receipts("provider")) == 25
            used = client.market.store.usage()
            assert [(u["kind"], u["calls"], u["credits"]) for u in used] == [("used", 25, 0.5)]
            assert await provider.dag.locked(channel.id) == channel.deposit
            where = await provider.dag.totals()  # (the deposit left the client's balance)
            assert where["locked"] == channel.deposit
            assert where["in_accounts"] + where["locked"] == where["supply"]

            (settled,) = await provider.market.settle()
            assert settled["amount"] == 1  # 0.5 credits, rounded up once at settlement
            await wait_unlocked(nodes, channel.id)
            expected = dict(before)
            expected[provider.keys.account.account_id.hex()] += 1
            expected[client.keys.account.account_id.hex()] -= 1
            for node in nodes:
                await node.dag.wait_for(lambda n=node: _balances_are(n, expected))  # type: ignore[misc]
                assert sum(expected.values()) == node.genesis.supply

            # The settled channel is no longer served: the next call opens a new one.
            again = await infer.tensor(ffn, rows, deadline_s=30, remote_only=True)
            assert again.cost_milli == 2 * PRICE
            await client.market.payer.check_receipts(wait_s=10)
            for node in (client, provider):
                await node.market.keep()
                ended = node.market.store.channel(channel.id)
                assert ended is not None and ended.state == "ended"
            (fresh,) = client.market.store.channels(role="client", state="open")
            assert fresh.id != channel.id and fresh.charged_milli == 2 * PRICE


async def _balances_are(node: Node, expected: dict[str, int]) -> bool:
    return await totals(node) == expected


async def test_provider_settles_before_expiry_and_client_closes_an_unused_channel(
    tmp_path: Path,
) -> None:
    clock = Clock()
    with trio.fail_after(90):
        async with market_swarm(tmp_path, clock) as nodes:
            provider, client, _ = nodes
            before = await totals(client)
            ffn = ffn_of(provider)
            rows = np.ones((3, 64), np.float32)
            answer = await client.experts.inference.tensor(ffn, rows, deadline_s=30)
            assert answer.cost_milli == 6 * PRICE
            (used,) = client.market.store.channels(role="client")

            # A second channel with no call on it: opened, registered, never charged.
            request = wire.TensorRequest.of(1, ffn, 1000, rows)
            client.market.payer.purse.ended(used.id, "open")  # set the first aside, still open
            ticket = await client.market.payer.prepare(provider.peer_id, request, PRICE)
            assert ticket is not None
            client.market.payer.unpaid(ticket, RuntimeError("not called"))
            idle = ticket.channel
            assert idle.id != used.id and provider.market.till.state(idle.id) is not None

            # Closing before the expiry is refused by the client's own wallet.
            with pytest.raises(SwarmError, match="expir|before"):
                await client.dag.send("channel_close", close_payload(idle.terms))

            # Near the expiry the provider settles the charged channel on its own; past
            # it the client takes the unused deposit back.
            clock.offset += LIFETIME_S - MARGIN_S / 2
            await wait_unlocked(nodes, used.id)
            clock.offset += MARGIN_S
            await wait_unlocked(nodes, idle.id)
            expected = dict(before)
            expected[client.keys.account.account_id.hex()] -= 1  # 0.06 credits, rounded up
            for node in nodes:
                await node.dag.wait_for(
                    lambda n=node: _balance_of(n, client.keys.account.account_id, expected)  # type: ignore[misc]
                )
                rows_now = await totals(node)
                assert sum(rows_now.values()) == node.genesis.supply


async def _balance_of(node: Node, account: bytes, expected: dict[str, int]) -> bool:
    return (await totals(node))[account.hex()] == expected[account.hex()]


async def test_the_next_channel_is_opened_before_the_old_one_is_used_up(tmp_path: Path) -> None:
    clock = Clock()
    with trio.fail_after(60):
        # 2 credits (a channel holds at least two calls' largest cost): 100 calls of 0.02
        async with market_swarm(tmp_path, clock, deposit=1) as nodes:
            provider, client, _ = nodes
            rows = np.ones((1, 64), np.float32)
            account = provider.keys.account.account_id
            market = client.market.payer
            old = None
            for _ in range(95):
                await client.experts.inference.tensor(ffn_of(provider), rows, remote_only=True)
                old = old or market.purse.channel(account)
                if account in market._opening:
                    break  # room under a fifth of the deposit: the next one is opening
            assert old is not None and account in market._opening
            opening = market._opening[account]
            assert old.terms.deposit == 2 and old.room_milli() > 10 * 2 * PRICE  # calls to go
            await opening.done.wait()
            fresh = opening.channel
            assert fresh is not None and fresh.id != old.id
            assert provider.market.till.state(fresh.id) is not None  # registered
            # The old channel takes the calls until it cannot pay for one: no room is left
            # behind on it (a 2-credit deposit is 100 calls).
            while market.purse.channel(account) is old:
                await client.experts.inference.tensor(ffn_of(provider), rows, remote_only=True)
            market.purse.catch_up()  # (off the call's path: what the next call's send does)
            assert (old.owed_milli, old.reserved_milli, old.room_milli()) == (2_000, 0, 0)
            assert market.purse.channel(account) is fresh
            assert (fresh.owed_milli, fresh.reserved_milli) == (2 * PRICE, 0)
            served = provider.market.till.state(fresh.id)
            assert served is not None and served.charged_milli == 2 * PRICE
            assert len(market.store.channels(role="client", state="open")) == 2


async def test_channels_kept_over_a_restart_are_used_up_the_first_to_expire_first(
    tmp_path: Path,
) -> None:
    clock = Clock()
    provider_dir, client_dir, third_dir = make_node_dirs(
        tmp_path, 3, scheme=Scheme.ED25519, hosts=[["ffn64"], [], []], paid=[True, False, False]
    )
    # 2 credits a channel (at least two calls' largest cost): 100 calls of 0.02
    settings = {"channel_lifetime_s": LIFETIME_S, "settle_margin_s": MARGIN_S, "deposit": 1}
    rows = np.ones((1, 64), np.float32)

    def client_of() -> AbstractAsyncContextManager[list[Node]]:
        return running_nodes([client_dir], wall_clock=clock, market=settings)

    with trio.fail_after(90):
        async with running_nodes([provider_dir, third_dir], wall_clock=clock, market=settings) as (
            provider,
            third,
        ):
            account = provider.keys.account.account_id
            async with client_of() as (client,):
                await connect_all([provider, client, third])
                market = client.market.payer
                while account not in market._opening:  # (under a fifth left: it opens)
                    await client.experts.inference.tensor(ffn_of(provider), rows)
                await market._opening[account].done.wait()
                old, fresh = market.purse.channel(account), market.purse._next[account]
                assert old is not None and old.room_milli() > 0
            async with client_of() as (client,):
                await connect_all([provider, client, third])
                purse = client.market.payer.purse
                kept = purse.channel(account)
                assert kept is not None and kept.id == old.id and purse.has_next(account)
                while (in_use := purse.channel(account)) is not None and in_use.id == old.id:
                    await client.experts.inference.tensor(ffn_of(provider), rows)
                purse.catch_up()
                assert in_use is not None and in_use.id == fresh.id and in_use.synced
                assert (kept.owed_milli, kept.room_milli()) == (2_000, 0)
                served = provider.market.till.state(old.id)
                assert served is not None and served.charged_milli == 2_000


async def test_a_client_that_stops_keeps_the_receipts_that_came(tmp_path: Path) -> None:
    clock = Clock()
    with trio.fail_after(60):
        async with market_swarm(tmp_path, clock) as nodes:
            provider, client, _ = nodes
            rows = np.ones((1, 64), np.float32)
            await client.experts.inference.tensor(ffn_of(provider), rows, remote_only=True)
            await client.market.payer.check_receipts(wait_s=10)  # the first call's, kept
            came = client.market.payer._came  # set when the next receipts come
            await client.experts.inference.tensor(ffn_of(provider), rows, remote_only=True)
            await came.wait()  # the second call's receipt came: stop before the checker runs
            data_dir = client.config.data_dir
    store = MarketStore.open(data_dir / MARKET_STORE)
    assert [r["seq"] for r in store.receipts("client")] == [2, 1]
    store.close()


async def test_a_free_provider_is_called_without_a_channel(tmp_path: Path) -> None:
    clock = Clock()
    with trio.fail_after(60):
        async with market_swarm(tmp_path, clock, paid=False) as nodes:
            provider, client, _ = nodes
            rows = np.ones((1, 64), np.float32)
            answer = await client.experts.inference.tensor(ffn_of(provider), rows, deadline_s=30)
            assert answer.provider == provider.peer_id and answer.cost_milli == 0
            assert client.market.store.channels() == []
            assert provider.experts.offers()[0].price_per_1k == 0


async def test_a_quote_over_the_callers_price_ceiling_is_not_paid(tmp_path: Path) -> None:
    clock = Clock()
    with trio.fail_after(60):
        async with market_swarm(tmp_path, clock, price_ceiling=4 * PRICE) as nodes:
            provider, client, _ = nodes
            # A full queue: the provider's price rises from its announced floor to its ceiling.
            provider.market.till._depth = lambda expert: 10**6
            ffn = ffn_of(provider)
            rows = np.ones((1, 64), np.float32)
            infer = client.experts.inference
            with pytest.raises(SwarmError, match=f"asks {4 * PRICE} per 1,000 tokens, over"):
                await infer.tensor(ffn, rows, max_price=2 * PRICE, deadline_s=30)
            assert client.market.store.channels() == []  # nothing opened, nothing locked
            stats = client.experts.directory.reputation()
            assert all(s["failed"] == 0 and s["refused"] == 0 for s in stats.values())
            answer = await infer.tensor(ffn, rows, max_price=4 * PRICE, deadline_s=30)
            assert answer.cost_milli == 2 * 4 * PRICE


async def test_a_provider_whose_receipt_is_disputed_is_routed_around(tmp_path: Path) -> None:
    # Two providers of the same expert; the one routing picks first claims more than it
    # served. Its receipt is disputed, and the next call goes to the other one.
    with trio.fail_after(90):
        async with market_swarm(tmp_path, Clock(), two_providers=True) as nodes:
            client = nodes[1]
            ffn = ffn_of(nodes[0])
            assert ffn == ffn_of(nodes[2])
            directory = client.experts.directory

            def ranked() -> list[str]:
                now = int(time.time() * 1000)
                return [x.provider for x in directory.rank(expert_id=ffn, now_ms=now)]

            while len(ranked()) < 2:
                await client.experts.directory_changed()
            dishonest = next(n for n in nodes if n.peer_id == ranked()[0])
            honest_charge = dishonest.market.till.charge

            def inflated(ticket: object, request: wire.Request, result: wire.Result) -> None:
                honest_charge(ticket, request, result)  # (and its receipt claims more)
                assert isinstance(ticket, Ticket) and ticket.charge is not None
                tokens_in, tokens_out, cost, total = ticket.charge
                ticket.charge = (tokens_in, tokens_out, cost + 1, total)

            dishonest.market.till.charge = inflated  # type: ignore[method-assign]
            rows = np.ones((1, 64), np.float32)
            infer = client.experts.inference
            first = await infer.tensor(ffn, rows, deadline_s=30, remote_only=True)
            assert first.provider == dishonest.peer_id
            await client.market.payer.check_receipts(wait_s=10)
            (kept,) = client.market.store.receipts("client")
            assert "receipt claims" in kept["disputed"]
            assert ranked()[0] != dishonest.peer_id
            again = await infer.tensor(ffn, rows, deadline_s=30, remote_only=True)
            assert again.provider != dishonest.peer_id and again.cost_milli == 2 * PRICE


async def test_bad_market_requests_are_refused_and_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(market_module, "REGISTER_WAIT_S", 0.5)
    clock = Clock()
    with trio.fail_after(60):
        async with market_swarm(tmp_path, clock) as nodes:
            provider, client, third = nodes

            async def ask(body: dict[str, Any] | bytes) -> dict[str, Any] | None:
                stream = await client.p2p.open_stream(provider.peer_id, ids.MARKET)
                framed = FramedStream(stream, mw.MAX_FRAME)
                if isinstance(body, bytes):
                    await stream.send_all(body)
                else:
                    await framed.send(body)
                try:
                    return await framed.receive()
                finally:
                    await stream.aclose()

            quote = await ask(mw.quote_request())
            assert quote is not None and quote["paid"] is True
            assert quote["prices"] == {ffn_of(provider): PRICE}
            garbage = await ask(b"\x00\x00\x00\x03abc")
            assert garbage is not None and "not valid msgpack" in garbage["reason"]
            unknown = await ask({"t": "sell", "v": 1})
            assert unknown is not None and "unknown market request" in unknown["reason"]
            not_tx = await ask(mw.channel_request(b"\x93\x01\x02\x03"))
            assert not_tx is not None and not_tx["t"] == "error"

            def open_tx(to: Node, nonce: int) -> bytes:
                key = client.dag.key  # Ed25519 here: it may also serve as the IOU key
                payload = open_payload(
                    to.keys.account.account_id, 10, int(clock() * 1000) + 3_600_000, key.public_key
                )
                return Transaction.create(
                    key,
                    chain=client.dag.engine.chain,
                    nonce=nonce,
                    kind="channel_open",
                    payload=payload,
                    registry=default_registry(),
                ).to_bytes()

            # A real, signed open that the DAG never saw: no deposit, refused.
            refused = await ask(mw.channel_request(open_tx(provider, 99)))
            assert refused is not None and "no deposit" in refused["reason"]
            # An open that pays someone else is refused at once.
            other = open_tx(third, 98)
            wrong = await ask(mw.channel_request(other))
            assert wrong is not None and "another provider" in wrong["reason"]
            assert provider.market.store.channels() == []
            assert provider.market.till.channels() == []
