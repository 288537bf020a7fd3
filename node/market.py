"""The market service: paid calls on both sides, and the channels' life on the DAG.

As a provider it answers `/swarm/market/1.0.0` (quotes; registration of a channel the DAG
has applied for us: its deposit must sit in the channel's lock on our own ledger), hands its
`Till` to the expert host as the call path's payment gate, and settles each channel with the
newest IOU: before the channel's expiry, after it sat idle (when configured), or on request.

As a client it is the `Payer` of `protocols.inference`: a call to a provider that charges
gets a quote (kept while it holds), a channel (opened on the DAG the first time, then
registered with the provider; the next one is opened ahead once the channel's room falls
below `REFILL_AT` of its deposit, or would be used up within `AHEAD_S` at the rate it is
used, and takes the calls once the first cannot pay for one, so calls go on without waiting
for the DAG and no room is left behind), a reservation and an IOU; the receipt
of the answer is checked and kept. After a channel's expiry, the client takes the deposit
back with `channel_close` unless the provider settled first.

Every channel row is stored before the transaction that funds it is queued (the IOU key
first), so a kill -9 loses no deposit: the keeper finds the row after a restart and ends it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import trio

from dag.channels import ChannelTerms, Iou, channel_id, close_payload, open_payload, settle_payload
from dag.crypto import Scheme, SigningKey
from dag.errors import SwarmError
from dag.tx import Transaction
from node.config import MarketConfig
from node.market_client import ClientChannel, Paid, PayTicket, Purse, new_channel_row
from node.market_provider import Till
from node.market_store import ChannelRow, MarketStore, MarketStoreError
from protocols import ids, market_peer
from protocols import infer_wire as wire
from protocols import market_wire as mw
from protocols.dag_service import DagService
from protocols.infer_client import CallFailed
from protocols.inference import OverPrice
from protocols.p2p import P2PService

log = logging.getLogger("swarm.market")
KEEP_EVERY_S = 1.0  # how often the keeper looks for channels to settle, close or mark ended
APPLY_TIMEOUT_S = 30.0  # a channel open not applied in this long is given up (for this call)
REGISTER_WAIT_S = 10.0  # how long a provider waits for its ledger to apply a channel's open
ASK_TIMEOUT_S = 10.0
CHECK_WINDOW_S = 0.05  # how long answered receipts gather before they are checked and kept
# The batches of receipts checked and kept (a client's) and of journaled rows flushed (a
# provider's) go in slices, each run as a call of ours goes out (`_Beat`: a client's request,
# a provider's answer), when the other side has the most to do before it needs us. In one go,
# a batch held the loop for 1.5 ms, and a call or an answer that came meanwhile waited. The
# slices of a batch share one transaction (`MarketStore.commit`): one each cost more.
CHECK_SLICE = 2  # receipts checked and kept at a time (about 0.2 ms of the loop here)
FLUSH_SLICE = 8  # journaled rows written at a time (about 0.15 ms)
BEAT_WAIT_S = 0.02  # a slice waits this long at most for a call to go out
FLUSH_RETRY_S = 1.0  # a flush of served rows that failed (a full disk) is tried again after
QUOTE_SLACK_MS = 1_000  # ask again this long before a quote lapses
REFILL_AT = 0.2  # the next channel is opened once a channel's room is below this share,
AHEAD_S = 2.0  # or would last less than this at the rate it is used (see `_running_low`),
RATE_AFTER_S = 1.0  # a rate measured over this long at least
AHEAD_BACKOFF_S = 10.0  # after a failed opening ahead, the next try waits this long
_LOST = ("failed", "rejected")  # a channel end that did not happen: try again


class MarketRefused(SwarmError):
    """A market request we will not serve (the reason goes back to the peer)."""


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


class _Beat:
    """A moment that recurs: called as it comes; `next` waits for the next one (at most
    `BEAT_WAIT_S`, so that the work waiting on it is done when none comes). One waiter."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def __call__(self) -> None:
        self._event.set()

    async def next(self) -> None:
        self._event = event = trio.Event()
        with trio.move_on_after(BEAT_WAIT_S):
            await event.wait()


async def in_slices(
    items: list[Any], size: int, beat: _Beat | None, work: Callable[[list[Any]], None]
) -> None:
    """`work` on `items` in slices of `size`, each after the next `beat` (if any). Cancelled
    part-way, it does the rest at once: items taken off a queue are not dropped."""
    for at in range(0, len(items), size):
        if beat is not None:
            try:
                await beat.next()
            except BaseException:  # (cancelled: a node that is stopping)
                work(items[at:])
                raise
        work(items[at : at + size])


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


