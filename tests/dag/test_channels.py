import random
from typing import Any

import pytest

from dag import channels
from dag.channels import (
    MAX_IOU_BYTES,
    ChannelClose,
    ChannelSettle,
    ChannelTerms,
    Iou,
    channel_id,
    close_payload,
    is_open,
    lock_bucket,
    open_payload,
    settle_payload,
)
from dag.codec import decode, encode
from dag.crypto import Scheme, SigningKey
from dag.errors import DecodeError, InvalidSignature, InvalidTransaction, LocalProtocolError
from dag.kinds import default_registry
from dag.ledger import Ledger
from dag.tx import MAX_TX_BYTES, Transaction
from tests.dag.helpers import GENESIS_MS, key, make_genesis, signed

CLIENT, PROVIDER, OTHER = key(1), key(2), key(3)
IOU_KEY = key(10)  # the client's per-channel IOU key
REGISTRY = default_registry()
GENESIS = make_genesis([CLIENT, PROVIDER, OTHER], balances=[1_000, 0, 0])
CHAIN = GENESIS.digest
EXPIRY = GENESIS_MS + 60_000


def _tx(sender: SigningKey, nonce: int, kind: str, payload: tuple[Any, ...]) -> Transaction:
    return signed(sender, GENESIS, nonce, kind, payload)


def _open(
    nonce: int = 0, provider: SigningKey = PROVIDER, deposit: int = 100
) -> tuple[Transaction, ChannelTerms]:
    payload = open_payload(provider.account_id, deposit, EXPIRY, IOU_KEY.public_key)
    tx = _tx(CLIENT, nonce, "channel_open", payload)
    return tx, ChannelTerms.of_open(tx)


def _iou(terms: ChannelTerms, cumulative: int, seq: int = 0, signer: SigningKey = IOU_KEY) -> Iou:
    return Iou.create(signer, channel_id(CHAIN, terms), cumulative, seq)


def _settle(
    terms: ChannelTerms, iou: Iou, nonce: int = 0, sender: SigningKey = PROVIDER
) -> Transaction:
    return _tx(sender, nonce, "channel_settle", settle_payload(terms, iou))


def _close(terms: ChannelTerms, nonce: int) -> Transaction:
    return _tx(CLIENT, nonce, "channel_close", close_payload(terms))


def _ledger() -> Ledger:
    return Ledger(GENESIS, REGISTRY)


def _accept(ledger: Ledger, *txs: Transaction) -> list[bool]:
    """Accept each in turn, checking conservation after every step; the outcomes' `applied`."""
    applied = []
    for tx in txs:
        applied += [o.applied for o in ledger.accept(tx)]
        ledger.check_conservation()
    return applied


def _balances(ledger: Ledger) -> tuple[int, ...]:
    return tuple(ledger.balance(k.account_id) for k in (CLIENT, PROVIDER, OTHER))


def test_open_locks_the_deposit_and_settle_pays_the_provider_and_returns_the_rest() -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    assert _accept(ledger, open_tx) == [True]
    assert _balances(ledger) == (900, 0, 0) and ledger.amount(lock_bucket(CHAIN, terms)) == 100
    assert is_open(ledger, CHAIN, terms)
    assert _accept(ledger, _settle(terms, _iou(terms, 37, seq=5))) == [True]
    assert _balances(ledger) == (963, 37, 0) and ledger.total_locked == 0
    assert not is_open(ledger, CHAIN, terms)


def test_a_provider_claims_what_was_used_and_never_more_than_the_iou() -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    iou = _iou(terms, 50, seq=2)
    settle = _tx(PROVIDER, 0, "channel_settle", settle_payload(terms, iou, 21))
    assert _accept(ledger, open_tx, settle) == [True, True]
    assert _balances(ledger) == (979, 21, 0) and ledger.total_locked == 0
    with pytest.raises(DecodeError, match="amount"):
        _tx(PROVIDER, 1, "channel_settle", settle_payload(terms, iou, 51))


def test_close_returns_the_whole_deposit() -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    assert _accept(ledger, open_tx, _close(terms, 1)) == [True, True]
    assert _balances(ledger) == (1_000, 0, 0) and ledger.total_locked == 0


