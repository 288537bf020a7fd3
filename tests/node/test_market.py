"""Paid calls: the provider's till and the client's purse over in-memory streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

import experts
from dag.channels import ChannelTerms, Iou, iou_head, open_payload, settle_payload
from dag.codec import decode
from dag.crypto import PublicKey, Scheme, SigningKey
from dag.kinds import default_registry
from dag.ledger import Ledger
from node import market_client, market_provider
from node.config import MarketConfig
from node.market_client import Paid, PayTicket, Purse, new_channel_row
from node.market_payer import _running_low
from node.market_provider import Ticket, Till
from node.market_store import MarketStore
from protocols import infer_wire as wire
from protocols import market_wire as mw
from protocols.infer_client import CallFailed, InferChannel
from protocols.infer_server import RECEIPT_DELAY_S, ChannelRefused, ExpertHost, PaymentRefused
from protocols.stream import FramedStream, Stream, memory_stream_pair
from tests.dag.helpers import GENESIS_MS, key, make_genesis, signed
from tests.factory import kill_store

FFN = experts.build_ffn(64, seed=1)
CLIENT, PROVIDER, MALLORY, IOU_KEY = key(1), key(2), key(3), key(4)
HOST = SigningKey(Scheme.ED25519, b"\x07" * 32)  # the provider's host key
GENESIS = make_genesis([CLIENT, PROVIDER, MALLORY], balances=[1_000, 0, 1_000])
CHAIN = GENESIS.digest
NOW = GENESIS_MS + 10_000
EXPIRY = NOW + 3_600_000
PRICE = 10  # credits per 1,000 tokens; a ffn64 call of one row is 2 tokens = 0.02 credits
ACCOUNTS = {"caller": CLIENT.account_id, "mallory": MALLORY.account_id}


def _open(deposit: int = 5) -> tuple[Any, ChannelTerms]:
    payload = open_payload(PROVIDER.account_id, deposit, EXPIRY, IOU_KEY.public_key)
    tx = signed(CLIENT, GENESIS, 0, "channel_open", payload)
    return tx, ChannelTerms.of_open(tx)


def _till(path: Path, **policy: Any) -> Till:
    return Till(
        policy=MarketConfig(serve_paid=True, **policy),
        store=MarketStore.open(path / "provider.sqlite"),
        chain=CHAIN,
        account_of=ACCOUNTS.get,
        floor_price=lambda e: PRICE if e == FFN.expert_id else None,
        queue_depth=lambda e: 0,
        queue_cap=256,
        host_sign=lambda m: HOST.sign(m).value,
        now_ms=lambda: NOW,
    )


class Market:
    """One channel, registered on both sides."""

    def __init__(self, path: Path, deposit: int = 5, **policy: Any) -> None:
        self.open_tx, self.terms = _open(deposit)
        client_row = new_channel_row(
            chain=CHAIN,
            provider_peer="provider",
            terms=self.terms,
            open_tx=self.open_tx.to_bytes(),
            key=IOU_KEY,
        )
        self.id = client_row.id
        self.till = _till(path, **policy)
        self.till.register(
            "caller",
            replace(
                client_row,
                role="provider",
                peer="caller",
                counterpart=CLIENT.account_id,
                iou_key=None,
                state="open",
            ),
            self.terms,
        )
        self.purse = Purse(
            MarketStore.open(path / "client.sqlite"),
            CHAIN,
            lambda peer: HOST.public_key.raw if peer == "provider" else None,
        )
        self.channel = self.purse.adopt(replace(client_row, state="open"), self.terms)
        self.keep_receipts = True  # else receipts that come are dropped (a client that died)
        self._paid: dict[int, Paid] = {}  # checked receipts, by seq
        self._came = trio.Event()

    def on_receipts(self, peer: str, items: list[Any], seal: bytes) -> None:
        """What the client's market does with receipts that come: check and keep them."""
        if self.keep_receipts:
            self.purse.receipts(peer, items, seal)
            self.check()

    def check(self) -> None:
        self._paid.update((paid.receipt.seq, paid) for paid in self.purse.check())
        self._came.set()
        self._came = trio.Event()

    async def paid_for(self, seq: int) -> Paid:
        """The checked receipt of the answer to the call of IOU `seq`, once it came."""
        while seq not in self._paid:
            await self._came.wait()
        return self._paid.pop(seq)


@asynccontextmanager
async def serving(
    host: ExpertHost, market: Market | None = None, caller: str = "caller"
) -> AsyncIterator[InferChannel]:
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)

        async def open_stream(peer: str, protocol: str) -> Stream:
            ours, theirs = memory_stream_pair(caller, peer)
            nursery.start_soon(host.serve, theirs)
            return ours

        on_receipts = market.on_receipts if market is not None else None
        yield InferChannel("provider", open_stream, nursery, on_receipts=on_receipts)
        nursery.cancel_scope.cancel()