class Market:
    """One node's market: a `Desk` for `/swarm/market/1.0.0` and a `Payer` for inference."""

    def __init__(
        self,
        *,
        config: MarketConfig,
        store: MarketStore,
        till: Till,
        purse: Purse,
        dag: DagService,
        p2p: P2PService,
        hosted: Callable[[], list[str]],
        account_of: Callable[[str], bytes | None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.till = till
        self.purse = purse
        self.dag = dag
        self.p2p = p2p
        self._hosted = hosted
        self._account_of = account_of
        self._wall = wall_clock
        self.chain = dag.engine.chain
        self.account = dag.key.account_id
        self._quotes: dict[str, _Quoted] = {}
        self._opening: dict[bytes, _Opening] = {}  # by provider account
        self._ahead_after: dict[bytes, int] = {}  # no opening ahead before (after a failure)
        self._unchecked = trio.Event()
        self._came = trio.Event()  # receipts came (for `check_receipts` with a wait)
        self._arrived: list[tuple[str, list[Any], bytes]] = []  # frames of receipts, not read
        self._checking = trio.Lock()  # one batch of receipts checked at a time, in order
        self._sent = purse.on_sent = _Beat()  # a paid request of ours went out
        self._answered = till.on_answered = _Beat()  # an answer of ours for pay went out
        # Told of each wrong receipt (provider, the call's expert): routing ranks it down.
        self.on_dispute: Callable[[str, str], None] = lambda provider, expert: None
        self._nursery: trio.Nursery | None = None
        # A channel this near its expiry takes no more calls (twice the provider's margin).
        self._margin_ms = 2 * int(config.settle_margin_s * 1000)

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.p2p.set_handler(ids.MARKET, partial(market_peer.serve, desk=self))
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keeper)
                nursery.start_soon(self._checker)
                nursery.start_soon(self._flusher)
                task_status.started(self)
                await trio.sleep_forever()
        finally:
            # A clean stop keeps the receipts of the last answers (the checker's batch in
            # flight, if any, was kept before its task ended).
            self._match_arrived()
            self._report(self.purse.check())

    # -- provider: the desk ---------------------------------------------------------------

    def quote(self, peer: str) -> mw.Quote:
        return self.till.quote(self._hosted(), self._account_of(peer))

    async def channel(self, peer: str, open_tx: bytes) -> mw.ChannelState:
        """Serve a channel a client opened for us, once our own ledger holds its deposit."""
        if not self.config.serve_paid:
            raise MarketRefused("this node serves for free: no channel is needed")
        tx = Transaction.from_bytes(open_tx, self.dag.engine.registry, chain=self.chain)
        terms = ChannelTerms.of_open(tx)
        if terms.provider != self.account:
            raise MarketRefused("the channel pays another provider")
        if self._account_of(peer) != terms.client:
            raise MarketRefused("the channel belongs to another account")
        if self._now_ms() >= terms.expiry_ms - int(self.config.settle_margin_s * 1000):
            raise MarketRefused("the channel expires too soon to be served")
        cid = channel_id(self.chain, terms)
        served = self.till.state(cid)
        if served is None:
            with trio.move_on_after(REGISTER_WAIT_S):
                await self.dag.wait_for(lambda: self._funded(cid, terms.deposit))
            if await self.dag.locked(cid) != terms.deposit:
                raise MarketRefused("our ledger holds no deposit for this channel (yet)")
            row = ChannelRow(
                cid,
                "provider",
                peer,
                terms.client,
                open_tx,
                terms.deposit,
                terms.expiry_ms,
                0,
                0,
                None,
                None,
                "open",
                None,
            )
            served = self.till.register(peer, row, terms)
            log.info("serving channel %s of %s for pay", cid.hex()[:12], peer[-8:])
        stored = self.store.channel(cid)
        iou = stored.iou if stored is not None else None
        return mw.ChannelState(served.charged_milli, served.seq, iou, self.quote(peer))

    async def _funded(self, cid: bytes, deposit: int) -> bool:
        return await self.dag.locked(cid) == deposit

    async def settle(self, *, every: bool = True) -> list[dict[str, Any]]:
        """Settle channels now: every one with charges (`every`), or those due."""
        done = []
        for channel in self.till.to_settle(every=every):
            if self.till.take(channel.row.id) is None:
                continue  # another settle took it while we waited
            done.append(await self._settle(channel.row.id, channel.terms, channel.charged_milli))
        return done

    async def _settle(self, cid: bytes, terms: ChannelTerms, charged_milli: int) -> dict[str, Any]:
        row = self.store.channel(cid)
        assert row is not None and row.iou is not None  # charged: the IOU was stored first
        amount = mw.credits_for(charged_milli)
        payload = settle_payload(terms, Iou.from_bytes(row.iou), amount)
        try:
            tx = await self.dag.send("channel_settle", payload)
        except SwarmError as exc:
            # The client closed first (only possible after the expiry): nothing to claim.
            log.warning("cannot settle channel %s: %s", cid.hex()[:12], exc)
            self.store.set_state(cid, "ending")
            return {"channel": cid.hex(), "amount": 0, "error": str(exc)}
        self.store.set_state(cid, "ending", tx.id)
        log.info("settling channel %s for %d credits", cid.hex()[:12], amount)
        return {"channel": cid.hex(), "amount": amount, "tx": tx.id.hex()}

    # -- client: the payer ----------------------------------------------------------------

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
        assert self._nursery is not None
        opening = self._opening[account] = _Opening()
        self._nursery.start_soon(self._open_task, opening, provider, account, request, price)

    async def _opened(
        self, provider: str, account: bytes, request: wire.Request, price: int
    ) -> ClientChannel:
        """A new channel to `provider`, opened by a task of ours: a caller that gives up
        (its deadline) leaves the opening to finish, and the next call uses the channel.
        Calls that need one while it opens wait for the same one."""
        opening = self._opening.get(account)
        if opening is None:
            assert self._nursery is not None
            opening = self._opening[account] = _Opening()
            self._nursery.start_soon(self._open_task, opening, provider, account, request, price)
        await opening.done.wait()
        if opening.channel is None:
            raise ChannelFailed(opening.error)
        return opening.channel

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

    async def _flusher(self) -> None:
        """Move the provider's journaled answers into the database in batches."""
        while True:
            served = trio.Event()
            self.store.on_served = served.set
            await served.wait()
            await trio.sleep(CHECK_WINDOW_S)  # deliberate: one transaction for many answers
            more = True
            while more:
                await self._answered.next()  # (the next call on its stream is a while away)
                try:
                    more = self.store.flush(FLUSH_SLICE)  # (and rows journaled meanwhile)
                except MarketStoreError as exc:
                    log.error("%s (the answers stay journaled; trying again)", exc)
                    await trio.sleep(FLUSH_RETRY_S)

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

    # -- the keeper: channels' ends -------------------------------------------------------

    async def _keeper(self) -> None:
        while True:
            try:
                await self.keep()
                await trio.to_thread.run_sync(self.store.checkpoint)
            except SwarmError as exc:
                log.warning("market keeper: %s", exc)
            await trio.sleep(KEEP_EVERY_S)  # a periodic sweep, not a wait for an event

    async def keep(self) -> None:
        """One sweep: settle what is due, drop lapsed channels, close our expired ones, and
        mark ended every channel whose lock is empty; queue for the checker the answers
        whose receipts never came."""
        self.purse.awaiting()
        if self.purse.queued:
            self._unchecked.set()
        await self.settle(every=False)
        for channel in self.till.lapsed():
            self.till.take(channel.row.id)
            self.store.set_state(channel.row.id, "ending")
        now = self._now_ms()
        for row in self.store.channels(active=True):
            locked = await self.dag.locked(row.id)
            if row.role == "provider":
                if row.state == "ending" and locked == 0:
                    self._ended(row)
                continue
            expired = now >= row.expiry_ms
            if locked == 0:
                # Settled or closed; or, for a row still "opening" past its expiry, an open
                # that never applied.
                if row.state != "opening" or expired:
                    self._ended(row)
            elif locked == row.deposit and expired and await self._unended(row):
                await self._close(row)

    async def _unended(self, row: ChannelRow) -> bool:
        """No end of ours is under way: none was sent, or the one sent did not happen."""
        return row.end_tx is None or await self.dag.tx_status(row.end_tx) in _LOST

    async def _close(self, row: ChannelRow) -> None:
        terms = row.terms(self.chain)
        try:
            tx = await self.dag.send("channel_close", close_payload(terms))
        except SwarmError as exc:
            log.info("cannot close channel %s yet: %s", row.id.hex()[:12], exc)
            return
        self.purse.ended(row.id)
        self.store.set_state(row.id, "ending", tx.id)
        log.info("closing channel %s: %d credits back", row.id.hex()[:12], row.deposit)

    def _ended(self, row: ChannelRow) -> None:
        if row.role == "client":
            self.purse.ended(row.id, "ended")
        self.store.set_state(row.id, "ended")

    # -- views ----------------------------------------------------------------------------

    def prices(self) -> dict[str, Any]:
        """Our prices now (as a provider), and the quotes we hold from providers."""
        now = self._now_ms()
        ours = self.till.quote(self._hosted(), None)
        return {
            "serve_paid": self.config.serve_paid,
            "ours": ours.prices,
            "ceiling": self.config.price_ceiling,
            "quotes": [
                {
                    "provider": p,
                    "paid": q.quote.paid,
                    "prices": q.quote.prices,
                    "ceiling": q.quote.ceiling,
                    "valid_ms": max(0, q.until_ms - now),
                }
                for p, q in self._quotes.items()
            ],
        }