def test_an_iou_for_the_whole_deposit_leaves_nothing_to_return() -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    assert _accept(ledger, open_tx, _settle(terms, _iou(terms, 100))) == [True, True]
    assert _balances(ledger) == (900, 100, 0)


def test_a_settle_accepted_before_its_open_waits_for_it() -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    settle = _settle(terms, _iou(terms, 10))
    assert _accept(ledger, settle) == []
    assert ledger.waiting() == [settle] and _balances(ledger) == (1_000, 0, 0)
    assert _accept(ledger, open_tx) == [True, True]
    assert _balances(ledger) == (990, 10, 0) and ledger.waiting() == []


def test_the_channel_lives_in_buckets_so_a_restored_ledger_goes_on() -> None:
    ledger = _ledger()
    first, first_terms = _open(0)
    second, second_terms = _open(1, deposit=50)
    _accept(ledger, first, _settle(second_terms, _iou(second_terms, 20)))  # waits for `second`
    changes = ledger.take_changes()
    restored = Ledger.restore(
        GENESIS,
        REGISTRY,
        changes.amounts,
        changes.nonces,
        [t for t in changes.waiting_added if t.conflict_key not in changes.waiting_removed],
    )
    assert is_open(restored, CHAIN, first_terms) and len(restored.waiting()) == 1
    assert _accept(restored, second, _settle(first_terms, _iou(first_terms, 5), nonce=1)) == [
        True,
        True,
        True,
    ]
    assert _balances(restored) == (1_000 - 20 - 5, 25, 0) and restored.total_locked == 0


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda t: _iou(t, 60, signer=key(11)), id="signed-by-another-key"),
        pytest.param(lambda t: _iou(_open(7)[1], 60), id="for-another-channel"),
        pytest.param(
            lambda t: Iou(channel_id(CHAIN, t), 90, 0, _iou(t, 60).signature),
            id="amount-raised-after-signing",
        ),
    ],
)
def test_a_forged_iou_fails_with_no_effect(forge: Any) -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    _accept(ledger, open_tx)
    (outcome,) = ledger.accept(_settle(terms, forge(terms)))
    ledger.check_conservation()
    assert not outcome.applied and outcome.reason
    assert _balances(ledger) == (900, 0, 0) and is_open(ledger, CHAIN, terms)
    assert ledger.next_nonce(PROVIDER.account_id) == 1


def test_an_iou_above_the_deposit_never_becomes_a_transaction() -> None:
    _, terms = _open()
    with pytest.raises(InvalidTransaction, match="above the channel deposit"):
        _settle(terms, _iou(terms, 101))
    with pytest.raises(InvalidTransaction, match="above the channel deposit"):
        terms.check_iou(CHAIN, _iou(terms, 101))


def test_a_second_provider_cannot_settle_the_clients_channel() -> None:
    # The client spends one deposit with two providers: OTHER serves it on IOUs of the channel
    # opened for PROVIDER. Settled by OTHER, the terms name OTHER, so the id differs.
    ledger = _ledger()
    open_tx, terms = _open()
    _accept(ledger, open_tx)
    (outcome,) = ledger.accept(_settle(terms, _iou(terms, 80), sender=OTHER))
    assert not outcome.applied and outcome.reason == "IOU is for another channel"
    assert _balances(ledger) == (900, 0, 0) and is_open(ledger, CHAIN, terms)
    assert _accept(ledger, _settle(terms, _iou(terms, 30))) == [True]
    assert _balances(ledger) == (970, 30, 0)


def test_a_replayed_settle_is_refused() -> None:
    ledger = _ledger()
    open_tx, terms = _open()
    settle = _settle(terms, _iou(terms, 30))
    _accept(ledger, open_tx, settle)
    with pytest.raises(LocalProtocolError, match="already decided"):
        ledger.accept(settle)


def _finish_key(tx: Transaction) -> tuple[bytes, ...]:
    kind = REGISTRY.get(tx.kind)
    assert isinstance(kind, ChannelSettle | ChannelClose)
    return kind.extra_conflict_keys(tx)