def _request(i: int, rows: int = 1) -> wire.TensorRequest:
    x = np.random.default_rng(i).standard_normal((rows, 64)).astype(np.float32)
    return wire.TensorRequest.of(i, FFN.expert_id, 5_000, x)


class _PayOnly:
    """A ticket's payment without its signing ahead (`sent`)."""

    def __init__(self, ticket: PayTicket) -> None:
        self.ticket = ticket

    def pay(self) -> wire.Pay:
        return self.ticket.pay()

    def sent(self) -> None:
        pass


async def _paid_call(
    market: Market, channel: InferChannel, i: int, rows: int = 1, *, ahead: bool = False
) -> Any:
    request = _request(i, rows)
    ticket = market.purse.reserve(market.channel, "provider", request, PRICE)
    assert ticket is not None
    try:
        result = await channel.call(request, ticket if ahead else _PayOnly(ticket))
    except BaseException:
        market.purse.release(ticket)
        raise
    _record(market.purse, ticket, result)
    market.check()  # (its receipt may have come before the answer was counted)
    return await market.paid_for(ticket.seq)


def _settle_and_apply(market: Market, iou: bytes, charged_milli: int) -> Ledger:
    ledger = Ledger(GENESIS, default_registry())
    amount = mw.credits_for(charged_milli)
    settle = signed(
        PROVIDER,
        GENESIS,
        0,
        "channel_settle",
        settle_payload(market.terms, Iou.from_bytes(iou), amount),
    )
    for tx in (market.open_tx, settle):
        assert [o.applied for o in ledger.accept(tx)] == [True]
        ledger.check_conservation()
    return ledger


async def test_paid_calls_are_charged_receipted_and_settle_what_was_served(tmp_path: Path) -> None:
    market = Market(tmp_path)
    host = ExpertHost([FFN], gate=market.till)
    with trio.fail_after(20):
        async with serving(host, market) as channel:
            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(_paid_call, market, channel, i)
            paid = await _paid_call(market, channel, 99, rows=4)
    assert paid.cost_milli == 8 * PRICE and not paid.disputed
    row = market.till.store.channel(market.id)
    assert row is not None and row.iou is not None
    assert row.charged_milli == (60 * 2 + 8) * PRICE == market.channel.owed_milli
    ledger = _settle_and_apply(market, row.iou, row.charged_milli)
    # 1,280 milli-credits: the provider claims 2 credits, the client gets 3 of its 5 back
    assert ledger.balance(PROVIDER.account_id) == 2 and ledger.balance(CLIENT.account_id) == 998
    used = market.purse.store.usage()
    earned = market.till.store.usage()
    assert [(u["kind"], u["calls"], u["credits"]) for u in used] == [("used", 61, 1.28)]
    assert [(u["kind"], u["calls"], u["credits"]) for u in earned] == [("earned", 61, 1.28)]


async def test_calls_the_newest_iou_pays_for_carry_it_again_and_the_next_is_signed_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    market = Market(tmp_path)
    host = ExpertHost([FFN], gate=market.till)
    signed_at: list[tuple[int, int]] = []  # (seq, cumulative) of every IOU the client signs
    create = Iou.create

    def counted(key: SigningKey, channel: bytes, cumulative: int, seq: int) -> Iou:
        signed_at.append((seq, cumulative))
        return create(key, channel, cumulative, seq)

    monkeypatch.setattr(Iou, "create", counted)
    unpacked: list[bytes] = []  # every IOU the provider unpacked

    def unpacking(data: bytes) -> Any:
        unpacked.append(data)
        return iou_head(data)

    monkeypatch.setattr(market_provider, "iou_head", unpacking)
    sent: list[wire.Pay] = []  # what every call carried
    sign = PayTicket.pay

    def kept(ticket: PayTicket) -> wire.Pay:
        sent.append(sign(ticket))
        return sent[-1]

    monkeypatch.setattr(PayTicket, "pay", kept)
    with trio.fail_after(20):
        async with serving(host, market) as channel:
            # 1 row: 0.02 credits; 24 rows: 0.48. Owed after each call: 0.02, 0.5, 0.98.
            for i, rows in enumerate((1, 24, 24), 1):
                await _paid_call(market, channel, i, rows=rows, ahead=True)
            # The first call's IOU (1 credit) paid for all three. After the third, a next
            # call like it would need 2: signed while the third's answer came.
            assert signed_at == [(1, 1), (4, 2)]
            assert market.channel.spare is not None
            await _paid_call(market, channel, 4, rows=24, ahead=True)  # the one signed ahead
            # Owed 1.46: the fifth call is paid for by the fourth's IOU, and a next call like
            # it would need 3 credits: signed ahead.
            await _paid_call(market, channel, 5, rows=24, ahead=True)
            assert signed_at[2:] == [(6, 3)]
            # 100 rows: 2 credits; owed 1.94, so 4 are needed, not the 3 signed ahead: a
            # new one, and the one signed ahead goes unused.
            await _paid_call(market, channel, 6, rows=100, ahead=True)
            assert market.channel.spare is None
            await _paid_call(market, channel, 7)
    assert signed_at == [(1, 1), (4, 2), (6, 3), (6, 4)]
    ious = [Iou.from_bytes(pay.iou) for pay in sent]
    assert [pay.seq for pay in sent] == [1, 2, 3, 4, 5, 6, 7]  # each call has its own number
    assert [(i.seq, i.cumulative) for i in ious] == [(1, 1)] * 3 + [(4, 2)] * 2 + [(6, 4)] * 2
    # The provider unpacked each IOU once: a known one is taken by its bytes.
    assert unpacked == [sent[0].iou, sent[3].iou, sent[5].iou]
    assert market.channel.owed_milli == (1 + 24 * 4 + 100 + 1) * 2 * PRICE
    row = market.till.store.channel(market.id)
    assert row is not None and row.iou == sent[6].iou and row.charged_milli == 3960
    _settle_and_apply(market, row.iou, row.charged_milli)


