from dataclasses import replace

import pytest

from dag.codec import encode
from dag.crypto import Scheme, Signature
from dag.errors import DecodeError, InvalidSignature, InvalidTransaction
from dag.kinds import KindRegistry, Transfer, default_registry
from dag.tx import MAX_TX_BYTES, Transaction
from tests.dag.helpers import REGISTRY, key, make_genesis, transfer

ALICE, BOB = key(1), key(2)
GENESIS = make_genesis([ALICE, BOB])
CHAIN = GENESIS.digest


@pytest.mark.parametrize("scheme", [Scheme.ED25519, Scheme.ML_DSA_65])
def test_signed_transfer_round_trips_and_verifies(scheme: Scheme) -> None:
    sender = key(5, scheme)
    tx = transfer(sender, GENESIS, BOB.account_id, 7, 3)
    tx.verify()
    again = Transaction.from_bytes(tx.to_bytes(), REGISTRY, chain=CHAIN)
    again.verify()
    assert again == tx and again.id == tx.id
    assert tx.account == sender.account_id
    assert tx.conflict_key == (sender.account_id, 3)
    assert len(tx.to_bytes()) <= MAX_TX_BYTES


def test_id_depends_on_every_body_field_but_not_the_signature() -> None:
    tx = transfer(ALICE, GENESIS, BOB.account_id, 7, 0)
    assert replace(tx, nonce=1).id != tx.id
    assert replace(tx, payload=(BOB.account_id, 8)).id != tx.id
    assert replace(tx, chain=bytes(32)).id != tx.id
    assert replace(tx, signature=Signature(Scheme.ED25519, bytes(64))).id == tx.id


def test_changed_amount_breaks_the_signature() -> None:
    tx = transfer(ALICE, GENESIS, BOB.account_id, 7, 0)
    forged = replace(tx, payload=(BOB.account_id, 700))
    with pytest.raises(InvalidSignature):
        Transaction.from_bytes(forged.to_bytes(), REGISTRY, chain=CHAIN).verify()


def test_transaction_of_another_chain_is_refused() -> None:
    other = make_genesis([ALICE, BOB], balance=5)
    tx = transfer(ALICE, other, BOB.account_id, 7, 0)
    with pytest.raises(InvalidTransaction, match="another chain"):
        Transaction.from_bytes(tx.to_bytes(), REGISTRY, chain=CHAIN)
    # Even relabelled as ours, the signature binds the original chain.
    with pytest.raises(InvalidSignature):
        replace(tx, chain=CHAIN).verify()


def test_signature_of_the_wrong_scheme_is_refused() -> None:
    tx = transfer(ALICE, GENESIS, BOB.account_id, 7, 0)
    ml = key(9, Scheme.ML_DSA_65).sign(b"x")
    with pytest.raises(InvalidSignature, match="does not match"):
        replace(tx, signature=ml).verify()
    fields = tx.to_fields()
    fields[8] = [77, b"\x00" * 64]
    with pytest.raises(InvalidSignature, match="unknown signature scheme id 77"):
        Transaction.from_bytes(encode(fields), REGISTRY, chain=CHAIN)
    fields = tx.to_fields()
    fields[3] = 9
    with pytest.raises(InvalidSignature, match="unknown signature scheme id 9"):
        Transaction.from_bytes(encode(fields), REGISTRY, chain=CHAIN)


@pytest.mark.parametrize(
    ("index", "value", "error", "match"),
    [
        (5, -1, DecodeError, "nonce"),
        (6, "mint", InvalidTransaction, "unknown transaction kind"),
        (7, [bytes(32), 0], DecodeError, "amount"),
        (7, [bytes(31), 5], DecodeError, "transfer to"),
        (7, [bytes(32), 5, 1], DecodeError, "fields"),
        (7, [bytes(32), 10**16], DecodeError, "amount"),
        (0, "swarm/vertex", DecodeError, "type tag"),
        (1, 2, DecodeError, "version"),
    ],
)
def test_malformed_fields_are_refused(index: int, value: object, error: type, match: str) -> None:
    fields = transfer(ALICE, GENESIS, BOB.account_id, 7, 0).to_fields()
    fields[index] = value
    with pytest.raises(error, match=match):
        Transaction.from_bytes(encode(fields), REGISTRY, chain=CHAIN)


def test_transfer_to_oneself_and_oversized_transactions_are_refused() -> None:
    with pytest.raises(InvalidTransaction, match="sending account"):
        transfer(ALICE, GENESIS, ALICE.account_id, 1, 0)
    with pytest.raises(DecodeError, match="over the limit"):
        Transaction.from_bytes(b"\x90" * (MAX_TX_BYTES + 1), REGISTRY, chain=CHAIN)


def test_registry_refuses_a_kind_twice_and_is_per_instance() -> None:
    registry = default_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Transfer())
    assert registry.names == ("channel_close", "channel_open", "channel_settle", "transfer")
    assert KindRegistry().names == ()
    with pytest.raises(InvalidTransaction, match="unknown transaction kind"):
        KindRegistry().get("transfer")
