import random
from collections.abc import Sequence
from typing import Any

import pytest

from dag.codec import as_array, as_int
from dag.errors import LocalProtocolError
from dag.kinds import KindRegistry, LedgerView, Move, Transfer, TxFailed, balance_of, locked_under
from dag.ledger import Ledger
from dag.tx import Transaction
from tests.dag.helpers import REGISTRY, key, make_genesis, transfer

A, B, C = key(1), key(2), key(3)


def _ledger(balances: tuple[int, int, int] = (10, 0, 0)) -> Ledger:
    return Ledger(make_genesis([A, B, C], balances=list(balances)), REGISTRY)


GENESIS = make_genesis([A, B, C])


def _pay(sender: Any, to: Any, amount: int, nonce: int) -> Transaction:
    return transfer(sender, GENESIS, to.account_id, amount, nonce)


def test_transfer_moves_credits_and_conserves() -> None:
    ledger = _ledger()
    (outcome,) = ledger.accept(_pay(A, B, 4, 0))
    assert outcome.applied
    assert (ledger.balance(A.account_id), ledger.balance(B.account_id)) == (6, 4)
    assert ledger.next_nonce(A.account_id) == 1
    assert ledger.is_decided((A.account_id, 0)) and not ledger.is_decided((A.account_id, 1))
    ledger.check_conservation()


def test_an_overdraft_waits_until_credits_arrive_in_either_order() -> None:
    b_pays_c, a_pays_b = _pay(B, C, 10, 0), _pay(A, B, 10, 0)
    first = _ledger()
    assert first.accept(b_pays_c) == []  # B has nothing yet: it waits, nothing moves
    assert first.balance(B.account_id) == 0 and first.is_decided((B.account_id, 0))
    assert [o.tx_id for o in first.accept(a_pays_b)] == [a_pays_b.id, b_pays_c.id]
    second = _ledger()
    second.accept(a_pays_b)
    second.accept(b_pays_c)
    for ledger in (first, second):
        assert ledger.balance(C.account_id) == 10 and ledger.balance(B.account_id) == 0
        assert ledger.waiting() == []
        ledger.check_conservation()


def test_a_later_nonce_waits_for_the_earlier_one() -> None:
    ledger = _ledger()
    assert ledger.accept(_pay(A, B, 1, 1)) == []
    assert ledger.next_nonce(A.account_id) == 0
    assert len(ledger.accept(_pay(A, B, 1, 0))) == 2
    assert ledger.next_nonce(A.account_id) == 2


def test_accepting_a_decided_conflict_set_is_refused() -> None:
    ledger = _ledger()
    ledger.accept(_pay(A, B, 1, 0))
    with pytest.raises(LocalProtocolError, match="already decided"):
        ledger.accept(_pay(A, C, 1, 0))


def test_state_depends_on_the_accepted_set_not_its_order() -> None:
    rng = random.Random(7)
    keys = [A, B, C]
    nonces = dict.fromkeys(range(3), 0)
    txs = []
    for _ in range(60):
        s, r = rng.sample(range(3), 2)
        txs.append(_pay(keys[s], keys[r], rng.randint(1, 8), nonces[s]))
        nonces[s] += 1
    results = set()
    for _ in range(25):
        order = txs[:]
        rng.shuffle(order)
        ledger = _ledger((10, 5, 0))
        for tx in order:
            ledger.accept(tx)
            ledger.check_conservation()
        results.add(
            (
                tuple(ledger.balance(k.account_id) for k in keys),
                tuple(ledger.next_nonce(k.account_id) for k in keys),
                tuple(sorted(t.id for t in ledger.waiting())),
            )
        )
    assert len(results) == 1


class Escrow:
    """A test kind: lock `amount` under a key, or fail for an amount of 13."""

    name = "escrow"

    def parse(self, payload: object, sender: bytes) -> tuple[Any, ...]:
        (amount,) = as_array(payload, "escrow", length=1)
        return (as_int(amount, "escrow amount", lo=1, hi=10**6),)

    def plan(self, view: LedgerView, tx: Transaction) -> Sequence[Move]:
        if tx.payload[0] == 13:
            raise TxFailed("unlucky amount")
        return [Move(balance_of(tx.account), locked_under(tx.account), tx.payload[0])]


def test_a_new_kind_plugs_in_and_locked_credits_are_conserved() -> None:
    registry = KindRegistry([Transfer(), Escrow()])
    ledger = Ledger(make_genesis([A, B, C], balance=10), registry)

    def escrow(amount: int, nonce: int) -> Transaction:
        return Transaction.create(
            A,
            chain=GENESIS.digest,
            nonce=nonce,
            kind="escrow",
            payload=(amount,),
            registry=registry,
        )

    assert ledger.accept(escrow(4, 0))[0].applied
    failed = ledger.accept(escrow(13, 1))[0]
    assert not failed.applied and failed.reason == "unlucky amount"
    assert ledger.next_nonce(A.account_id) == 2  # a failed transaction uses its nonce
    assert ledger.total_locked == 4 and ledger.balance(A.account_id) == 6
    ledger.check_conservation()


def test_restore_gives_back_the_same_state_and_what_waits() -> None:
    ledger = _ledger()
    ledger.accept(_pay(A, B, 3, 0))
    ledger.accept(_pay(B, C, 5, 0))  # waits for funds
    changes = ledger.take_changes()
    assert changes.nonces == {A.account_id: 1}
    restored = Ledger.restore(
        make_genesis([A, B, C], balances=[10, 0, 0]),
        REGISTRY,
        {b: ledger.amount(b) for b in changes.amounts},
        {A.account_id: 1},
        ledger.waiting(),
    )
    assert restored.is_decided((B.account_id, 0))
    restored.accept(_pay(A, B, 2, 1))  # now B can pay
    assert restored.balance(C.account_id) == 5
    restored.check_conservation()