def _iou(market: Market, cumulative: int, seq: int, signer: SigningKey = IOU_KEY) -> wire.Pay:
    """An IOU signed for call `seq`, paying for that call."""
    return wire.Pay(Iou.create(signer, market.id, cumulative, seq).to_bytes(), seq)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no_pay", "serves for pay"),
        ("forged", "bad IOU"),
        ("above_deposit", "above the channel deposit"),
        ("short", "does not cover"),
        ("other_account", "another account"),
        ("unknown_channel", "no open channel"),
        ("garbage", "bad IOU"),
        ("not_canonical", "canonical"),
        ("later_call", "signed for call 2"),
        ("over_cap", "over the cap"),
    ],
)
def test_the_till_refuses_bad_payments_and_charges_nothing(
    tmp_path: Path, case: str, reason: str
) -> None:
    market = Market(tmp_path, max_tokens_per_request=100)
    request = _request(1)
    peer = "caller"
    pay: wire.Pay | None = _iou(market, 1, 1)
    if case == "no_pay":
        pay = None
    elif case == "forged":
        pay = _iou(market, 1, 1, signer=MALLORY)
    elif case == "above_deposit":
        pay = _iou(market, 6, 1)
    elif case == "short":
        request = _request(1, rows=60)  # 120 tokens: 1.2 credits, the IOU says 1
        (tmp_path / "b").mkdir()
        market = Market(tmp_path / "b", max_tokens_per_request=1_000)
    elif case == "other_account":
        peer = "mallory"
    elif case == "unknown_channel":
        pay = wire.Pay(Iou.create(IOU_KEY, b"\x01" * 32, 1, 1).to_bytes(), 1)
    elif case == "garbage":
        pay = wire.Pay(b"\x93\x01\x02", 1)
    elif case == "not_canonical":
        assert pay is not None and pay.iou[1:11] == b"\xa9swarm/iou"  # the tag, as a fixstr
        # The same tag as a str8: the same fields.
        pay = wire.Pay(pay.iou[:1] + b"\xd9\x09" + pay.iou[2:], 1)
    elif case == "later_call":
        pay = wire.Pay(_iou(market, 1, 2).iou, 1)  # an IOU can pay only for calls after it
    elif case == "over_cap":
        request = _request(1, rows=51)
    with pytest.raises(PaymentRefused, match=reason):
        market.till.admit(peer, replace(request, pay=pay))
    state = market.till.state(market.id)
    assert state is not None and state.reserved_milli == 0 and state.charged_milli == 0


def test_a_replayed_iou_is_refused(tmp_path: Path) -> None:
    market = Market(tmp_path)
    pay = _iou(market, 1, 1)
    request = replace(_request(1), pay=pay)
    ticket = market.till.admit("caller", request)
    assert ticket is not None
    market.till.release(ticket)
    with pytest.raises(PaymentRefused, match="replayed"):
        market.till.admit("caller", request)
    # The same IOU with the next call's number: the client's newest IOU, which still pays.
    again = market.till.admit("caller", replace(request, pay=pay._replace(seq=2)))
    assert isinstance(again, Ticket) and again.seq == 2
    market.till.release(again)
    for seq in (2, 1):  # and again as a replay of either call
        with pytest.raises(PaymentRefused, match="replayed"):
            market.till.admit("caller", replace(request, pay=pay._replace(seq=seq)))
    state = market.till.state(market.id)
    assert state is not None and state.seq == 2 and state.reserved_milli == 0


