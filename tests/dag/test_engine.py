from dataclasses import replace
from pathlib import Path

import pytest

from dag.avalanche import VertexAccepted
from dag.codec import encode
from dag.crypto import Scheme
from dag.engine import Engine, TxAccepted, TxApplied
from dag.errors import (
    DecodeError,
    InvalidSignature,
    InvalidVertex,
    RemoteProtocolError,
    ReplayedNonce,
)
from dag.vertex import MAX_VERTEX_BYTES, Vertex
from tests.dag.helpers import GENESIS_MS, key, make_genesis, open_engine, transfer

# A one-validator chain decides alone, so these tests need no network.
ME, ALICE, BOB = key(1), key(2, Scheme.ML_DSA_65), key(3)
GENESIS = make_genesis([ME, ALICE, BOB], stakes=[100, 0, 0])
NOW = GENESIS_MS + 60_000


def _settle(engine: Engine, rounds: int = 12) -> None:
    """Issue empty vertices until everything waiting is decided."""
    for i in range(rounds):
        engine.polls_to_send(float(i))
        if engine.needs_vertex():
            engine.build_vertex(ME, [], NOW + i)


def _outsider_vertex(engine: Engine, txs: list[object] = (), **kw: object) -> Vertex:  # type: ignore[assignment]
    args: dict[str, object] = {
        "chain": GENESIS.digest,
        "parents": [engine.root],
        "timestamp_ms": NOW,
        "txs": txs,
    }
    args.update(kw)
    return Vertex.create(ALICE, **args)  # type: ignore[arg-type]


def _nothing_stored(engine: Engine) -> bool:
    return engine.store.counts() == {"processing": 0, "accepted": 0, "rejected": 0}


def test_transfer_is_accepted_applied_and_reported_once_stored() -> None:
    engine = open_engine(GENESIS, ME)
    tx = transfer(ALICE, GENESIS, BOB.account_id, 30, 0)
    engine.check_transaction(tx)
    vertex = engine.build_vertex(ME, [tx], NOW)
    assert engine.vote_for(vertex.id) and not engine.vote_for(b"\x00" * 32)
    _settle(engine)
    events = engine.drain_events()
    assert VertexAccepted(vertex.id) in events
    assert TxAccepted(tx.id, vertex.id, True) in events
    assert engine.ledger.balance(BOB.account_id) == 1_030
    record = engine.store.tx_record(tx.id)
    assert record is not None and record.vertex_id == vertex.id
    engine.ledger.check_conservation()


def test_invalid_signature_is_refused_with_the_peer_named_and_nothing_stored() -> None:
    engine = open_engine(GENESIS, ME)
    vertex = _outsider_vertex(engine)
    forged = replace(vertex, signature=replace(vertex.signature, value=bytes(3309)))
    with pytest.raises(InvalidSignature) as info:
        engine.receive(forged.to_bytes(), now_ms=NOW, peer=b"\xab")
    assert info.value.peer == "ab"
    assert _nothing_stored(engine)


def test_wrong_scheme_is_refused() -> None:
    engine = open_engine(GENESIS, ME)
    vertex = _outsider_vertex(engine)
    wrong = replace(vertex, signature=ME.sign(b"anything"))
    with pytest.raises(InvalidSignature, match="does not match"):
        engine.receive(wrong.to_bytes(), now_ms=NOW)
    assert _nothing_stored(engine)


def test_oversized_vertex_is_refused_before_it_is_read() -> None:
    engine = open_engine(GENESIS, ME)
    with pytest.raises(DecodeError, match="over the limit"):
        engine.receive(encode([b"\x00" * MAX_VERTEX_BYTES]), now_ms=NOW)
    assert _nothing_stored(engine)


def test_unknown_parents_are_reported_and_nothing_is_stored_until_they_come() -> None:
    engine = open_engine(GENESIS, ME)
    parent = _outsider_vertex(engine)
    child = _outsider_vertex(engine, parents=[parent.id])
    result = engine.receive(child.to_bytes(), now_ms=NOW)
    assert (result.status, result.missing) == ("missing", (parent.id,))
    assert _nothing_stored(engine)
    assert engine.receive(parent.to_bytes(), now_ms=NOW).status == "added"
    assert engine.receive(child.to_bytes(), now_ms=NOW).status == "added"
    assert engine.receive(child.to_bytes(), now_ms=NOW).status == "known"


def test_replayed_nonce_is_refused_after_acceptance() -> None:
    engine = open_engine(GENESIS, ME)
    engine.build_vertex(ME, [transfer(ALICE, GENESIS, BOB.account_id, 1, 0)], NOW)
    _settle(engine)
    counts = engine.store.counts()
    replay = _outsider_vertex(engine, [transfer(ALICE, GENESIS, ME.account_id, 2, 0)])
    with pytest.raises(ReplayedNonce):
        engine.receive(replay.to_bytes(), now_ms=NOW)
    with pytest.raises(ReplayedNonce):
        engine.check_transaction(transfer(ALICE, GENESIS, ME.account_id, 2, 0))
    assert engine.store.counts() == counts
    assert issubclass(ReplayedNonce, RemoteProtocolError)


def test_timestamp_from_the_future_is_refused() -> None:
    engine = open_engine(GENESIS, ME)
    vertex = _outsider_vertex(engine, timestamp_ms=NOW + 60_000)
    with pytest.raises(InvalidVertex, match="future"):
        engine.receive(vertex.to_bytes(), now_ms=NOW)
    assert _nothing_stored(engine)


def test_restart_resumes_the_ledger_and_the_processing_vertices(tmp_path: Path) -> None:
    path = str(tmp_path / "dag.sqlite")
    engine = open_engine(GENESIS, ME, path)
    engine.build_vertex(ME, [transfer(ALICE, GENESIS, BOB.account_id, 10, 0)], NOW)
    _settle(engine)
    # nonce 2 before 1: accepted, waits for its turn across the restart
    early = transfer(ALICE, GENESIS, BOB.account_id, 5, 2)
    pending = engine.build_vertex(ME, [early], NOW + 100)
    _settle(engine)
    accepted = engine.store.accepted_ids(limit=10_000)
    balances = {a.account: engine.ledger.balance(a.account) for a in GENESIS.accounts}
    late = engine.build_vertex(ME, [transfer(ME, GENESIS, BOB.account_id, 1, 0)], NOW + 200)
    engine.store.close()  # a crash: no goodbye

    again = open_engine(GENESIS, ME, path)
    assert again.store.accepted_ids(limit=10_000) == accepted
    assert {a.account: again.ledger.balance(a.account) for a in GENESIS.accounts} == balances
    assert again.ledger.is_decided((ALICE.account_id, 2))
    assert again.avalanche.is_processing(late.id) and again.vote_for(pending.id)
    again.build_vertex(ME, [transfer(ALICE, GENESIS, BOB.account_id, 1, 1)], NOW + 300)
    _settle(again)
    events = again.drain_events()
    assert TxApplied(early.id, True) in events
    assert again.ledger.balance(BOB.account_id) == 1_000 + 10 + 1 + 5 + 1
    assert again.ledger.next_nonce(ALICE.account_id) == 3
    again.ledger.check_conservation()
