"""The ledger: a deterministic state machine over accepted transactions only.

State: each account's balance (from the genesis), credits locked under keys, each account's
next nonce, and the accepted transactions that cannot apply yet.

Rule. An accepted transaction applies when (1) its nonce is its account's next nonce, and
(2) every move its kind plans leaves every bucket at zero or more. Until then it waits: a
transaction waiting for its turn is retried when the previous nonce is done, one waiting
for funds is retried when a bucket it was short of receives credits. When it applies the
moves happen all at once and the nonce advances. A kind may instead declare it failed
(`TxFailed`): no effect, the nonce advances. An accepted transfer is never failed for want of
funds; it waits. No balance ever goes below zero, and moves are zero-sum, so
sum(balances) + sum(locked) == genesis supply always (`check_conservation`).

Why every node ends with the same state. Honest nodes accept the same set of transactions,
but in different interleavings (two concurrent vertices may be accepted in either order).
Failing an overdraft would make the result depend on that order: if B has 0, "A pays B 10"
and "B pays C 10" both succeed in one order and the second fails in the other. Waiting does
not: applying a transaction only ever takes credits from its own sender, and to every other
account it only adds. So once a transaction can apply, applying any other transaction first
never stops it (the sender's own later nonces cannot run before it). That makes the rule
confluent: for a given accepted set, every order of arrival reaches the same fixed point,
the same applied set, the same balances and the same nonces. The state is a function of the
accepted set alone, whichever order it arrived in, which is what lets a node that syncs
late, or restarts, reach the balances of the others. The price: an accepted transfer whose
sender is short waits until credits arrive, and blocks that account's later nonces; so a
wallet should submit only what the current balance covers. A kind's `TxFailed` must keep
this property (see `dag.kinds`).

Replays. A conflict set (account, nonce) is decided here once a transaction for it has been
accepted (`is_decided`); the engine refuses any new vertex holding another one for it. So is a
kind's extra conflict set `(key, -1)` (see `dag.kinds`): the ledger keeps the claimed keys.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dag.errors import LocalProtocolError, SwarmError
from dag.genesis import Genesis
from dag.kinds import EXTRA_KEY_NONCE, Bucket, KindRegistry, TxFailed, balance_of
from dag.tx import ConflictKey, Transaction


class LedgerInvariantError(SwarmError):
    """The ledger broke conservation or went negative: a bug, never expected."""


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """A transaction's final effect: applied, or failed with `reason` (no effect)."""

    tx_id: bytes
    account: bytes
    nonce: int
    applied: bool
    reason: str = ""


@dataclass(slots=True)
class LedgerChanges:
    """What changed since the last `take_changes`, for the store to write."""

    amounts: dict[Bucket, int] = field(default_factory=dict)
    nonces: dict[bytes, int] = field(default_factory=dict)
    waiting_added: list[Transaction] = field(default_factory=list)
    waiting_removed: list[ConflictKey] = field(default_factory=list)
    claimed: list[bytes] = field(default_factory=list)