def test_an_iou_paid_for_already_is_checked_after_the_answer_and_a_bad_one_ends_service(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)
    till = market.till
    ious = {}

    def answer(seq: int, credits: int, signer: SigningKey = IOU_KEY) -> Any:
        ious[seq] = _iou(market, credits, seq, signer)  # 1 credit: 50 calls at 0.02
        request = replace(_request(seq), pay=ious[seq])
        ticket = till.admit("caller", request)
        result = wire.ArrayResult(seq, FFN.expert_id, 1, 64, bytes(256), 1, 1, 5)
        till.charge(ticket, request, result)
        return ticket, request, result

    def stored() -> Any:
        row = till.store.channel(market.id)
        assert row is not None
        return row

    first = answer(1, 1)
    assert first[0].checked  # nothing paid for this call before its own IOU
    assert stored().iou == ious[1].iou  # stored with the charge, before the answer
    till.answered(*first)
    # Paid for by the first IOU, and paying no more: never checked, never stored, so even
    # a forged one does no harm.
    idle = answer(2, 1, signer=MALLORY)
    assert not idle[0].checked
    till.answered(*idle)
    assert stored().iou == ious[1].iou
    more = answer(3, 2)  # pays more: checked after the answer, and stored then
    assert not more[0].checked
    assert stored().iou == ious[1].iou
    till.answered(*more)
    assert stored().iou == ious[3].iou
    forged = answer(4, 3, signer=MALLORY)  # answered: the third IOU pays for it
    till.answered(*forged)
    with pytest.raises(ChannelRefused, match="failed its check"):
        till.admit("caller", replace(_request(5), pay=_iou(market, 3, 5)))
    row = stored()
    assert row.iou == ious[3].iou and row.charged_milli == 4 * 2 * PRICE
    # The last good IOU pays for every answer, the forged ones' too.
    ledger = _settle_and_apply(market, row.iou, row.charged_milli)
    assert ledger.balance(PROVIDER.account_id) == 1


def test_a_provider_restarted_before_a_late_check_keeps_the_earlier_iou(tmp_path: Path) -> None:
    market = Market(tmp_path)
    first = _iou(market, 1, 1)
    for seq, pay in ((1, first), (2, _iou(market, 2, 2))):
        request = replace(_request(seq), pay=pay)
        ticket = market.till.admit("caller", request)
        result = wire.ArrayResult(seq, FFN.expert_id, 1, 64, bytes(256), 1, 1, 5)
        market.till.charge(ticket, request, result)
        if seq == 1:
            market.till.answered(ticket, request, result)
    # kill -9 here, before the second IOU's late check: a new till on the same files
    kill_store(market.till.store)
    again = _till(tmp_path)
    row = again.store.channel(market.id)
    assert row is not None and row.iou == first.iou and row.charged_milli == 2 * 2 * PRICE
    state = again.state(market.id)
    assert state is not None and state.seq == 2 and state.paid_milli == 1000


def test_the_client_day_limit_holds_across_calls(tmp_path: Path) -> None:
    market = Market(tmp_path, client_tokens_per_day=3)
    request = _request(1)
    ticket = market.till.admit("caller", replace(request, pay=_iou(market, 1, 1)))
    result = wire.ArrayResult(1, FFN.expert_id, 1, 64, bytes(256), 1, 1, 5)
    market.till.charge(ticket, request, result)
    with pytest.raises(PaymentRefused, match="for the day"):
        market.till.admit("caller", replace(request, pay=_iou(market, 1, 2)))


