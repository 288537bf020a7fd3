from dataclasses import replace
from hashlib import blake2b
from typing import Any

import pytest

from dag.codec import encode
from dag.crypto import Scheme
from dag.errors import DecodeError, InvalidSignature, InvalidVertex, LocalProtocolError
from dag.vertex import MAX_CLOCK_SKEW_MS, MAX_TXS, MAX_VERTEX_BYTES, Vertex, genesis_vertex_id
from tests.dag.helpers import GENESIS_MS, REGISTRY, key, make_genesis, transfer

AUTHOR, ALICE, BOB = key(1), key(2), key(3)
GENESIS = make_genesis([AUTHOR, ALICE, BOB])
CHAIN = GENESIS.digest
ROOT = genesis_vertex_id(GENESIS)
NOW = GENESIS_MS + 5_000


def _vertex(**kw: object) -> Vertex:
    args: dict[str, object] = {"chain": CHAIN, "parents": [ROOT], "timestamp_ms": NOW, "txs": ()}
    args.update(kw)
    return Vertex.create(AUTHOR, **args)  # type: ignore[arg-type]


def _decode(fields: list[object]) -> Vertex:
    return Vertex.from_bytes(encode(fields), REGISTRY, chain=CHAIN)  # type: ignore[arg-type]


def test_vertex_round_trips_and_verifies_with_ml_dsa() -> None:
    author = key(8, Scheme.ML_DSA_65)
    txs = [transfer(key(9, Scheme.ML_DSA_65), GENESIS, BOB.account_id, 5, 0)]
    vertex = Vertex.create(author, chain=CHAIN, parents=[ROOT], timestamp_ms=NOW, txs=txs)
    again = Vertex.from_bytes(vertex.to_bytes(), REGISTRY, chain=CHAIN)
    again.verify()
    assert again.id == vertex.id and again.author == author.account_id
    # Kept as received, and the same bytes as encoding it afresh.
    assert again.to_bytes() == vertex.to_bytes() == replace(again).to_bytes()
    # ML-DSA signing is randomised; the id covers the unsigned body only.
    resigned = Vertex.create(author, chain=CHAIN, parents=[ROOT], timestamp_ms=NOW, txs=txs)
    assert resigned.signature != vertex.signature and resigned.id == vertex.id


def test_a_vertex_joined_from_its_transactions_encodes_as_its_fields_would() -> None:
    # 20 transactions: past msgpack's 15-item short array header.
    txs = [transfer(ALICE, GENESIS, BOB.account_id, 1 + n, n) for n in range(20)]
    vertex = _vertex(txs=txs)
    fields = encode_fields(vertex)
    assert vertex.to_bytes() == encode(fields)
    assert [tx.to_bytes() for tx in txs] == [encode(f) for f in fields[7]]
    assert vertex.id == blake2b(encode(fields[:8]), digest_size=32).digest()
    again = Vertex.from_bytes(vertex.to_bytes(), REGISTRY, chain=CHAIN)
    assert again.id == vertex.id and again.txs == vertex.txs


def test_genesis_root_is_the_same_for_one_genesis_and_differs_for_another() -> None:
    assert genesis_vertex_id(make_genesis([AUTHOR, ALICE, BOB])) == ROOT
    assert genesis_vertex_id(make_genesis([AUTHOR, ALICE, BOB], balance=1)) != ROOT


def test_a_transaction_with_a_bad_signature_is_found_and_named() -> None:
    good = transfer(ALICE, GENESIS, BOB.account_id, 5, 0)
    bad = replace(transfer(BOB, GENESIS, ALICE.account_id, 5, 0), signature=good.signature)
    vertex = _vertex(txs=[good, bad])
    with pytest.raises(InvalidSignature, match="transaction 1 of vertex"):
        Vertex.from_bytes(vertex.to_bytes(), REGISTRY, chain=CHAIN).verify()


def test_the_author_signature_covers_the_body() -> None:
    vertex = _vertex()
    moved = replace(vertex, timestamp_ms=NOW + 1)
    assert moved.to_bytes() != vertex.to_bytes()  # a copy with a change encodes afresh
    with pytest.raises(InvalidSignature):
        Vertex.from_bytes(moved.to_bytes(), REGISTRY, chain=CHAIN).verify()


@pytest.mark.parametrize(
    ("parents", "match"),
    [
        ([], "1 to 4 parents"),
        ([bytes([i]) * 32 for i in range(5)], "over the limit"),
        ([ROOT, ROOT], "parent twice"),
        ([b"short"], "expected 32 bytes"),
    ],
)
def test_parent_rules(parents: list[bytes], match: str) -> None:
    fields = encode_fields(_vertex())
    fields[5] = parents
    with pytest.raises((InvalidVertex, DecodeError), match=match):
        _decode(fields)


def encode_fields(vertex: Vertex) -> list[Any]:
    import msgpack

    return msgpack.unpackb(vertex.to_bytes(), raw=False)  # type: ignore[no-any-return]


def test_builder_refuses_to_break_the_rules() -> None:
    with pytest.raises(LocalProtocolError, match="parent twice"):
        _vertex(parents=[ROOT, ROOT])
    tx = transfer(ALICE, GENESIS, BOB.account_id, 5, 0)
    with pytest.raises(LocalProtocolError, match="one \\(account, nonce\\)"):
        _vertex(txs=[tx, transfer(ALICE, GENESIS, BOB.account_id, 6, 0)])


def test_count_and_size_limits() -> None:
    fields = encode_fields(_vertex())
    tx = transfer(ALICE, GENESIS, BOB.account_id, 5, 0)
    fields[7] = [tx.to_fields()] * (MAX_TXS + 1)
    with pytest.raises(DecodeError, match="vertex transactions"):
        _decode(fields)
    with pytest.raises(DecodeError, match=f"over the limit of {MAX_VERTEX_BYTES}"):
        Vertex.from_bytes(b"\x00" * (MAX_VERTEX_BYTES + 1), REGISTRY, chain=CHAIN)


def test_vertex_of_another_chain_is_refused() -> None:
    fields = encode_fields(_vertex())
    fields[2] = bytes(32)
    with pytest.raises(InvalidVertex, match="another chain"):
        _decode(fields)


def test_timestamp_bounds() -> None:
    vertex = _vertex(timestamp_ms=NOW)
    vertex.check_time(NOW - MAX_CLOCK_SKEW_MS, [NOW])
    with pytest.raises(InvalidVertex, match="in the future"):
        vertex.check_time(NOW - MAX_CLOCK_SKEW_MS - 1, [])
    with pytest.raises(InvalidVertex, match="before one of its parents"):
        vertex.check_time(NOW, [NOW + 1])