def test_every_settle_and_close_of_a_channel_conflict_so_only_one_is_accepted() -> None:
    _, terms = _open()
    _, other_terms = _open(1)
    finishes = [
        _settle(terms, _iou(terms, 30)),
        _settle(terms, _iou(terms, 30), nonce=1),  # the same IOU again
        _settle(terms, _iou(terms, 20, seq=1), nonce=1),  # a lower one
        _settle(terms, _iou(terms, 50, seq=2), nonce=1),  # a higher one
        _close(terms, 1),
    ]
    assert {_finish_key(tx) for tx in finishes} == {(channel_id(CHAIN, terms),)}
    assert _finish_key(_close(other_terms, 2)) != _finish_key(finishes[0])


def test_a_finish_after_the_channel_ended_is_refused_and_moves_nothing() -> None:
    # Voting accepts only one of these (shared conflict key), and the ledger keeps the key
    # claimed: a second finish is a decided conflict set, like a replayed nonce.
    for first, second in [(0, 1), (1, 0)]:
        ledger = _ledger()
        open_tx, terms = _open()
        finishes = [_settle(terms, _iou(terms, 40)), _close(terms, 1)]
        assert _accept(ledger, open_tx, finishes[first]) == [True, True]
        after_first = _balances(ledger)
        assert ledger.is_decided((channel_id(CHAIN, terms), -1))
        with pytest.raises(LocalProtocolError, match="already decided"):
            ledger.accept(finishes[second])
        assert _balances(ledger) == after_first and ledger.total_locked == 0
        assert ledger.take_changes().claimed == [channel_id(CHAIN, terms)]


def test_a_close_is_carried_only_from_the_expiry_on() -> None:
    _, terms = _open()
    close = _close(terms, 1)
    kind = REGISTRY.get("channel_close")
    assert isinstance(kind, ChannelClose)
    assert kind.not_before_ms(close) == EXPIRY


def test_the_final_state_does_not_depend_on_the_order_of_acceptance() -> None:
    # Two channels of one client and transfers whose funds come from their settlement; the
    # conflicting finishes (one per channel) are left out since voting decides between them.
    first, first_terms = _open(0, deposit=100)
    second, second_terms = _open(1, provider=OTHER, deposit=50)
    txs = [
        first,
        second,
        _settle(first_terms, _iou(first_terms, 30, seq=3)),
        _close(second_terms, 2),
        _tx(PROVIDER, 1, "transfer", (OTHER.account_id, 25)),  # waits for the settle
        _tx(OTHER, 0, "transfer", (CLIENT.account_id, 20)),  # waits for that transfer
        _tx(CLIENT, 3, "transfer", (PROVIDER.account_id, 900)),  # waits for the refunds
    ]
    rng = random.Random(11)
    results = set()
    for _ in range(40):
        order = txs[:]
        rng.shuffle(order)
        ledger = _ledger()
        _accept(ledger, *order)
        results.add(
            (
                _balances(ledger),
                ledger.total_locked,
                tuple(ledger.next_nonce(k.account_id) for k in (CLIENT, PROVIDER, OTHER)),
                tuple(sorted(t.id for t in ledger.waiting())),
            )
        )
    # client: 1000 - 100 - 50 + 70 + 50 - 900 + 20; provider: 30 - 25 + 900; other: 25 - 20
    assert results == {((90, 905, 5), 0, (4, 2, 1), ())}


def test_a_settle_fits_a_transaction_with_an_ml_dsa_provider_and_decodes_to_itself() -> None:
    provider = key(4, Scheme.ML_DSA_65)
    _, terms = _open(provider=provider)
    settle = _settle(terms, _iou(terms, 99, seq=2**40), sender=provider)
    data = settle.to_bytes()
    assert len(data) <= MAX_TX_BYTES
    assert Transaction.from_bytes(data, REGISTRY, chain=CHAIN).id == settle.id


def test_open_refuses_a_channel_to_oneself_and_an_ml_dsa_iou_key() -> None:
    with pytest.raises(InvalidTransaction, match="itself"):
        _tx(
            CLIENT,
            0,
            "channel_open",
            open_payload(CLIENT.account_id, 5, EXPIRY, IOU_KEY.public_key),
        )
    ml_dsa = key(5, Scheme.ML_DSA_65).public_key
    with pytest.raises(InvalidTransaction, match="not ed25519"):
        _tx(CLIENT, 0, "channel_open", open_payload(PROVIDER.account_id, 5, EXPIRY, ml_dsa))


