"""The client's side of the market: channels it has opened, the IOUs it signs, the receipts
it checks.

Per provider account there is at most one open channel. A call `reserve`s its largest cost on
it (refused when the channel cannot pay: the caller opens another); its ticket's `pay` takes
the next number on the channel and the IOU that pays for what the client counts it owes plus
every reservation, and `count` counts the answer's cost by the client's own count of the
tokens. IOUs name whole credits, so one pays for many small calls: a call whose cost the
newest IOU still covers carries that IOU again, and only a call that needs the amount to rise
has one signed (an Ed25519 signature costs more than the rest of the call's payment).

What an answer changes in the purse (its reservation released, its cost owed, the answer
waiting for its receipt) is recorded off the call's path, by `catch_up`: in the next call's
`sent`, while that call waits for its answer, or first thing in whatever reads those. Until
then the answer's reservation, which covers its cost, stands for it. (Done on the path, this
bookkeeping cost a paid call about 7 us of its latency, in an A/B of the two.)

The answer's receipt comes after it, in a frame of receipts under one seal (`receipts`), and
is checked against the provider's host key (one signature check per frame), the request and
answer it names, and that count. A receipt that claims more than the client counted is kept,
marked disputed, and the client goes on paying by its own count; the provider can never
claim more than the newest IOU, which names the client's count plus open reservations.

While a call's answer is on its way, its ticket's `sent` signs the IOU the next call will
need if it is like this one and the newest IOU will not cover it (only when the call is the
channel's only one open): a client making one call after another signs while it waits, not on
the next call, and `pay` uses that IOU only if it names exactly the amount a call needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dag.channels import ChannelTerms, Iou, channel_id
from dag.crypto import Scheme, SigningKey
from dag.errors import RemoteProtocolError, SwarmError
from experts.tokens import count_tokens
from node.market_store import ChannelRow, MarketStore
from protocols import infer_wire as wire
from protocols import market_wire as mw

log = logging.getLogger("swarm.market")
RECEIPT_GIVE_UP_S = 60.0  # an answer whose receipt has not come by then is kept without one
MAX_EARLY = 16_384  # receipts kept for answers not counted yet (beyond: the oldest go)
MAX_SEALS = 256  # seals remembered as checked (beyond: forgotten, and checked again if seen)


@dataclass
class ClientChannel:
    row: ChannelRow
    terms: ChannelTerms
    key: SigningKey
    owed_milli: int  # what we count we owe: the sum of our own count of every answer
    seq: int
    reserved_milli: int = 0
    synced: bool = False  # our counts agree with the provider's (see `resume`)
    newest: tuple[int, bytes] | None = None  # (cumulative, bytes) of the newest IOU signed
    spare: tuple[int, bytes] | None = None  # the same, of one `ahead` signed, not sent yet
    since: tuple[int, int] | None = None  # (when, milli-credits used then): its first reserve

    @property
    def id(self) -> bytes:
        return self.row.id

    def room_milli(self) -> int:
        return self.terms.deposit * 1000 - self.owed_milli - self.reserved_milli


@dataclass(slots=True)
class PayTicket:
    purse: Purse
    channel: ClientChannel
    provider: str
    request: wire.Request
    price: int
    max_cost_milli: int
    seq: int = 0  # its IOU's, once signed

    def pay(self) -> wire.Pay:
        """The call's number and IOU (made as the request goes on the wire: the
        `infer_client.Payment` of the call): the newest IOU while it pays for what we owe
        with every reservation, else one signed for this call, or signed for it ahead."""
        channel = self.channel
        cumulative = max(1, mw.credits_for(channel.owed_milli + channel.reserved_milli))
        channel.seq = self.seq = seq = channel.seq + 1
        newest = channel.newest
        if newest is None or newest[0] < cumulative:
            spare, channel.spare = channel.spare, None
            if spare is not None and spare[0] == cumulative:
                newest = spare  # signed ahead (for a number at or below this call's)
            else:
                iou = Iou.create(channel.key, channel.id, cumulative, seq)
                newest = (cumulative, iou.to_bytes())
            channel.newest = newest
        return wire.Pay(newest[1], seq)

    def sent(self) -> None:
        """The call's request is sent: while we wait, catch up with the answers counted
        before (`Purse.catch_up`), and sign the IOU of a next call like this one if the
        newest IOU will not pay for that call."""
        self.purse.on_sent()
        if self.purse.behind:
            self.purse.catch_up()
        channel = self.channel
        if channel.spare is not None or channel.reserved_milli != self.max_cost_milli:
            return  # one is signed already, or other calls are open: the next is not known
        # What we will owe if this answer costs its most, and the next call reserves as much.
        cumulative = max(1, mw.credits_for(channel.owed_milli + 2 * self.max_cost_milli))
        if channel.newest is not None and cumulative <= channel.newest[0]:
            return  # the next call carries the newest IOU again
        if cumulative <= channel.terms.deposit:
            iou = Iou.create(channel.key, channel.id, cumulative, channel.seq + 1)
            channel.spare = (cumulative, iou.to_bytes())


@dataclass(frozen=True, slots=True)
class Paid:
    """What one answer cost, by the client's count, and whether the receipt agreed (`blame`:
    the provider sent a receipt that is wrong, not one that is missing or that we could not
    check)."""

    cost_milli: int
    receipt: mw.Receipt
    disputed: str
    provider: str
    expert: str  # the call's (a wrong receipt may name another)
    blame: bool


# A counted answer whose receipt is still to check: (ticket, result, receipt, our token count,
# our cost, the channel's total owed after it).
_Unchecked = tuple[PayTicket, wire.TextResult | wire.ArrayResult, mw.Receipt, int, int, int]
# A counted answer whose receipt has not come: (ticket, result, our token count, our cost, the
# channel's total owed after it, when it was counted).
_Awaiting = tuple[PayTicket, wire.TextResult | wire.ArrayResult, int, int, int, float]
# An answer counted by `count`, not yet caught up with: (ticket, result, tokens, our cost).
_Counted = tuple[PayTicket, wire.TextResult | wire.ArrayResult, int, int]


class Purse:
    def __init__(
        self, store: MarketStore, chain: bytes, host_key_of: Callable[[str], bytes | None]
    ) -> None:
        self.store = store
        self.chain = chain
        self._host_key_of = host_key_of
        self._open: dict[bytes, ClientChannel] = {}  # the channel calls use, by provider account
        # A channel opened ahead, by provider account: it takes the calls once the one in use
        # cannot pay for the next (`switch`), so that no room is left behind on that one.
        self._next: dict[bytes, ClientChannel] = {}
        self.on_sent: Callable[[], None] = lambda: None  # a paid request went out
        # Answers counted, in the order they came, that `catch_up` has still to record.
        self._counted: list[_Counted] = []
        # Answers counted and paid, by (channel, seq), whose receipts have not come.
        self._awaiting: dict[tuple[bytes, int], _Awaiting] = {}
        # And those whose receipts came, which `check` has still to check and keep.
        self._unchecked: list[_Unchecked] = []
        # Receipts that came before their answers were counted (the stream's reader got to
        # them before the call's task ran on), by (provider, channel, seq): (receipt, when).
        self._early: dict[tuple[str, bytes, int], tuple[mw.Receipt, float]] = {}
        # The seals of frames checked lately (`mw.Receipt.verify`): a frame's receipts are
        # judged a few at a time, and its seal is checked once (a check costs more than the
        # rest of a receipt's judging).
        self._seals: set[bytes] = set()
        # (Kept from before a restart: the one that expires first is used first.)
        for row in sorted(
            store.channels(role="client", state="open"), key=lambda row: row.expiry_ms
        ):
            self.adopt(row)

    def adopt(self, row: ChannelRow, terms: ChannelTerms | None = None) -> ClientChannel:
        """Use a channel (just opened, or kept from before a restart): at once if none is in
        use with its provider, else once that one cannot pay (`switch`)."""
        assert row.iou_key is not None
        key = SigningKey(Scheme.ED25519, row.iou_key)
        channel = ClientChannel(
            row, terms or row.terms(self.chain), key, row.charged_milli, row.seq
        )
        account = row.counterpart
        if account in self._open:
            self._next[account] = channel
        else:
            self._open[account] = channel
        return channel

    def channel(self, provider_account: bytes) -> ClientChannel | None:
        """The channel calls to the provider use."""
        return self._open.get(provider_account)

    def has_next(self, provider_account: bytes) -> bool:
        """A channel to the provider was opened ahead, and waits to take the calls."""
        return provider_account in self._next

    def use_of(self, channel_id: bytes) -> str:
        """What the channel is to our calls: "in use", "next" (opened ahead), or ""."""
        for use, channels in (("in use", self._open), ("next", self._next)):
            if any(channel.id == channel_id for channel in channels.values()):
                return use
        return ""

    def unsynced(self, provider_account: bytes) -> list[ClientChannel]:
        """The provider's channels, in use or opened ahead, kept from before a restart and
        not yet matched with the provider's counts (`resume`)."""
        both = (self._open.get(provider_account), self._next.get(provider_account))
        return [c for c in both if c is not None and not c.synced]

    def switch(self, provider_account: bytes) -> ClientChannel | None:
        """The channel in use cannot pay for the next call, or is about to expire: the one
        opened ahead takes the calls from now on (None: none was)."""
        fresh = self._next.pop(provider_account, None)
        if fresh is not None:
            self._open[provider_account] = fresh
        return fresh

    def resume(self, channel: ClientChannel, state: mw.ChannelState) -> None:
        """Take the provider's counts where ours are behind (after a restart, the answers
        of our last moments may not have been kept): its seq, and what it charged, which
        never exceeds the IOUs we signed."""
        self.catch_up()
        channel.seq = max(channel.seq, state.seq)
        channel.owed_milli = max(channel.owed_milli, state.charged_milli)
        channel.synced = True

    def ended(self, channel_id: bytes, state: str = "ending") -> None:
        """Use the channel no more (the provider refused it, or it is being closed); one
        opened ahead takes its calls."""
        for account, channel in list(self._next.items()):
            if channel.id == channel_id:
                del self._next[account]
        for account, channel in list(self._open.items()):
            if channel.id == channel_id and self.switch(account) is None:
                del self._open[account]
        self.store.set_state(channel_id, state)

    def reserve(
        self, channel: ClientChannel, provider: str, request: wire.Request, price: int
    ) -> PayTicket | None:
        """Reserve the call's largest cost; None if the channel cannot pay for it."""
        max_cost = mw.cost_milli(mw.max_tokens(request), price)
        if max_cost > channel.room_milli():
            return None
        channel.reserved_milli += max_cost
        return PayTicket(self, channel, provider, request, price, max_cost)

    def release(self, ticket: PayTicket) -> None:
        ticket.channel.reserved_milli -= ticket.max_cost_milli

    def count(self, ticket: PayTicket, result: wire.TextResult | wire.ArrayResult) -> int:
        """An answer's cost by our own count (what we pay, whatever the receipt will say). The
        rest, `catch_up` does: it is off the call's path."""
        tokens = sum(_our_counts(ticket.request, result))
        ours = mw.cost_milli(tokens, ticket.price)
        self._counted.append((ticket, result, tokens, ours))
        if self._early and (ticket.provider, ticket.channel.id, ticket.seq) in self._early:
            self.catch_up()  # (seldom: its receipt came first, and waits for it: `queued`)
        return ours

    @property
    def behind(self) -> bool:
        """Answers were counted that `catch_up` has not recorded yet."""
        return bool(self._counted)

    def catch_up(self) -> None:
        """Record the answers counted so far, in order: each one's reservation released, its
        cost owed, and the answer waiting for its receipt."""
        counted, self._counted = self._counted, []
        for ticket, result, tokens, ours in counted:
            channel = ticket.channel
            channel.reserved_milli -= ticket.max_cost_milli
            channel.owed_milli += ours
            entry = (ticket, result, tokens, ours, channel.owed_milli, time.monotonic())
            early = None
            if self._early:  # (seldom: a receipt came before its answer was counted)
                early = self._early.pop((ticket.provider, channel.id, ticket.seq), None)
            if early is not None:
                self._queue(entry, early[0])
            else:
                self._awaiting[(channel.id, ticket.seq)] = entry

    def receipts(self, provider: str, items: list[Any], seal: bytes) -> int:
        """A frame of receipts `provider` sent for its answers, under `seal`: queued for
        `check`, each with its answer (one whose answer is not counted yet waits for
        `count`, up to `RECEIPT_GIVE_UP_S`). Returns how many were queued; a frame with a
        malformed receipt, none (no receipt of it can be checked)."""
        try:
            receipts = mw.open_receipts(items, seal)
        except RemoteProtocolError as exc:
            log.warning("provider %s sent malformed receipts: %s", provider[-8:], exc)
            return 0
        self.catch_up()  # (their answers are counted, most likely)
        queued = 0
        for receipt in receipts:
            key = (receipt.channel_id, receipt.seq)
            entry = self._awaiting.get(key)
            if entry is None or entry[0].provider != provider:
                # Its answer is not counted yet, or never will be (its call gave up).
                self._early[(provider, *key)] = (receipt, time.monotonic())
                if len(self._early) > MAX_EARLY:
                    del self._early[next(iter(self._early))]
                continue
            del self._awaiting[key]
            self._queue(entry, receipt)
            queued += 1
        return queued

    def _queue(self, entry: _Awaiting, receipt: mw.Receipt) -> None:
        ticket, result, tokens, ours, owed, _ = entry
        if receipt.price_per_1k < ticket.price:  # a lower price than quoted: we pay it
            lower = mw.cost_milli(tokens, receipt.price_per_1k)
            ticket.channel.owed_milli -= ours - lower
            ours, owed = lower, owed - (ours - lower)
        self._unchecked.append((ticket, result, receipt, tokens, ours, owed))

    @property
    def queued(self) -> bool:
        """Receipts wait for `check`."""
        return bool(self._unchecked)

    def awaiting(self) -> int:
        """Answers whose receipts have not come; those waiting longer than
        `RECEIPT_GIVE_UP_S` are queued for `check` without one (kept disputed)."""
        self.catch_up()
        late = time.monotonic() - RECEIPT_GIVE_UP_S
        for early, (_, came) in list(self._early.items()):
            if came < late:
                del self._early[early]  # the answer to a call that gave up
        for key, entry in list(self._awaiting.items()):
            if entry[5] < late:
                # Kept as an answer without a receipt: paid by our count, marked disputed.
                del self._awaiting[key]
                ticket, result, tokens, ours, owed, _ = entry
                tokens_in, tokens_out = _our_counts(ticket.request, result)
                none = mw.Receipt(
                    key[0],
                    key[1],
                    ticket.request.expert,
                    b"",
                    b"",
                    tokens_in,
                    tokens_out,
                    ticket.price,
                    ours,
                    owed,
                )  # (no seal: `_dispute` tells it from one that came)
                self._queue(entry, none)
                provider = ticket.provider[-8:]
                log.warning("no receipt came from %s for the answer of IOU %d", provider, key[1])
        return len(self._awaiting)

    def check(self) -> list[Paid]:
        """Check the queued receipts and keep them: `keep(batch, judge(batch))` in one go."""
        batch = self.unchecked()
        return self.keep(batch, self.judge(batch))

    def unchecked(self) -> list[_Unchecked]:
        """The receipts queued since the last call, taken off the queue."""
        self.catch_up()
        batch, self._unchecked = self._unchecked, []
        return batch

    def judge(self, batch: list[_Unchecked]) -> list[tuple[str, bool]]:
        """Each receipt's (dispute or "", blame: see `Paid`): sealed by the provider's host
        key (each frame's seal checked once, whatever the slices it is judged in), the request
        and answer it names, the tokens. Reads nothing but the batch and the seals checked."""
        if len(self._seals) > MAX_SEALS:
            self._seals.clear()
        return [self._dispute(*item[:5], self._seals) for item in batch]

    def keep(
        self, batch: list[_Unchecked], judged: list[tuple[str, bool]], *, commit: bool = True
    ) -> list[Paid]:
        """Store the judged receipts (`commit`: false leaves them in the store's open batch,
        `MarketStore.commit`). A receipt that claims more than we counted, or is not the
        provider's, is kept marked disputed; we paid by our own count either way."""
        rows = [
            (ticket.provider, ticket.channel.terms.provider, receipt, owed, disputed)
            for (ticket, _, receipt, _, _, owed), (disputed, _) in zip(batch, judged, strict=True)
        ]
        if rows:
            self.store.record_many(rows, commit=commit)
        return [
            Paid(ours, receipt, disputed, ticket.provider, ticket.request.expert, blame)
            for (ticket, _, receipt, _, ours, _), (disputed, blame) in zip(
                batch, judged, strict=True
            )
        ]

    def _dispute(
        self,
        ticket: PayTicket,
        result: wire.TextResult | wire.ArrayResult,
        receipt: mw.Receipt,
        tokens: int,
        ours: int,
        checked: set[bytes],
    ) -> tuple[str, bool]:
        if receipt.seal is None:
            # (Not the provider's fault, as far as we know: receipts owed on a stream that
            # broke, even by our own doing, never come.)
            return f"no receipt came within {RECEIPT_GIVE_UP_S:.0f} s", False
        host_key = self._host_key_of(ticket.provider)
        if host_key is None:
            return "not checked: no host key is known for the provider", False
        try:
            receipt.verify(host_key, checked)
        except SwarmError as exc:
            return f"not the provider's receipt: {exc}", True
        if receipt.channel_id != ticket.channel.id or receipt.expert != ticket.request.expert:
            return "receipt for another channel or expert", True
        if receipt.request_hash != mw.request_digest(ticket.request):
            return "receipt names another request", True
        if receipt.output_hash != mw.output_digest(result):
            return "receipt names another answer", True
        if receipt.cost_milli > ours or receipt.tokens_in + receipt.tokens_out > tokens:
            claim = f"{receipt.cost_milli / 1000:.3f} credits"
            counts = f"{receipt.tokens_in}+{receipt.tokens_out} tokens"
            return f"receipt claims {claim} ({counts}), we count {ours / 1000:.3f}", True
        return "", False


def _our_counts(
    request: wire.Request, result: wire.TextResult | wire.ArrayResult
) -> tuple[int, int]:
    """(tokens in, tokens out) as the client counts them, the same way the provider must."""
    if isinstance(request, wire.TensorRequest):
        assert isinstance(result, wire.ArrayResult)
        return request.rows, result.rows
    assert isinstance(result, wire.TextResult)
    return count_tokens(request.prompt), count_tokens(result.text)


def new_channel_row(
    *,
    chain: bytes,
    provider_peer: str,
    terms: ChannelTerms,
    open_tx: bytes,
    key: SigningKey,
) -> ChannelRow:
    return ChannelRow(
        channel_id(chain, terms),
        "client",
        provider_peer,
        terms.provider,
        open_tx,
        terms.deposit,
        terms.expiry_ms,
        0,
        0,
        None,
        key.seed,
        "opening",
        None,
    )
