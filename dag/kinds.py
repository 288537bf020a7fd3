"""Transaction kinds: a registry of named validators and ledger effects.

Voting never looks inside a transaction: it only needs the conflict set (account, nonce). A
kind therefore plugs in with two functions and no change anywhere else:

- `parse(payload, sender)`: the stateless check, run when a transaction is decoded. It checks
  types and bounds and returns the payload as a canonical tuple, or raises
  `InvalidTransaction`. A transaction that fails it never enters the DAG.
- `plan(view, tx)`: the effect, run by the ledger when the transaction is the account's next
  one. It reads the state through `view` and returns a list of `Move`s. The ledger applies
  them all or none; a move that would overdraw its source makes the transaction wait
  (see `dag.ledger`). `plan` may raise `TxFailed` only for a reason that no concurrent
  transaction can change (it must depend on `tx` alone or on state that only ever grows),
  because that is what keeps the ledger the same on every node.

Moves are zero-sum between buckets (an account's balance, or credits locked under a key), so
no kind can create or destroy credits: conservation holds by construction.

Two optional hooks, for kinds whose transactions come from more than one account yet must not
both take effect (a payment channel's settle by the provider and close by the client):

- `extra_conflict_keys(tx)`: byte strings that name further conflict sets. Voting puts the
  transaction into the set `(key, -1)` of each one beside (account, nonce), so at most one
  transaction per key is ever accepted, and the engine refuses any new one once it is decided.
- `not_before_ms(tx)`: the earliest timestamp of a vertex that may carry the transaction.

The registry answers both for any kind (`conflict_keys`, `not_before_ms`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from dag.codec import as_array, as_bytes, as_int
from dag.crypto import ACCOUNT_ID_BYTES
from dag.errors import InvalidTransaction, SwarmError
from dag.genesis import MAX_CREDITS

if TYPE_CHECKING:
    from dag.tx import ConflictKey, Transaction

# The nonce of an extra conflict set (see the module doc): no real nonce is negative.
EXTRA_KEY_NONCE = -1


class Bucket(NamedTuple):
    """Where credits sit: an account's spendable balance, or an amount locked under a key."""

    locked: bool
    key: bytes


def balance_of(account: bytes) -> Bucket:
    return Bucket(False, account)


def locked_under(key: bytes) -> Bucket:
    return Bucket(True, key)


@dataclass(frozen=True, slots=True)
class Move:
    """Move `amount` credits from `source` to `dest`; the ledger refuses to overdraw."""

    source: Bucket
    dest: Bucket
    amount: int


class LedgerView(Protocol):
    """What a kind may read while planning."""

    def amount(self, bucket: Bucket) -> int: ...


class TxFailed(SwarmError):
    """Raised by `plan`: the transaction is final with no effect (its nonce is used)."""


class TxKind(Protocol):
    """A transaction kind (see the module doc)."""

    @property
    def name(self) -> str: ...

    def parse(self, payload: object, sender: bytes) -> tuple[Any, ...]: ...

    def plan(self, view: LedgerView, tx: Transaction) -> Sequence[Move]: ...


class KindRegistry:
    """The kinds a node accepts, by name. Build one per node; there is no global registry."""

    __slots__ = ("_kinds",)

    def __init__(self, kinds: Sequence[TxKind] = ()) -> None:
        self._kinds: dict[str, TxKind] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: TxKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"transaction kind {kind.name!r} is already registered")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> TxKind:
        """The kind called `name`; `InvalidTransaction` if there is none."""
        try:
            return self._kinds[name]
        except KeyError:
            raise InvalidTransaction(f"unknown transaction kind {name!r}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._kinds))

    def conflict_keys(self, tx: Transaction) -> tuple[ConflictKey, ...]:
        """Every conflict set `tx` is in: (account, nonce), then its kind's extra keys."""
        extra = getattr(self.get(tx.kind), "extra_conflict_keys", None)
        if extra is None:
            return (tx.conflict_key,)
        return (tx.conflict_key, *((key, EXTRA_KEY_NONCE) for key in extra(tx)))

    def not_before_ms(self, tx: Transaction) -> int:
        """The earliest timestamp of a vertex that may carry `tx` (0: any)."""
        hook = getattr(self.get(tx.kind), "not_before_ms", None)
        return 0 if hook is None else int(hook(tx))


class Transfer:
    """`transfer`: payload [to account (32 bytes), amount (1..MAX_CREDITS)]."""

    name = "transfer"

    def parse(self, payload: object, sender: bytes) -> tuple[Any, ...]:
        fields = as_array(payload, "transfer payload", length=2)
        to = as_bytes(fields[0], "transfer to", size=ACCOUNT_ID_BYTES)
        amount = as_int(fields[1], "transfer amount", lo=1, hi=MAX_CREDITS)
        if to == sender:
            raise InvalidTransaction("transfer to the sending account")
        return (to, amount)

    def plan(self, view: LedgerView, tx: Transaction) -> Sequence[Move]:
        to, amount = tx.payload
        return [Move(balance_of(tx.account), balance_of(to), amount)]


def transfer_payload(to: bytes, amount: int) -> tuple[bytes, int]:
    """The payload of a transfer of `amount` credits to account `to`."""
    return (to, amount)


def default_registry() -> KindRegistry:
    """A fresh registry with the kinds every node knows: transfer and the payment channel's
    open, settle and close (`dag.channels`)."""
    from dag.channels import register_channel_kinds  # channels builds on this module

    registry = KindRegistry([Transfer()])
    register_channel_kinds(registry)
    return registry
