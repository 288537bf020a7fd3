"""The market service: paid calls on both sides, and the channels' life on the DAG.

As a provider it answers `/swarm/market/1.0.0` (quotes; registration of a channel the DAG
has applied for us: its deposit must sit in the channel's lock on our own ledger), hands its
`Till` to the expert host as the call path's payment gate, writes the answers the till
journaled into the database in slices (`node.slices`), and settles each channel with the
newest IOU: before the channel's expiry, after it sat idle (when configured), or on request.

As a client it runs its `Payer` (`node.market_payer`); its keeper takes the deposit of each
of our channels back with `channel_close` after the channel's expiry, unless the provider
settled first, and marks ended every channel whose lock is empty.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from dag.channels import ChannelTerms, Iou, channel_id, close_payload, settle_payload
from dag.errors import SwarmError
from dag.tx import Transaction
from node.config import MarketConfig
from node.market_payer import Payer
from node.market_provider import Till
from node.market_store import ChannelRow, MarketStore, MarketStoreError
from node.slices import Beat
from protocols import ids, market_peer
from protocols import market_wire as mw
from protocols.dag_service import DagService
from protocols.p2p import P2PService

log = logging.getLogger("swarm.market")
KEEP_EVERY_S = 1.0  # how often the keeper looks for channels to settle, close or mark ended
REGISTER_WAIT_S = 10.0  # how long a provider waits for its ledger to apply a channel's open
FLUSH_WINDOW_S = 0.05  # how long journaled answers gather before they are flushed
# The slices of a batch share one transaction (`MarketStore.commit`): one each cost more.
FLUSH_SLICE = 8  # journaled rows written at a time (about 0.15 ms)
FLUSH_RETRY_S = 1.0  # a flush of served rows that failed (a full disk) is tried again after
_LOST = ("failed", "rejected")  # a channel end that did not happen: try again


class MarketRefused(SwarmError):
    """A market request we will not serve (the reason goes back to the peer)."""


class Market:
    """One node's market: a `Desk` for `/swarm/market/1.0.0`, its `Payer`, and the keeper of
    the channels' ends."""

    def __init__(
        self,
        *,
        config: MarketConfig,
        store: MarketStore,
        till: Till,
        payer: Payer,
        dag: DagService,
        p2p: P2PService,
        hosted: Callable[[], list[str]],
        account_of: Callable[[str], bytes | None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.store = store
        self.till = till
        self.payer = payer
        self.dag = dag
        self.p2p = p2p
        self._hosted = hosted
        self._account_of = account_of
        self._wall = wall_clock
        self.chain = dag.engine.chain
        self.account = dag.key.account_id
        self._answered = till.on_answered = Beat()  # an answer of ours for pay went out

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.p2p.set_handler(ids.MARKET, partial(market_peer.serve, desk=self))
        async with trio.open_nursery() as nursery:
            await nursery.start(self.payer.run)
            nursery.start_soon(self._keeper)
            nursery.start_soon(self._flusher)
            task_status.started(self)
            await trio.sleep_forever()

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

    async def _flusher(self) -> None:
        """Move the provider's journaled answers into the database in batches."""
        while True:
            served = trio.Event()
            self.store.on_served = served.set
            await served.wait()
            await trio.sleep(FLUSH_WINDOW_S)  # deliberate: one transaction for many answers
            more = True
            while more:
                await self._answered.next()  # (the next call on its stream is a while away)
                try:
                    more = self.store.flush(FLUSH_SLICE)  # (and rows journaled meanwhile)
                except MarketStoreError as exc:
                    log.error("%s (the answers stay journaled; trying again)", exc)
                    await trio.sleep(FLUSH_RETRY_S)

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
        self.payer.sweep()
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
        self.payer.purse.ended(row.id)
        self.store.set_state(row.id, "ending", tx.id)
        log.info("closing channel %s: %d credits back", row.id.hex()[:12], row.deposit)

    def _ended(self, row: ChannelRow) -> None:
        if row.role == "client":
            self.payer.purse.ended(row.id, "ended")
        self.store.set_state(row.id, "ended")

    # -- views ----------------------------------------------------------------------------

    def prices(self) -> dict[str, Any]:
        """Our prices now (as a provider), and the quotes we hold from providers."""
        ours = self.till.quote(self._hosted(), None)
        return {
            "serve_paid": self.config.serve_paid,
            "ours": ours.prices,
            "ceiling": self.config.price_ceiling,
            "quotes": self.payer.quotes(self._now_ms()),
        }
