"""The local side of the DAG: our wallet, the mempool, and the builder that batches it.

Transactions come in from our own account (`transfer`) or signed by clients (`submit`,
`submit_many`); they wait in the mempool for a short window so that several share one
vertex, and the builder signs that vertex and hands it to the network side (`announce`).
Every engine call goes through the `call` the DAG service gives us (its lock, its thread).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from dag.crypto import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, SigningKey
from dag.engine import Engine, TxAccepted, TxApplied, TxRejected
from dag.errors import ReplayedNonce, SwarmError
from dag.kinds import transfer_payload
from dag.tx import ConflictKey, Transaction
from dag.vertex import Vertex
from protocols.metrics import Latencies

log = logging.getLogger("swarm.dag")
T = TypeVar("T")


class Call(Protocol):
    """Runs one engine call under the DAG service's lock (`DagService._call`)."""

    def __call__(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


MAX_BATCH = 256
# A vertex travels as one message (a gossipsub RPC is at most 1 MiB in py-libp2p, a push
# frame 8 MiB), so a vertex stays well under that.
MAX_BATCH_BYTES = 256 * 1024
TX_OVERHEAD_BYTES = 160


class InsufficientCredits(SwarmError):
    """Our wallet refuses a transfer its spendable balance does not cover."""


@dataclass(frozen=True, slots=True)
class BatchSettings:
    batch_window_s: float = 0.05  # how long a transaction waits for others to share a vertex
    empty_vertex_interval_s: float = 0.1  # the fastest rate of vertices with no transactions
    # Our vertices still undecided before the next one waits for a decision (unless the
    # engine needs a vertex for votes to flow): under load, vertices grow instead of
    # multiplying, and every node's cost per vertex is shared by more transactions.
    max_undecided: int = 4


@dataclass
class _TxWait:
    """A submitted transaction: stored once its vertex is; decided later."""

    stored: trio.Event = field(default_factory=trio.Event)
    decided: trio.Event = field(default_factory=trio.Event)
    outcome: str = "pending"
    submitted: float = 0.0


class Wallet:
    """Mempool, transaction waits and the vertex builder of one node."""

    def __init__(
        self,
        *,
        engine: Engine,
        key: SigningKey,
        call: Call,
        announce: Callable[[Vertex], Awaitable[None]],
        settings: BatchSettings,
        wall_clock: Callable[[], float],
    ) -> None:
        self.engine = engine
        self.key = key
        self._call = call
        self._announce = announce
        self.settings = settings
        self._wall = wall_clock
        self._kick = trio.Event()
        self._mempool: list[Transaction] = []
        self._queued: set[ConflictKey] = set()  # every conflict key of what the mempool holds
        self._waits: dict[bytes, _TxWait] = {}
        self._next_nonce: int | None = None
        self._last_empty = -1e9
        self._gathering_since = 0.0  # when the oldest transaction in the mempool came
        self.tx_latency = Latencies()
        self.txs_accepted = 0

    def __len__(self) -> int:
        """Transactions waiting in the mempool."""
        return len(self._mempool)

    def kick(self) -> None:
        """Wake the builder: the engine may want a vertex (see `Engine.needs_vertex`)."""
        self._kick.set()

    # -- transactions in ------------------------------------------------------------------

    async def transfer(self, to: bytes, amount: int) -> bytes:
        """Sign a transfer from our account and submit it; returns once it is stored."""
        tx = await self.send("transfer", transfer_payload(to, amount))
        return tx.id

    async def send(
        self,
        kind: str,
        payload: tuple[Any, ...],
        *,
        keep: Callable[[Transaction], None] | None = None,
    ) -> Transaction:
        """Sign a transaction of any registered kind from our account and submit it; returns
        once it is stored. `keep` sees the signed transaction before it is queued (a channel
        open keeps its IOU key first, so nothing it funds is ever lost)."""

        def make() -> Transaction:
            account = self.key.account_id
            if self._next_nonce is None:
                self._next_nonce = self.engine.next_free_nonce(account)
            tx = Transaction.create(
                self.key,
                chain=self.engine.chain,
                nonce=self._next_nonce,
                kind=kind,
                payload=payload,
                registry=self.engine.registry,
            )
            self.engine.check_transaction(tx, int(self._wall() * 1000))
            if self.engine.spendable(account, [*self._mempool, tx]) < 0:
                available = self.engine.spendable(account, self._mempool)
                raise InsufficientCredits(
                    f"a {kind} needs more than the {available} credits spendable "
                    f"(balance less transactions still pending)"
                )
            self._next_nonce += 1
            return tx

        tx = await self._call(make)
        if keep is not None:
            keep(tx)
        await self._queue(tx).stored.wait()
        return tx

    async def submit(self, tx: Transaction) -> bytes:
        """Submit a transaction someone else signed; returns once it is stored."""
        await self._call(self.engine.check_transaction, tx)
        await self._queue(tx).stored.wait()
        return tx.id

    async def submit_many(self, txs: list[Transaction]) -> list[str]:
        """Submit signed transactions; one status each (`stored`, or why it was refused).
        Returns once every accepted one is stored."""
        verdicts = [
            "stored" if problem is None else f"refused: {problem}"
            for problem in await self._call(self._recheck, txs)
        ]
        waits = []
        for i, (tx, verdict) in enumerate(zip(txs, verdicts, strict=True)):
            if verdict == "stored":
                try:
                    waits.append(self._queue(tx))
                except SwarmError as exc:
                    verdicts[i] = f"refused: {exc}"
        for wait in waits:
            await wait.stored.wait()
        return verdicts

    def _queue(self, tx: Transaction) -> _TxWait:
        """Put `tx` in the mempool once; a second transaction for its (account, nonce) while
        the first waits there is refused, since one vertex may not hold both."""
        wait = self._waits.get(tx.id)
        if wait is not None:
            return wait  # the same transaction again: wait with the first submitter
        keys = self.engine.registry.conflict_keys(tx)
        if not self._queued.isdisjoint(keys):
            raise ReplayedNonce(
                f"a transaction in the conflict set of this one (nonce {tx.nonce} of its "
                "account, or the same channel's end) is already queued here"
            )
        wait = self._waits[tx.id] = _TxWait(submitted=trio.current_time())
        self._queued.update(keys)
        self._append(tx)
        self._kick.set()
        return wait

    async def wait_decided(self, tx_id: bytes, timeout_s: float) -> str:
        """`accepted`, `applied`, `failed: ...`, `rejected`, or `pending` after `timeout_s`."""
        wait = self._waits.get(tx_id)
        if wait is None:
            return "unknown"
        with trio.move_on_after(timeout_s):
            await wait.decided.wait()
        return wait.outcome

    # -- building vertices ----------------------------------------------------------------

    async def run_builder(self) -> None:
        settings = self.settings
        while True:
            await self._kick.wait()
            self._kick = trio.Event()
            if self._mempool:
                # A deliberate delay: let a batch gather, from its first transaction on.
                await trio.sleep_until(self._gathering_since + settings.batch_window_s)
                while self._mempool:
                    if not await self._call(self._may_build):
                        break  # until a decision kicks us
                    await self._build(self._take_batch())
            elif await self._call(self.engine.needs_vertex):
                # Votes only reach a vertex through its descendants; issue an empty one, at a
                # bounded rate, when nothing else would.
                await trio.sleep_until(self._last_empty + settings.empty_vertex_interval_s)
                self._last_empty = trio.current_time()
                await self._build([])

    def _may_build(self) -> bool:
        """Room for another vertex of ours; else the mempool waits for the next decision
        (`kick`), which is also when the engine may ask for a vertex regardless."""
        undecided = self.engine.undecided_by(self.key.account_id)
        return undecided < self.settings.max_undecided or self.engine.needs_vertex()

    def _take_batch(self) -> list[Transaction]:
        """The oldest queued transactions that fit one vertex and one message."""
        size = 0
        for count, tx in enumerate(self._mempool[:MAX_BATCH]):
            size += PUBLIC_KEY_BYTES[tx.public_key.scheme] + SIGNATURE_BYTES[tx.public_key.scheme]
            size += TX_OVERHEAD_BYTES
            if size > MAX_BATCH_BYTES and count > 0:
                break
        else:
            count = min(len(self._mempool), MAX_BATCH)
        batch, self._mempool = self._mempool[:count], self._mempool[count:]
        return batch

    async def _build(self, batch: list[Transaction]) -> None:
        for tx in batch:
            self._queued.difference_update(self.engine.registry.conflict_keys(tx))
        try:
            vertex = await self._call(
                self.engine.build_vertex, self.key, batch, int(self._wall() * 1000)
            )
        except SwarmError as exc:
            # Something in the batch went stale while it queued (its nonce got decided by a
            # vertex from elsewhere): fail just those transactions, queue the rest again.
            log.warning("could not build a vertex: %s", exc)
            verdicts = await self._call(self._recheck, batch)
            for tx, problem in zip(batch, verdicts, strict=True):
                if problem is None:
                    self._queue_again(tx)
                elif (wait := self._waits.pop(tx.id, None)) is not None:
                    wait.outcome = f"failed: {problem}"
                    wait.stored.set()
                    wait.decided.set()
                    if tx.account == self.key.account_id:
                        self._next_nonce = None  # recount: our dropped tx must leave no gap
            return
        for tx in batch:
            if (wait := self._waits.get(tx.id)) is not None:
                wait.stored.set()
        await self._announce(vertex)

    def _recheck(self, batch: list[Transaction]) -> list[str | None]:
        """Why each transaction would be refused now (its signature, its nonce), or None."""
        problems: list[str | None] = []
        for tx in batch:
            try:
                self.engine.check_transaction(tx)
                problems.append(None)
            except SwarmError as exc:
                problems.append(str(exc))
        return problems

    def _queue_again(self, tx: Transaction) -> None:
        self._queued.update(self.engine.registry.conflict_keys(tx))
        self._append(tx)
        self._kick.set()

    def _append(self, tx: Transaction) -> None:
        if not self._mempool:
            self._gathering_since = trio.current_time()
        self._mempool.append(tx)

    # -- decisions ------------------------------------------------------------------------

    def on_tx_event(self, event: TxAccepted | TxApplied | TxRejected, now: float) -> None:
        """Wake whoever waits on the transaction of `event`."""
        if isinstance(event, TxAccepted):
            self.txs_accepted += 1
        wait = self._waits.get(event.tx_id)
        if wait is None:
            return
        if isinstance(event, TxAccepted):
            wait.outcome = "applied" if event.applied else "accepted"
            self.tx_latency.add(now, now - wait.submitted)
        elif isinstance(event, TxApplied):
            wait.outcome = "applied" if event.ok else f"failed: {event.reason}"
        else:
            wait.outcome = "rejected"
        wait.decided.set()
        if wait.outcome != "accepted":  # "accepted" may still turn into applied or failed
            self._waits.pop(event.tx_id, None)
