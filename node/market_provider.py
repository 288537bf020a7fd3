"""The provider's side of the market: which calls it serves for pay, and what it charges.

`Till` is the `PaymentGate` of `protocols.infer_server`: for every paid request, in the order
the requests came off the stream, `admit` checks the IOU against the channel (accepted on the
DAG and told to us over `/swarm/market/1.0.0`), the client, the limits and the call's largest
cost, and reserves that cost; `charge` counts the tokens actually served and journals the
charge (with the IOU, when checked) before the answer goes out; `answered`, after it, makes
the receipt and stores it, and the server sends it after the answer, in a frame of receipts
that `seal` signs; `release` drops the reservation of a call that failed. No consensus round
is on this path, and nothing on it signs.

A call is admitted when its number (`wire.Pay.seq`) is above every earlier call's on the
channel (a replay is refused), and its IOU, signed for it or for an earlier call, covers what
the channel has charged, what calls still open have reserved, and this call's largest cost.
So the newest IOU always pays for every answer sent, and the provider settles with it,
claiming only what it charged. A client sends its newest IOU again until it must name more
(IOUs name whole credits): the till knows each channel's newest IOU by its bytes, and one it
knows is not unpacked again.

The IOU's signature is checked before the answer unless the newest IOU already checked pays
for the call (IOUs name whole credits, so one usually covers many small calls): then the
call risks nothing: the IOU is only unpacked for its channel, amount and seq, and
`answered` checks it whole (encoding and signature) after the answer has gone out, off the
call's path, if it pays more than the checked one (else it adds nothing, and is dropped
unchecked). Only a checked IOU is stored (the provider settles with the newest
stored one); an IOU that fails the late check ends the channel's service, and the provider
settles with the last good one, which pays for everything it answered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from dag.channels import ChannelTerms, Iou, iou_head
from dag.errors import RemoteProtocolError
from node.config import MarketConfig
from node.market_store import ChannelRow, MarketStore
from protocols import infer_wire as wire
from protocols import market_wire as mw
from protocols.infer_server import ChannelRefused, PaymentRefused

log = logging.getLogger("swarm.market")
DAY_MS = 86_400_000


@dataclass
class _Open:
    """A channel being served: its terms and the counts not yet final."""

    row: ChannelRow
    terms: ChannelTerms
    charged_milli: int
    seq: int
    reserved_milli: int = 0
    last_ms: int = 0  # when it last charged a call (or was registered)
    paid_milli: int = 0  # what the newest IOU with a checked signature pays for
    refused: str = ""  # why no more calls are served on it (an IOU failed its late check)
    newest: bytes = b""  # the newest IOU admitted (a key of `Till._newest`)
    quotes: dict[str, tuple[int, int]] = field(default_factory=dict)  # expert: (price, until)
    client_peer: str = ""  # the peer found to be the client's (its account looked up once)


@dataclass(slots=True)
class Ticket:
    channel: _Open
    iou_bytes: bytes
    seq: int  # the call's
    cumulative: int  # the IOU's
    price: int
    max_cost_milli: int
    max_tokens: int
    checked: bool  # the IOU's signature was checked (else `answered` checks it)
    admitted_ms: int  # when it was admitted: its charge's time (the clock is not read again)
    # What `charge` counted (and journaled): tokens in, out, cost, the channel's total after.
    charge: tuple[int, int, int, int] | None = None


class Till:
    def __init__(
        self,
        *,
        policy: MarketConfig,
        store: MarketStore,
        chain: bytes,
        account_of: Callable[[str], bytes | None],
        floor_price: Callable[[str], int | None],
        queue_depth: Callable[[str], int],
        queue_cap: int,
        host_sign: Callable[[bytes], bytes],
        now_ms: Callable[[], int],
    ) -> None:
        self.policy = policy
        self._margin_ms = int(policy.settle_margin_s * 1000)
        self.store = store
        self.chain = chain
        self._account_of = account_of
        self._floor = floor_price
        self._depth = queue_depth
        self._queue_cap = max(1, queue_cap)
        self._sign = host_sign
        self._now_ms = now_ms
        self._open: dict[bytes, _Open] = {}
        self.on_answered: Callable[[], None] = lambda: None  # a charged answer went out
        # Each open channel's newest IOU admitted: (its channel, its cumulative), by its bytes.
        self._newest: dict[bytes, tuple[_Open, int]] = {}
        self._served_today = store.tokens_today("provider")
        self._client_today: dict[bytes, int] = {}  # filled from the store on first use
        self._day = now_ms() // DAY_MS
        for row in store.channels(role="provider", state="open"):
            self._serve(row)

    # -- prices and channels --------------------------------------------------------------

    def price(self, expert: str) -> int | None:
        """The price per 1,000 tokens now: the floor, raised with the queue up to the ceiling."""
        floor = self._floor(expert)
        return None if floor is None else self._priced(expert, floor)

    def _priced(self, expert: str, floor: int) -> int:
        ceiling = self.policy.price_ceiling
        if ceiling <= floor:
            return floor
        load = min(1.0, self._depth(expert) / self._queue_cap)
        return floor + round((ceiling - floor) * load)

    def quote(self, experts: list[str], client: bytes | None) -> mw.Quote:
        prices = {e: p for e in experts if (p := self.price(e)) is not None}
        valid_ms = int(self.policy.quote_valid_s * 1000)
        until = self._now_ms() + valid_ms
        for channel in self._open.values():
            if client is not None and channel.terms.client == client:
                channel.quotes.update({e: (p, until) for e, p in prices.items()})
        return mw.Quote(self.policy.serve_paid, prices, valid_ms, self.policy.price_ceiling)

    def register(self, peer: str, row: ChannelRow, terms: ChannelTerms) -> _Open:
        """Serve a channel the DAG has accepted for us (the caller checked its lock)."""
        known = self._open.get(row.id)
        if known is not None:
            return known
        stored = self.store.channel(row.id)
        if stored is None:
            self.store.put_channel(row)
            stored = row
        elif stored.state != "open":
            raise RemoteProtocolError(f"channel {row.id.hex()[:16]} has ended ({stored.state})")
        return self._serve(stored, terms)

    def _serve(self, row: ChannelRow, terms: ChannelTerms | None = None) -> _Open:
        # A stored IOU was checked before it was stored.
        paid = Iou.from_bytes(row.iou).cumulative * 1000 if row.iou is not None else 0
        channel = _Open(
            row,
            terms or row.terms(self.chain),
            row.charged_milli,
            row.seq,
            last_ms=self._now_ms(),
            paid_milli=paid,
        )
        self._open[row.id] = channel
        return channel

    def state(self, channel_id: bytes) -> _Open | None:
        return self._open.get(channel_id)

    def channels(self) -> list[_Open]:
        return list(self._open.values())

    def to_settle(self, *, every: bool = False) -> list[_Open]:
        """Channels with charges and no call open to end now: those near their expiry, idle
        for `settle_idle_s` (when set), or `every` one (an explicit settle)."""
        now = self._now_ms()
        idle_ms = int(self.policy.settle_idle_s * 1000)
        due = []
        for channel in self._open.values():
            if channel.reserved_milli or not channel.charged_milli:
                continue
            near = now >= channel.terms.expiry_ms - self._margin_ms
            idle = idle_ms > 0 and now - channel.last_ms >= idle_ms
            if near or idle or every:
                due.append(channel)
        return due

    def lapsed(self) -> list[_Open]:
        """Channels past serving (near their expiry) with nothing to settle: the client
        takes its deposit back with a close."""
        now = self._now_ms()
        return [
            c
            for c in self._open.values()
            if not c.charged_milli
            and not c.reserved_milli
            and now >= c.terms.expiry_ms - self._margin_ms
        ]

    def take(self, channel_id: bytes) -> _Open | None:
        """Serve the channel no more (it is being settled, or has lapsed)."""
        channel = self._open.pop(channel_id, None)
        if channel is not None:
            self._newest.pop(channel.newest, None)
        return channel

    # -- the call path (PaymentGate) ------------------------------------------------------

    def admit(self, peer: str, request: wire.Request) -> Ticket | None:
        if request.pay is None:
            if self.policy.serve_paid:
                raise PaymentRefused("this provider serves for pay: the call needs an IOU")
            return None
        if not self.policy.serve_paid:
            return None  # we serve for free; the IOU is not needed
        pay, seq = request.pay.iou, request.pay.seq
        known = self._newest.get(pay)
        if known is not None:
            channel, cumulative = known  # (its bytes were unpacked and checked when it came)
        else:
            head = iou_head(pay)
            if head is None:
                raise PaymentRefused(f"bad IOU: {_why_bad(pay)}")
            channel_id, cumulative, iou_seq = head
            found = self._open.get(channel_id)
            if found is None:
                raise ChannelRefused(f"no open channel {channel_id.hex()[:16]} here")
            channel = found
            if iou_seq > seq:
                raise PaymentRefused(f"bad IOU: signed for call {iou_seq}, after this one ({seq})")
        if channel.refused:
            raise ChannelRefused(channel.refused)
        terms = channel.terms
        if peer != channel.client_peer:
            if self._account_of(peer) != terms.client:
                raise ChannelRefused("the channel belongs to another account")
            channel.client_peer = peer
        if seq <= channel.seq:
            raise ChannelRefused(f"replayed call: seq {seq} is not above {channel.seq}")
        now = self._now_ms()
        if now >= terms.expiry_ms - self._margin_ms:
            raise ChannelRefused("the channel is about to expire: open another")
        policy = self.policy
        max_tokens = mw.max_tokens(request)
        if max_tokens > policy.max_tokens_per_request:
            raise PaymentRefused(
                f"{max_tokens} tokens is over the cap of {policy.max_tokens_per_request}"
            )
        client = terms.client
        used = self._client_today.get(client)
        if (
            used is None
            or used + max_tokens > policy.client_tokens_per_day
            or self._served_today + max_tokens > policy.tokens_per_day
            or now // DAY_MS != self._day
        ):
            self._limit_day(client, max_tokens, now)  # (refuses, or turns the day, or reads)
        expert = request.expert
        price = self._floor(expert)
        if price is None:
            raise PaymentRefused(f"this node hosts no expert {expert[:16]}")
        if policy.price_ceiling > price:
            price = self._priced(expert, price)
        if channel.quotes:  # (a quote holds its price for the client while it is valid)
            quoted = channel.quotes.get(expert)
            if quoted is not None and quoted[1] >= now:
                price = min(price, quoted[0])
        max_cost = mw.cost_milli(max_tokens, price)
        owed = channel.charged_milli + channel.reserved_milli + max_cost
        if cumulative > terms.deposit:
            raise PaymentRefused(
                f"bad IOU: IOU of {cumulative} is above the channel deposit of {terms.deposit}"
            )
        check_now = channel.paid_milli < owed  # else a checked IOU pays for this call already
        if check_now:
            try:
                Iou.from_bytes(pay).verify(terms.iou_key)
            except RemoteProtocolError as exc:
                raise PaymentRefused(f"bad IOU: {exc}") from None
        if cumulative * 1000 < owed:
            raise PaymentRefused(
                f"IOU of {cumulative} credits does not cover {mw.credits_for(owed)}"
            )
        if check_now:
            channel.paid_milli = max(channel.paid_milli, cumulative * 1000)
        if known is None:
            self._newest.pop(channel.newest, None)
            self._newest[pay] = (channel, cumulative)
            channel.newest = pay
        channel.seq = seq
        channel.reserved_milli += max_cost
        return Ticket(channel, pay, seq, cumulative, price, max_cost, max_tokens, check_now, now)

    def charge(self, ticket: object, request: wire.Request, result: wire.Result) -> None:
        assert isinstance(ticket, Ticket) and not isinstance(result, wire.ErrorResult)
        channel = ticket.channel
        tokens_in, tokens_out = result.tokens_in, result.tokens_out
        tokens = min(tokens_in + tokens_out, ticket.max_tokens)
        cost = mw.cost_milli(tokens, ticket.price)
        channel.reserved_milli -= ticket.max_cost_milli
        channel.charged_milli = total = channel.charged_milli + cost
        channel.last_ms = now = ticket.admitted_ms
        row, terms = channel.row, channel.terms
        self.store.record_charge(
            row.id,
            ticket.seq,
            row.peer,
            terms.client,
            request.expert,
            tokens_in,
            tokens_out,
            ticket.price,
            cost,
            total,
            now,
            ticket.iou_bytes if ticket.checked else None,  # (else stored by `answered`)
        )
        self._served_today += tokens
        client = terms.client
        self._client_today[client] = self._client_today.get(client, 0) + tokens
        ticket.charge = (tokens_in, tokens_out, cost, total)

    def answered(self, ticket: object, request: wire.Request, result: wire.Result) -> mw.Receipt:
        """After a charged call's answer went out: check an IOU whose check could wait (one
        that fails ends the channel's service: the calls it came with were paid by an
        earlier IOU), make the receipt and store it with the IOU."""
        assert isinstance(ticket, Ticket) and not isinstance(result, wire.ErrorResult)
        channel, charge = ticket.channel, ticket.charge
        assert charge is not None
        tokens_in, tokens_out, cost, total = charge
        checked = ticket.checked
        if not checked and ticket.cumulative * 1000 > channel.paid_milli:
            # (One that pays no more than the newest checked IOU is not needed: not checked,
            # not stored. IOUs name whole credits, so most calls' IOUs are such.)
            try:
                Iou.from_bytes(ticket.iou_bytes).verify(channel.terms.iou_key)
                checked = True
            except RemoteProtocolError as exc:
                if not channel.refused:
                    log.warning(
                        "channel %s: bad IOU on call %d: %s",
                        channel.row.id.hex()[:12],
                        ticket.seq,
                        exc,
                    )
                channel.refused = f"an IOU of this channel failed its check: {exc}"
            else:
                channel.paid_milli = max(channel.paid_milli, ticket.cumulative * 1000)
        receipt = mw.Receipt(
            channel.row.id,
            ticket.seq,
            request.expert,
            mw.request_digest(request),
            mw.output_digest(result),
            tokens_in,
            tokens_out,
            ticket.price,
            cost,
            total,
        )
        stored = ticket.iou_bytes if checked else None
        self.store.record_served(channel.row.peer, channel.terms.client, receipt, stored)
        self.on_answered()
        return receipt

    def seal(self, receipts: list[object]) -> dict[str, Any]:
        """A frame of receipts (`answered`'s), sealed by the host key (`mw.seal_receipts`)."""
        return mw.seal_receipts(cast(list[mw.Receipt], receipts), self._sign)

    def release(self, ticket: object) -> None:
        assert isinstance(ticket, Ticket)
        ticket.channel.reserved_milli -= ticket.max_cost_milli

    def _limit_day(self, client: bytes, tokens: int, now: int) -> None:
        day = now // DAY_MS
        if day != self._day:
            self._day, self._served_today = day, 0
            self._client_today.clear()
        if self._served_today + tokens > self.policy.tokens_per_day:
            raise PaymentRefused("this provider has served its tokens for the day")
        used = self._client_today.get(client)
        if used is None:
            used = self._client_today[client] = self.store.tokens_today("provider", client)
        if used + tokens > self.policy.client_tokens_per_day:
            raise PaymentRefused("this client has used its tokens for the day here")


def _why_bad(data: bytes) -> str:
    """What is wrong with IOU bytes that `iou_head` refused."""
    try:
        Iou.from_bytes(data)
    except RemoteProtocolError as exc:
        return str(exc)
    return "not an IOU"  # (unreachable: what `iou_head` refuses, `from_bytes` does too)