def test_an_iou_round_trips_and_verifies_only_with_its_key() -> None:
    _, terms = _open()
    iou = _iou(terms, 42, seq=7)
    data = iou.to_bytes()
    assert len(data) <= MAX_IOU_BYTES
    decoded = Iou.from_bytes(data)
    assert decoded == iou
    decoded.verify(IOU_KEY.public_key)
    with pytest.raises(InvalidSignature):
        decoded.verify(key(11).public_key)
    with pytest.raises(InvalidSignature):
        Iou(iou.channel_id, iou.cumulative, iou.seq + 1, iou.signature).verify(IOU_KEY.public_key)


def _iou_fields(**changes: Any) -> list[Any]:
    fields: dict[str, Any] = {
        "tag": "swarm/iou",
        "version": 1,
        "channel": bytes(32),
        "cumulative": 5,
        "seq": 0,
        "sig": [1, bytes(64)],
    }
    fields.update(changes)
    return list(fields.values())


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x00" * (MAX_IOU_BYTES + 1), DecodeError),
        (b"\xc1", DecodeError),
        (encode(_iou_fields()) + b"\x00", DecodeError),
        (encode(_iou_fields(tag="swarm/tx")), DecodeError),
        (encode(_iou_fields(version=2)), DecodeError),
        (encode(_iou_fields(channel=bytes(31))), DecodeError),
        (encode(_iou_fields(cumulative=0)), DecodeError),
        (encode(_iou_fields(cumulative="5")), DecodeError),
        (encode(_iou_fields(seq=-1)), DecodeError),
        (encode(_iou_fields(sig=[9, bytes(64)])), InvalidSignature),
        (encode(_iou_fields()[:5]), DecodeError),
        (b"\x96\xa9swarm/iou\x01\xc4\x20" + bytes(32) + b"\xcb" + bytes(8), DecodeError),
        # the amount 5 as a uint64 (0xcf), where canonical msgpack has a one-byte fixint
        (
            encode(_iou_fields()).replace(b"\x05\x00", b"\xcf" + (5).to_bytes(8, "big") + b"\x00"),
            DecodeError,
        ),
    ],
    ids=[
        "oversized",
        "not-msgpack",
        "trailing-bytes",
        "wrong-tag",
        "wrong-version",
        "short-channel-id",
        "zero-amount",
        "amount-not-an-int",
        "negative-seq",
        "unknown-scheme",
        "missing-field",
        "float",
        "not-canonical",
    ],
)
def test_a_malformed_iou_is_a_remote_protocol_error(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        Iou.from_bytes(data)


def test_the_fast_iou_parse_takes_exactly_what_the_checks_one_by_one_take() -> None:
    # `Iou.from_bytes` tries plain type tests first; every byte string it takes that way
    # must be one the field-by-field checks take too, as the same IOU.
    good = Iou.create(SigningKey(Scheme.ED25519, bytes(32)), bytes(32), 5, 7).to_bytes()
    rng = random.Random(3)
    variants = [good, good[:-1], good + b"\x00"]
    variants += [good[:i] + bytes([rng.randrange(256)]) + good[i + 1 :] for i in range(len(good))]
    variants += [good[:i] + bytes([b]) + good[i + 1 :] for i in range(12) for b in (0, 1, 0xC3)]
    taken = 0
    for data in variants:
        fast = channels._well_formed(data)
        try:
            slow = Iou.from_fields(decode(data, max_bytes=MAX_IOU_BYTES, what="IOU"))
            canonical = encode(slow.to_fields()) == data
        except (DecodeError, InvalidSignature):
            slow, canonical = None, False
        if fast is not None:
            taken += 1
            assert canonical and fast == slow, data.hex()
        elif canonical:
            assert slow is not None and Iou.from_bytes(data) == slow
    assert taken > 3  # (the good one, and bytes of the channel id or signature changed)
