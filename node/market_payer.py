"""The client's side of the market service: the `Payer` of `protocols.inference`.

A call to a provider that charges gets a quote (kept while it holds), a channel (opened on the
DAG the first time, then registered with the provider; the next one is opened ahead once the
channel's room falls below `REFILL_AT` of its deposit, or would be used up within `AHEAD_S`
at the rate it is used, and takes the calls once the first cannot pay for one, so calls go on
without waiting for the DAG and no room is left behind), a reservation and an IOU; the
receipt of the answer is checked and kept, in slices (`node.slices`), by a task of its own.
The channels themselves (`Purse`) and their ends on the DAG (`node.market`'s keeper) are
kept elsewhere.

Every channel row is stored before the transaction that funds it is queued (the IOU key
first), so a kill -9 loses no deposit: the keeper finds the row after a restart and ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from dag.channels import ChannelTerms, open_payload
from dag.crypto import Scheme, SigningKey
from dag.errors import SwarmError
from dag.tx import Transaction
from node.config import MarketConfig
from node.market_client import ClientChannel, Paid, PayTicket, Purse, new_channel_row
from node.market_store import ChannelRow, MarketStore
from node.slices import Beat, in_slices
from protocols import infer_wire as wire
from protocols import market_peer
from protocols import market_wire as mw
from protocols.dag_service import DagService
from protocols.infer_client import CallFailed
from protocols.inference import OverPrice
from protocols.p2p import P2PService

log = logging.getLogger("swarm.market")
APPLY_TIMEOUT_S = 30.0  # a channel open not applied in this long is given up (for this call)
ASK_TIMEOUT_S = 10.0
CHECK_WINDOW_S = 0.05  # how long answered receipts gather before they are checked and kept
# The slices of a batch share one transaction (`MarketStore.commit`): one each cost more.
CHECK_SLICE = 2  # receipts checked and kept at a time (about 0.2 ms of the loop here)
QUOTE_SLACK_MS = 1_000  # ask again this long before a quote lapses
REFILL_AT = 0.2  # the next channel is opened once a channel's room is below this share,
AHEAD_S = 2.0  # or would last less than this at the rate it is used (see `_running_low`),
RATE_AFTER_S = 1.0  # a rate measured over this long at least
AHEAD_BACKOFF_S = 10.0  # after a failed opening ahead, the next try waits this long


class ChannelFailed(SwarmError):
    """A channel could not be opened or registered; the message says at which step."""


@dataclass(frozen=True, slots=True)
class _Quoted:
    quote: mw.Quote
    until_ms: int
    account: bytes | None  # the provider's, as its hello proved when the quote came


@dataclass
class _Opening:
    """A channel being opened, that calls wait for."""

    done: trio.Event = field(default_factory=trio.Event)
    channel: ClientChannel | None = None
    error: str = ""


def _running_low(channel: ClientChannel, now: int) -> bool:
    """Whether to open the next channel: the room left on `channel` is below `REFILL_AT` of
    its deposit, or would be used up within `AHEAD_S` at the rate it has been used since we
    first reserved on it (`ClientChannel.since`, set here), once that is `RATE_AFTER_S` ago.
    At 2,000 calls/s a fifth of a channel lasted 0.5 s, and opening the next took 0.8 s on a
    2-node mesh: 16 callers waited for it, 0.2 s each. (The next channel takes the calls once
    this one cannot pay for one, so opening it early leaves no room behind.)"""
    deposit, room = channel.terms.deposit * 1000, channel.room_milli()
    if room < deposit * REFILL_AT:
        return True
    if channel.since is None:
        channel.since = (now, deposit - room)
        return False
    then, used_then = channel.since
    elapsed = now - then
    used = deposit - room - used_then
    return elapsed >= RATE_AFTER_S * 1000 and room * elapsed < used * AHEAD_S * 1000


class Payer:
    """A node's paid calls as a client: `ready` or `prepare` a call's ticket, `paid` or
    `unpaid` once it is answered or failed, `receipts` as they come."""

    def __init__(
        self,
        *,
        config: MarketConfig,
        store: MarketStore,
        purse: Purse,
        dag: DagService,
        p2p: P2PService,
        account_of: Callable[[str], bytes | None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.purse = purse
        self.dag = dag
        self.p2p = p2p
        self._account_of = account_of
        self._wall = wall_clock
        self.chain = dag.engine.chain
        self._quotes: dict[str, _Quoted] = {}
        self._opening: dict[bytes, _Opening] = {}  # by provider account
        self._ahead_after: dict[bytes, int] = {}  # no opening ahead before (after a failure)
        self._unchecked = trio.Event()
        self._came = trio.Event()  # receipts came (for `check_receipts` with a wait)
        self._arrived: list[tuple[str, list[Any], bytes]] = []  # frames of receipts, not read
        self._checking = trio.Lock()  # one batch of receipts checked at a time, in order
        self._sent = purse.on_sent = Beat()  # a paid request of ours went out
        # Told of each wrong receipt (provider, the call's expert): routing ranks it down.
        self.on_dispute: Callable[[str, str], None] = lambda provider, expert: None
        self._nursery: trio.Nursery | None = None
        # A channel this near its expiry takes no more calls (twice the provider's margin).
        self._margin_ms = 2 * int(config.settle_margin_s * 1000)

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The checker, and the channels opened for calls, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._checker)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            # A clean stop keeps the receipts of the last answers (the checker's batch in
            # flight, if any, was kept before its task ended).
            self._match_arrived()
            self._report(self.purse.check())

    def sweep(self) -> None:
        """Queue for the checker the answers whose receipts never came (the keeper's)."""
        self.purse.awaiting()
        if self.purse.queued:
            self._unchecked.set()

    def quotes(self, now_ms: int) -> list[dict[str, Any]]:
        """The quotes we hold from providers."""
        return [
            {
                "provider": p,
                "paid": q.quote.paid,
                "prices": q.quote.prices,
                "ceiling": q.quote.ceiling,
                "valid_ms": max(0, q.until_ms - now_ms),
            }
            for p, q in self._quotes.items()
        ]

    def ready(
        self, provider: str, request: wire.Request, price: int, max_price: int | None = None
    ) -> PayTicket | None:
        """`prepare` at once, in its common case (no coroutine on the call's path): a ticket
        on the channel open with `provider` while its quote holds. None when `prepare` is to
        be awaited: a quote to ask, a channel to resync or open, or a provider that is free."""
        now = self._now_ms()
        known = self._quotes.get(provider)
        if known is None or known.until_ms <= now or not known.quote.paid:
            return None
        account = known.account
        if account is None:
            return None
        channel = self.purse.channel(account)
        if (
            channel is None
            or not channel.synced
            or now >= channel.terms.expiry_ms - self._margin_ms
        ):
            return None
        price = self._price(provider, known.quote, request, price, max_price)
        return self._reserve(channel, provider, account, request, price, now)

    async def prepare(
        self, provider: str, request: wire.Request, price: int, max_price: int | None = None
    ) -> PayTicket | None:
        ticket = self.ready(provider, request, price, max_price)
        if ticket is not None:
            return ticket
        now = self._now_ms()
        known = self._quotes.get(provider)
        if known is None or known.until_ms <= now:
            await self._quote_of(provider)
            known = self._quotes[provider]
        quote = known.quote
        if not quote.paid:
            return None
        price = self._price(provider, quote, request, price, max_price)
        account = known.account or self._account_of(provider)
        if account is None:
            raise ChannelFailed(f"no account is known for provider {provider[-8:]}")
        for kept in self.purse.unsynced(account):  # (kept from before a restart)
            await self._resync(provider, kept)
        channel = self.purse.channel(account)
        if channel is not None and now >= channel.terms.expiry_ms - self._margin_ms:
            channel = self.purse.switch(account)  # (the one opened ahead, if there is one)
        if channel is not None and now < channel.terms.expiry_ms - self._margin_ms:
            ticket = self._reserve(channel, provider, account, request, price, now)
            if ticket is not None:
                return ticket
        channel = await self._opened(provider, account, request, price)
        ticket = self.purse.reserve(channel, provider, request, price)
        if ticket is None:
            raise ChannelFailed("a new channel cannot pay for the call")
        return ticket

    @staticmethod
    def _price(
        provider: str, quote: mw.Quote, request: wire.Request, price: int, max_price: int | None
    ) -> int:
        """The call's price by the provider's quote; `OverPrice` above `max_price`."""
        price = quote.prices.get(request.expert, price)
        if max_price is not None and price > max_price:
            raise OverPrice(
                f"provider {provider[-8:]} asks {price} per 1,000 tokens, over {max_price}"
            )
        return price

    def _reserve(
        self,
        channel: ClientChannel,
        provider: str,
        account: bytes,
        request: wire.Request,
        price: int,
        now: int,
    ) -> PayTicket | None:
        """The call's reservation on `channel` (None if it cannot pay), or on the channel
        opened ahead once this one cannot pay; the next channel is opened ahead once the one
        in use is nearly used up."""
        ticket = self.purse.reserve(channel, provider, request, price)
        if ticket is None:
            fresh = self.purse.switch(account)
            if fresh is None or not fresh.synced:  # (`prepare` syncs one kept from before)
                return None
            channel = fresh
            ticket = self.purse.reserve(channel, provider, request, price)
        if ticket is not None and _running_low(channel, now):
            self._open_ahead(provider, account, request, price)
        return ticket

    def _open_ahead(self, provider: str, account: bytes, request: wire.Request, price: int) -> None:
        """The channel is nearly used up: open the next one now, so that no call waits for
        it (unless one is opening, or the last try failed a moment ago)."""
        if (
            account in self._opening
            or self.purse.has_next(account)
            or self._now_ms() < self._ahead_after.get(account, 0)
        ):
            return
        self._begin_opening(provider, account, request, price)

    async def _opened(
        self, provider: str, account: bytes, request: wire.Request, price: int
    ) -> ClientChannel:
        """A new channel to `provider`, opened by a task of ours: a caller that gives up
        (its deadline) leaves the opening to finish, and the next call uses the channel.
        Calls that need one while it opens wait for the same one."""
        opening = self._opening.get(account) or self._begin_opening(
            provider, account, request, price
        )
        await opening.done.wait()
        if opening.channel is None:
            raise ChannelFailed(opening.error)
        return opening.channel

    def _begin_opening(
        self, provider: str, account: bytes, request: wire.Request, price: int
    ) -> _Opening:
        """Open a channel to `provider` in a task of ours (`_open_task`)."""
        assert self._nursery is not None
        opening = self._opening[account] = _Opening()
        self._nursery.start_soon(self._open_task, opening, provider, account, request, price)
        return opening

    async def _open_task(
        self,
        opening: _Opening,
        provider: str,
        account: bytes,
        request: wire.Request,
        price: int,
    ) -> None:
        try:
            opening.channel = await self._open_channel(provider, account, request, price)
        except SwarmError as exc:
            log.warning("cannot open a channel to %s: %s", provider[-8:], exc)
            opening.error = str(exc)
            self._ahead_after[account] = self._now_ms() + int(AHEAD_BACKOFF_S * 1000)
        finally:
            del self._opening[account]
            opening.done.set()

    def paid(self, ticket: object, result: wire.TextResult | wire.ArrayResult) -> int:
        assert isinstance(ticket, PayTicket)
        # What the answer changes in the purse is recorded off the call's path (the next
        # call's `sent`, or the checker); its receipt comes after it (`receipts`).
        cost = self.purse.count(ticket, result)
        if self.purse.queued:  # (its receipt came before the answer was counted)
            self._unchecked.set()
        return cost

    def receipts(self, provider: str, items: list[Any], seal: bytes) -> None:
        """A frame of receipts that came on a stream from `provider`: read, checked and kept
        off the calls' path, in batches (`_checker`)."""
        self._arrived.append((provider, items, seal))
        self._unchecked.set()
        self._came.set()  # (wakes who waits on this one; later waits take the next)
        self._came = trio.Event()

    def _match_arrived(self) -> None:
        arrived, self._arrived = self._arrived, []
        for provider, items, seal in arrived:
            self.purse.receipts(provider, items, seal)

    async def _checker(self) -> None:
        """Check and keep receipts in batches, after the answers have gone to the callers."""
        while True:
            await self._unchecked.wait()
            # A deliberate delay: the receipts of many answers are checked and kept together,
            # in slices that run while calls wait on the network, not while they are handled.
            await trio.sleep(CHECK_WINDOW_S)
            self._unchecked = trio.Event()
            await self.check_receipts(beat=True)

    async def check_receipts(self, wait_s: float = 0.0, *, beat: bool = False) -> None:
        """Check and keep every receipt queued so far (what `_checker` does each window);
        with `wait_s`, first wait up to that long for the receipts of every answer; with
        `beat`, each slice as a paid request of ours goes out."""
        with trio.move_on_after(wait_s):
            self._match_arrived()
            while self.purse.awaiting():
                await self._came.wait()
                self._match_arrived()
        self._match_arrived()
        async with self._checking:
            batch = self.purse.unchecked()
            if not batch:
                return
            try:
                # (Each slice as a request of ours goes out: its answer is a while away.)
                await in_slices(batch, CHECK_SLICE, self._sent if beat else None, self._check)
            finally:
                self.store.commit()  # (the slices' rows, in one transaction)

    def _check(self, receipts: list[Any]) -> None:
        self._report(self.purse.keep(receipts, self.purse.judge(receipts), commit=False))

    def _report(self, done: list[Paid]) -> None:
        for paid in done:
            if paid.disputed:
                log.warning("receipt %s disputed: %s", paid.receipt.seq, paid.disputed)
            if paid.blame:
                self.on_dispute(paid.provider, paid.expert)

    def unpaid(self, ticket: object, error: BaseException) -> None:
        assert isinstance(ticket, PayTicket)
        self.purse.release(ticket)
        if isinstance(error, CallFailed) and error.code == "channel":
            # The provider will not take this channel's IOUs any more (it settled it, or
            # lost or refused it): the next call opens another; the keeper ends this one.
            log.info("provider %s refused channel: %s", ticket.provider[-8:], error)
            self.purse.ended(ticket.channel.id)

    async def _resync(self, provider: str, channel: ClientChannel) -> None:
        """A channel kept from before a restart: take the provider's counts before using it
        (or set it aside if the provider no longer serves it)."""
        try:
            with trio.fail_after(ASK_TIMEOUT_S):
                state = await market_peer.ask(
                    self.p2p.open_stream, provider, mw.channel_request(channel.row.open_tx)
                )
        except SwarmError as exc:
            log.info("channel %s set aside: %s", channel.id.hex()[:12], exc)
            self.purse.ended(channel.id)
            return
        if isinstance(state, mw.ChannelState):
            self.purse.resume(channel, state)

    async def _quote_of(self, provider: str) -> mw.Quote:
        with trio.fail_after(ASK_TIMEOUT_S):
            reply = await market_peer.ask(self.p2p.open_stream, provider, mw.quote_request())
        if not isinstance(reply, mw.Quote):
            raise ChannelFailed(f"provider {provider[-8:]} answered a quote with a channel")
        self._remember(provider, reply)
        return reply

    def _remember(self, provider: str, quote: mw.Quote) -> None:
        until = self._now_ms() + quote.valid_ms - QUOTE_SLACK_MS
        self._quotes[provider] = _Quoted(quote, until, self._account_of(provider))

    async def _open_channel(
        self, provider: str, account: bytes, request: wire.Request, price: int
    ) -> ClientChannel:
        """Lock a deposit for `provider` on the DAG, wait until it applies, register it."""
        need = mw.credits_for(mw.cost_milli(mw.max_tokens(request), price))
        deposit = max(self.config.deposit, 2 * need)
        expiry = self._now_ms() + int(self.config.channel_lifetime_s * 1000)
        key = SigningKey.generate(Scheme.ED25519)
        payload = open_payload(account, deposit, expiry, key.public_key)
        rows: list[ChannelRow] = []

        def keep(tx: Transaction) -> None:
            terms = ChannelTerms.of_open(tx)
            row = new_channel_row(
                chain=self.chain,
                provider_peer=provider,
                terms=terms,
                open_tx=tx.to_bytes(),
                key=key,
            )
            self.store.put_channel(row)  # the IOU key is on disk before the deposit can lock
            rows.append(row)

        tx = await self.dag.send("channel_open", payload, keep=keep)
        row = rows[0]
        outcome = await self.dag.wait_decided(tx.id, APPLY_TIMEOUT_S)
        if outcome == "unknown":  # decided before we began to wait: the store knows
            outcome = await self.dag.tx_status(tx.id)
        if outcome != "applied":
            # Still pending: the keeper ends the row once it applies and expires.
            raise ChannelFailed(f"the channel open is {outcome}, not applied")
        try:
            with trio.fail_after(ASK_TIMEOUT_S):
                state = await market_peer.ask(
                    self.p2p.open_stream, provider, mw.channel_request(row.open_tx)
                )
        except SwarmError as exc:
            self.store.set_state(row.id, "unregistered")
            raise ChannelFailed(
                f"provider {provider[-8:]} did not take the channel: {exc}"
            ) from None
        if not isinstance(state, mw.ChannelState):
            self.store.set_state(row.id, "unregistered")
            raise ChannelFailed(f"provider {provider[-8:]} answered a channel with a quote")
        self._remember(provider, state.quote)
        row = replace(row, state="open")
        self.store.set_state(row.id, "open")
        channel = self.purse.adopt(row)
        self.purse.resume(channel, state)
        log.info(
            "opened channel %s to %s: %d credits until %d",
            row.id.hex()[:12],
            provider[-8:],
            deposit,
            expiry,
        )
        return channel