async def test_receipts_made_together_go_together_in_a_sealed_frame_of_their_own(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Each receipt is made after its answer has gone; no answer carries one (its caller
    # would wait for them). The receipts made within RECEIPT_DELAY_S of the first go in
    # one frame under one seal, that long after it.
    market = Market(tmp_path)
    host = ExpertHost([FFN], gate=market.till)
    ours, theirs = memory_stream_pair("caller", "provider")
    framed = FramedStream(ours, wire.MAX_FRAME)

    async def call(i: int) -> float:
        ticket = market.purse.reserve(market.channel, "provider", _request(i), PRICE)
        assert ticket is not None
        await framed.send(replace(_request(i), pay=ticket.pay()).encode())
        answer = await framed.receive()
        assert answer is not None and answer["id"] == i and "receipts" not in answer
        return trio.current_time()

    async def receipts() -> list[int]:
        frame = await framed.receive()
        assert frame is not None and frame["t"] == "receipts"
        sealed = mw.open_receipts(frame["receipts"], frame["seal"])
        checked: set[bytes] = set()
        for receipt in sealed:
            receipt.verify(HOST.public_key.raw, checked)
        assert len(checked) == 1  # one seal for the frame
        return [r.seq for r in sealed]

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            nursery.start_soon(host.serve, theirs)
            first = await call(1)
            await call(2)
            autojump_clock.jump(RECEIPT_DELAY_S / 2)  # (still within the first's window)
            await call(3)
            assert await receipts() == [1, 2, 3]
            assert trio.current_time() == pytest.approx(first + RECEIPT_DELAY_S)
            await call(4)  # the next frame's first
            assert await receipts() == [4]
            nursery.cancel_scope.cancel()


async def test_receipts_not_sent_when_the_stream_ends_are_made_and_stored_all_the_same(
    tmp_path: Path,
) -> None:
    # A stream cancelled before its frame of receipts goes (the peer gone, the node
    # stopping) still leaves each charged call's receipt stored with its charge.
    market = Market(tmp_path)
    host = ExpertHost([FFN], gate=market.till)
    ours, theirs = memory_stream_pair("caller", "provider")
    framed = FramedStream(ours, wire.MAX_FRAME)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            serving = trio.CancelScope()

            async def serve() -> None:
                with serving:
                    await host.serve(theirs)

            nursery.start_soon(serve)
            for i in (1, 2):
                ticket = market.purse.reserve(market.channel, "provider", _request(i), PRICE)
                assert ticket is not None
                await framed.send(replace(_request(i), pay=ticket.pay()).encode())
                assert (await framed.receive() or {}).get("id") == i
            serving.cancel()  # before RECEIPT_DELAY_S: no frame of receipts was sent
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    store = market.till.store
    store.flush()
    bodies = store._conn.execute("SELECT seq, body FROM receipts ORDER BY seq").fetchall()
    assert [seq for seq, _ in bodies] == [1, 2]
    for seq, body in bodies:
        receipt = mw.Receipt.from_evidence(decode(body, max_bytes=len(body), what="receipt"))
        assert (receipt.seq, receipt.seal) == (seq, None)  # made, never sealed


def _record(purse: Purse, ticket: PayTicket, result: wire.TextResult | wire.ArrayResult) -> int:
    """An answer counted and caught up with at once (the market leaves the catching up to
    the next call's send)."""
    ours = purse.count(ticket, result)
    purse.catch_up()
    return ours


def _served(market: Market, i: int) -> tuple[Any, wire.ArrayResult, mw.Receipt]:
    """A paid call of the client's, served by the till with no stream between: (the
    client's ticket, the answer, the provider's receipt of it, not sealed yet)."""
    ticket = market.purse.reserve(market.channel, "provider", _request(i), PRICE)
    assert ticket is not None
    request = replace(_request(i), pay=ticket.pay())
    admitted = market.till.admit("caller", request)
    result = wire.ArrayResult(i, FFN.expert_id, 1, 64, bytes(256), 1, 1, 5)
    market.till.charge(admitted, request, result)
    return ticket, result, market.till.answered(admitted, request, result)


def test_what_an_answer_changes_is_recorded_off_the_calls_path(tmp_path: Path) -> None:
    market = Market(tmp_path)
    purse, channel = market.purse, market.channel
    first, result, receipt = _served(market, 1)
    assert purse.count(first, result) == 2 * PRICE  # its cost, at once
    # Until it is caught up with, the answer's reservation stands for its cost.
    assert (channel.owed_milli, channel.reserved_milli, purse.behind) == (0, 2 * PRICE, True)
    second, result_2, receipt_2 = _served(market, 2)  # the next call, on the wire
    assert channel.reserved_milli == 4 * PRICE
    second.sent()  # while it waits for its answer
    assert (channel.owed_milli, channel.reserved_milli) == (2 * PRICE, 2 * PRICE)
    assert not purse.behind
    assert purse.count(second, result_2) == 2 * PRICE
    frame = market.till.seal([receipt, receipt_2])
    # Receipts that come catch up first: the last answer, counted a moment ago, is theirs.
    assert purse.receipts("provider", frame["receipts"], frame["seal"]) == 2
    assert [paid.receipt.seq for paid in purse.check()] == [1, 2]
    assert (channel.owed_milli, channel.reserved_milli, purse.awaiting()) == (4 * PRICE, 0, 0)


def test_the_next_channel_is_opened_ahead_when_the_rate_of_use_would_empty_this_one_soon(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)  # 5 credits: 250 one-row calls of 0.02
    channel, purse = market.channel, market.purse

    def reserve(calls: int) -> None:
        for i in range(calls):
            assert purse.reserve(channel, "provider", _request(i), PRICE) is not None

    start = NOW
    assert not _running_low(channel, start)  # (its first use: the rate is measured from it)
    reserve(50)  # a fifth used
    assert not _running_low(channel, start + 500)  # (too soon to know a rate)
    assert not _running_low(channel, start + 2_000)  # the rest lasts 8 s more at this rate
    reserve(50)
    assert _running_low(channel, start + 1_000)  # 1.5 s more: open the next one now
    assert not _running_low(channel, start + 20_000)  # 30 s more: not yet
    reserve(101)  # under a fifth left: open the next one, whatever the rate
    assert _running_low(channel, start + 10**6)


def test_a_channel_opened_ahead_takes_the_calls_once_the_one_in_use_cannot_pay(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path, deposit=1)  # 1 credit: 50 one-row calls of 0.02
    purse, old = market.purse, market.channel
    purse.store.put_channel(old.row)  # (as a client's market stores each channel it opens)
    iou_key = key(5)  # the next channel, opened ahead: it expires later
    payload = open_payload(PROVIDER.account_id, 3, EXPIRY + 60_000, iou_key.public_key)
    tx = signed(CLIENT, GENESIS, 1, "channel_open", payload)
    terms = ChannelTerms.of_open(tx)
    row = new_channel_row(
        chain=CHAIN, provider_peer="provider", terms=terms, open_tx=tx.to_bytes(), key=iou_key
    )
    purse.store.put_channel(replace(row, state="open"))
    fresh = purse.adopt(replace(row, state="open"), terms)
    purse.resume(fresh, mw.ChannelState(0, 0, None, mw.Quote(True, {}, 0)))
    account = PROVIDER.account_id
    assert purse.channel(account) is old and purse.has_next(account)
    assert (purse.use_of(old.id), purse.use_of(fresh.id), purse.use_of(b"?" * 32)) == (
        "in use",
        "next",
        "",
    )
    for i in range(50):
        assert purse.reserve(old, "provider", _request(i), PRICE) is not None
    assert purse.reserve(old, "provider", _request(50), PRICE) is None  # used up, to the end
    assert purse.switch(account) is fresh and purse.channel(account) is fresh
    assert not purse.has_next(account) and purse.switch(account) is None

    # After a restart the channel that expires first is used first; if it ends, the other
    # takes its calls.
    again = Purse(purse.store, CHAIN, lambda peer: None)
    assert again.channel(account).id == old.id  # type: ignore[union-attr]
    assert [c.id for c in again.unsynced(account)] == [old.id, fresh.id]
    again.ended(old.id)
    assert again.channel(account).id == fresh.id and not again.has_next(account)  # type: ignore[union-attr]
    again.ended(fresh.id)
    assert again.channel(account) is None


def test_a_frames_seal_is_checked_once_whatever_slices_its_receipts_are_judged_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    market = Market(tmp_path)
    purse = market.purse
    checks: list[bytes] = []
    real_verify = PublicKey.verify

    def verify(key: Any, signature: Any, message: bytes) -> None:
        checks.append(signature.value)
        real_verify(key, signature, message)

    monkeypatch.setattr(PublicKey, "verify", verify)
    frames = []
    for first in (1, 4, 7):
        served = [_served(market, i) for i in range(first, first + 3)]
        for ticket, result, _ in served:
            _record(purse, ticket, result)
        frames.append(market.till.seal([receipt for _, _, receipt in served]))
    forged = frames[2]["seal"]
    frames[2]["seal"] = forged[:-1] + bytes([forged[-1] ^ 1])  # (the third frame's seal)
    for frame in frames:
        assert purse.receipts("provider", frame["receipts"], frame["seal"]) == 3
    batch = purse.unchecked()
    checks.clear()  # (signing may check its own signature)
    judged = [purse.judge(batch[at : at + 2]) for at in range(0, 9, 2)]  # (slices across frames)
    disputes = [dispute for one in judged for dispute, _ in one]
    assert disputes[:6] == [""] * 6
    assert all(dispute.startswith("not the provider's receipt") for dispute in disputes[6:])
    # One check for each good frame; the forged seal fails for each receipt it is tried on.
    assert checks == [frames[0]["seal"], frames[1]["seal"]] + [frames[2]["seal"]] * 3


def test_a_receipt_that_came_first_is_queued_once_its_answer_is_counted(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)
    purse = market.purse
    ticket, result, receipt = _served(market, 1)
    frame = market.till.seal([receipt])
    assert purse.receipts("provider", frame["receipts"], frame["seal"]) == 0  # not counted yet
    assert not purse.queued
    purse.count(ticket, result)
    assert purse.queued and not purse.behind  # matched at once: the checker is woken for it
    (paid,) = purse.check()
    assert paid.receipt.seq == 1 and not paid.disputed


def test_a_receipt_that_comes_before_its_answer_is_counted_is_kept_for_it(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)
    purse = market.purse

    def served(i: int) -> tuple[Any, wire.ArrayResult, dict[str, Any]]:
        ticket, result, receipt = _served(market, i)
        return ticket, result, market.till.seal([receipt])

    def deliver(provider: str, frame: dict[str, Any]) -> int:
        return purse.receipts(provider, frame["receipts"], frame["seal"])

    ticket, result, frame = served(1)
    assert deliver("provider", frame) == 0  # its answer is not counted yet
    assert _record(purse, ticket, result) == 2 * PRICE
    (paid,) = purse.check()
    assert paid.receipt.seq == 1 and not paid.disputed and purse.awaiting() == 0
    ticket, result, frame = served(2)
    _record(purse, ticket, result)
    assert purse.awaiting() == 1
    assert deliver("mallory", frame) == 0  # another provider's stream: not its
    # A malformed receipt spoils its frame (the seal covers it): none of it is read.
    broken = {**frame, "receipts": [["not", "a receipt"], *frame["receipts"]]}
    assert deliver("provider", broken) == 0 and purse.awaiting() == 1
    assert deliver("provider", frame) == 1
    (paid,) = purse.check()
    assert paid.receipt.seq == 2 and purse.awaiting() == 0
    assert [r["seq"] for r in purse.store.receipts("client")] == [2, 1]
    # Each kept receipt is proof on its own of what the provider sealed.
    for (body,) in purse.store._conn.execute("SELECT body FROM receipts WHERE role = 'client'"):
        kept = mw.Receipt.from_evidence(decode(body, max_bytes=len(body), what="kept"))
        kept.verify(HOST.public_key.raw)


def test_an_answer_whose_receipt_never_comes_is_kept_disputed_at_our_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    market = Market(tmp_path)
    purse = market.purse
    ticket = purse.reserve(market.channel, "provider", _request(1, rows=2), PRICE)
    assert ticket is not None
    ticket.pay()
    result = wire.ArrayResult(1, FFN.expert_id, 2, 64, bytes(512), 2, 2, 5)
    assert _record(purse, ticket, result) == 4 * PRICE
    assert purse.awaiting() == 1 and purse.check() == []  # still waiting for it
    monkeypatch.setattr(market_client, "RECEIPT_GIVE_UP_S", -1.0)  # (as if 60 s went by)
    assert purse.awaiting() == 0
    (paid,) = purse.check()
    assert paid.disputed.startswith("no receipt came") and paid.cost_milli == 4 * PRICE
    assert not paid.blame  # (a stream that broke loses receipts, whoever broke it)
    (kept,) = purse.store.receipts("client")
    assert kept["disputed"] == paid.disputed
    assert (kept["seq"], kept["tokens_in"], kept["tokens_out"]) == (1, 2, 2)
    (used,) = purse.store.usage()
    assert (used["calls"], used["credits"]) == (1, 4 * PRICE / 1000)


async def test_a_receipt_claiming_more_tokens_is_disputed_and_not_paid(tmp_path: Path) -> None:
    market = Market(tmp_path)
    honest_charge = market.till.charge

    def inflated(ticket: object, request: wire.Request, result: wire.Result) -> None:
        # A provider that bills one token more than it served, past its own reservation
        # (and seals a receipt for that count).
        assert isinstance(result, wire.ArrayResult) and isinstance(ticket, Ticket)
        ticket.max_tokens += 1
        honest_charge(ticket, request, replace(result, tokens_out=result.tokens_out + 1))

    market.till.charge = inflated  # type: ignore[method-assign]
    host = ExpertHost([FFN], gate=market.till)
    with trio.fail_after(10):
        async with serving(host, market) as channel:
            paid = await _paid_call(market, channel, 1, rows=2)
            assert "we count 0.040" in paid.disputed and paid.cost_milli == 4 * PRICE
            assert paid.blame and paid.expert == FFN.expert_id
            assert paid.receipt.cost_milli == 5 * PRICE
            # The provider's count is now above ours: our next IOU (0.04 + 0.96 = 1 credit)
            # cannot cover its 0.05 + 0.96.
            with pytest.raises(CallFailed, match="does not cover"):
                await _paid_call(market, channel, 2, rows=48)
    receipts = market.purse.store.receipts()
    assert receipts[0]["disputed"] and market.channel.owed_milli == 4 * PRICE


async def test_a_receipt_not_sealed_by_the_provider_is_kept_disputed(tmp_path: Path) -> None:
    market = Market(tmp_path)
    market.purse._host_key_of = lambda peer: SigningKey(Scheme.ED25519, b"\x08" * 32).public_key.raw
    host = ExpertHost([FFN], gate=market.till)
    with trio.fail_after(10):
        async with serving(host, market) as channel:
            paid = await _paid_call(market, channel, 1)
    assert "not the provider's receipt" in paid.disputed and "signature" in paid.disputed
    assert paid.blame  # (routing counts it against the provider)
    (kept,) = market.purse.store.receipts("client")
    assert kept["disputed"] == paid.disputed


def test_a_wrong_receipt_is_blamed_on_the_call_and_a_missing_host_key_on_no_one(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)
    purse = market.purse

    def paid_for(i: int, change: dict[str, Any]) -> Paid:
        ticket, result, receipt = _served(market, i)
        frame = market.till.seal([replace(receipt, **change)])
        _record(purse, ticket, result)
        assert purse.receipts("provider", frame["receipts"], frame["seal"]) == 1
        (paid,) = purse.check()
        return paid

    # A receipt naming another expert: the blame goes to the expert called, not the one named.
    other = paid_for(1, {"expert": "ab" * 32})
    assert other.disputed == "receipt for another channel or expert" and other.blame
    assert other.expert == FFN.expert_id and other.provider == "provider"
    assert not paid_for(2, {}).blame
    purse._host_key_of = lambda peer: None  # (the provider's hello is no longer known)
    unknown = paid_for(3, {})
    assert unknown.disputed.startswith("not checked") and not unknown.blame


async def test_a_provider_restarted_after_answering_settles_with_the_stored_iou(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)
    host = ExpertHost([FFN], gate=market.till)
    with trio.fail_after(10):
        async with serving(host, market) as channel:
            for i in range(3):
                await _paid_call(market, channel, i)
    market.till.store.close()  # a kill -9: nothing but what the store holds survives
    again = _till(tmp_path)
    state = again.state(market.id)
    assert state is not None and state.charged_milli == 3 * 2 * PRICE and state.seq == 3
    with pytest.raises(PaymentRefused, match="replayed"):
        again.admit("caller", replace(_request(9), pay=_iou(market, 1, 3)))
    row = again.store.channel(market.id)
    assert row is not None and row.iou is not None
    ledger = _settle_and_apply(market, row.iou, row.charged_milli)
    assert ledger.balance(PROVIDER.account_id) == 1  # 0.06 credits, rounded up once


async def test_a_client_restarted_before_keeping_receipts_resumes_from_the_provider(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path)
    market.purse.store.put_channel(market.channel.row)
    market.keep_receipts = False  # the receipts never checked nor kept
    host = ExpertHost([FFN], gate=market.till)
    with trio.fail_after(10):
        async with serving(host, market) as channel:
            for i in range(3):  # answered and counted
                request = _request(i)
                ticket = market.purse.reserve(market.channel, "provider", request, PRICE)
                assert ticket is not None
                result = await channel.call(request, _PayOnly(ticket))
                _record(market.purse, ticket, result)
            market.purse.store.close()  # a kill -9 of the client
            purse = Purse(
                MarketStore.open(tmp_path / "client.sqlite"),
                CHAIN,
                lambda peer: HOST.public_key.raw,
            )
            again = purse.channel(PROVIDER.account_id)
            assert again is not None and again.owed_milli == 0 and not again.synced
            stale = purse.reserve(again, "provider", _request(7), PRICE)
            assert stale is not None
            with pytest.raises(CallFailed, match="replayed"):
                await channel.call(_request(7), _PayOnly(stale))
            purse.release(stale)
            served = market.till.state(market.id)
            assert served is not None
            quote = mw.Quote(True, {}, 0)
            purse.resume(again, mw.ChannelState(served.charged_milli, served.seq, None, quote))
            assert again.owed_milli == 3 * 2 * PRICE and again.synced
            market.purse, market.keep_receipts = purse, True
            ticket = purse.reserve(again, "provider", _request(8), PRICE)
            assert ticket is not None
            result = await channel.call(_request(8), _PayOnly(ticket))
            assert _record(purse, ticket, result) == 2 * PRICE
            market.check()
            paid = await market.paid_for(ticket.seq)
            assert not paid.disputed and paid.receipt.charged_milli == 4 * 2 * PRICE


def test_the_price_follows_the_queue_within_published_bounds_and_a_quote_holds(
    tmp_path: Path,
) -> None:
    market = Market(tmp_path, price_ceiling=30)
    depth = {"now": 0}
    till = market.till
    till._depth = lambda expert: depth["now"]
    assert till.price(FFN.expert_id) == PRICE  # an idle provider asks its floor
    quote = till.quote([FFN.expert_id], CLIENT.account_id)
    assert quote.prices == {FFN.expert_id: PRICE} and quote.ceiling == 30 and quote.paid
    depth["now"] = 128  # half of the queue cap
    assert till.price(FFN.expert_id) == 20
    depth["now"] = 10_000
    assert till.price(FFN.expert_id) == 30  # never above the ceiling
    # The quote holds for the client that asked: its calls are charged the quoted price.
    request = replace(_request(1), pay=_iou(market, 1, 1))
    ticket = till.admit("caller", request)
    assert isinstance(ticket, Ticket) and ticket.price == PRICE
    assert till.price("ab" * 32) is None