class Ledger:
    """Balances, locked credits and nonces over accepted transactions."""

    def __init__(self, genesis: Genesis, registry: KindRegistry) -> None:
        self._registry = registry
        self._supply = genesis.supply
        self._amounts: dict[Bucket, int] = {
            balance_of(a.account): a.balance for a in genesis.accounts if a.balance
        }
        self._nonces: dict[bytes, int] = {}
        self._waiting: dict[ConflictKey, Transaction] = {}
        self._blocked: defaultdict[Bucket, set[ConflictKey]] = defaultdict(set)
        self._claimed: set[bytes] = set()
        self._changes = LedgerChanges()

    @classmethod
    def restore(
        cls,
        genesis: Genesis,
        registry: KindRegistry,
        amounts: Mapping[Bucket, int],
        nonces: Mapping[bytes, int],
        waiting: Iterable[Transaction],
        claimed: Iterable[bytes] = (),
    ) -> Ledger:
        """Rebuild a ledger from the state a store kept (see `dag.store`): `amounts` holds
        every bucket that ever changed, over the genesis balances."""
        ledger = cls(genesis, registry)
        ledger._amounts.update(amounts)
        ledger._amounts = {b: a for b, a in ledger._amounts.items() if a}
        ledger._nonces = dict(nonces)
        ledger._claimed = set(claimed)
        for tx in waiting:
            ledger._waiting[tx.conflict_key] = tx
        ledger._run(list(ledger._waiting))  # re-registers what each waits for; applies nothing
        ledger._changes = LedgerChanges()
        ledger.check_conservation()
        return ledger

    # -- reading --------------------------------------------------------------------------

    def amount(self, bucket: Bucket) -> int:
        return self._amounts.get(bucket, 0)

    def balance(self, account: bytes) -> int:
        return self._amounts.get(balance_of(account), 0)

    def next_nonce(self, account: bytes) -> int:
        return self._nonces.get(account, 0)

    def is_decided(self, key: ConflictKey) -> bool:
        """True once a transaction for this (account, nonce), or for this extra conflict key
        (`(key, -1)`), has been accepted here."""
        account, nonce = key
        if nonce == EXTRA_KEY_NONCE:
            return account in self._claimed
        return nonce < self.next_nonce(account) or key in self._waiting

    def waiting(self) -> list[Transaction]:
        """Accepted transactions that have not applied yet (turn or funds)."""
        return list(self._waiting.values())

    @property
    def total_balances(self) -> int:
        return sum(a for b, a in self._amounts.items() if not b.locked)

    @property
    def total_locked(self) -> int:
        return sum(a for b, a in self._amounts.items() if b.locked)

    def check_conservation(self) -> None:
        """Raise `LedgerInvariantError` unless balances + locked == supply, none negative."""
        if any(a < 0 for a in self._amounts.values()):
            raise LedgerInvariantError("a bucket went below zero")
        total = self.total_balances + self.total_locked
        if total != self._supply:
            raise LedgerInvariantError(f"credits not conserved: {total} != supply {self._supply}")

    # -- writing --------------------------------------------------------------------------

    def accept(self, tx: Transaction) -> list[TxOutcome]:
        """Take in an accepted transaction; return every outcome it settled (its own, and
        those of waiting transactions it unblocked), in the order they happened."""
        keys = self._registry.conflict_keys(tx)
        if any(self.is_decided(k) for k in keys):
            raise LocalProtocolError(
                f"a conflict set of transaction {tx.id.hex()} is already decided"
            )
        extra = [k for k, _ in keys[1:]]
        self._claimed.update(extra)
        self._changes.claimed.extend(extra)
        key = tx.conflict_key
        self._waiting[key] = tx
        self._changes.waiting_added.append(tx)
        return self._run([key])

    def take_changes(self) -> LedgerChanges:
        changes, self._changes = self._changes, LedgerChanges()
        return changes

    def _run(self, keys: list[ConflictKey]) -> list[TxOutcome]:
        outcomes = []
        while keys:
            key = keys.pop()
            tx = self._waiting.get(key)
            if tx is None or tx.nonce != self.next_nonce(tx.account):
                continue
            try:
                deltas = self._plan(tx)
            except TxFailed as exc:
                outcomes.append(TxOutcome(tx.id, tx.account, tx.nonce, False, str(exc)))
            else:
                short = [b for b, d in deltas.items() if self.amount(b) + d < 0]
                if short:
                    for bucket in short:
                        self._blocked[bucket].add(key)
                    continue
                for bucket, delta in deltas.items():
                    self._set_amount(bucket, self.amount(bucket) + delta)
                    if delta > 0:
                        keys.extend(self._blocked.pop(bucket, ()))
                outcomes.append(TxOutcome(tx.id, tx.account, tx.nonce, True))
            del self._waiting[key]
            self._changes.waiting_removed.append(key)
            self._nonces[tx.account] = tx.nonce + 1
            self._changes.nonces[tx.account] = tx.nonce + 1
            keys.append((tx.account, tx.nonce + 1))
        return outcomes

    def _plan(self, tx: Transaction) -> dict[Bucket, int]:
        deltas: dict[Bucket, int] = defaultdict(int)
        for move in self._registry.get(tx.kind).plan(self, tx):
            if move.amount <= 0:
                raise TxFailed(f"kind {tx.kind!r} planned a move of {move.amount}")
            deltas[move.source] -= move.amount
            deltas[move.dest] += move.amount
        return {b: d for b, d in deltas.items() if d}

    def _set_amount(self, bucket: Bucket, amount: int) -> None:
        if amount:
            self._amounts[bucket] = amount
        else:
            self._amounts.pop(bucket, None)
        self._changes.amounts[bucket] = amount
