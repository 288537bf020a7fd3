"""The engine's side of payment channels: extra conflict keys and not-before times."""

import sqlite3
from pathlib import Path

import pytest

from dag.channels import ChannelTerms, Iou, channel_id, close_payload, open_payload, settle_payload
from dag.engine import Engine
from dag.errors import AlreadyClaimed, InvalidTransaction, InvalidVertex
from dag.store import SCHEMA_VERSION, Store, TxStatus
from dag.tx import Transaction
from dag.vertex import Vertex
from tests.dag.helpers import GENESIS_MS, key, make_genesis, open_engine, signed

# One validator decides alone; the client and the provider hold no stake.
ME, CLIENT, PROVIDER, IOU_KEY = key(1), key(2), key(3), key(4)
GENESIS = make_genesis([ME, CLIENT, PROVIDER], stakes=[100, 0, 0], balances=[0, 1_000, 0])
NOW = GENESIS_MS + 60_000
EXPIRY = NOW + 5_000


def _decide(engine: Engine, at_ms: int, rounds: int = 40) -> None:
    for i in range(rounds):
        engine.polls_to_send(float(i))
        if engine.needs_vertex():
            engine.build_vertex(ME, [], at_ms + i)


def _opened(engine: Engine) -> ChannelTerms:
    open_tx = signed(
        CLIENT,
        GENESIS,
        0,
        "channel_open",
        open_payload(PROVIDER.account_id, 100, EXPIRY, IOU_KEY.public_key),
    )
    engine.build_vertex(ME, [open_tx], NOW)
    _decide(engine, NOW)
    return ChannelTerms.of_open(open_tx)


def _settle(terms: ChannelTerms, amount: int, nonce: int = 0) -> Transaction:
    iou = Iou.create(IOU_KEY, channel_id(GENESIS.digest, terms), amount, seq=amount)
    return signed(PROVIDER, GENESIS, nonce, "channel_settle", settle_payload(terms, iou))


def _close(terms: ChannelTerms) -> Transaction:
    return signed(CLIENT, GENESIS, 1, "channel_close", close_payload(terms))


def _from_client(engine: Engine, txs: list[Transaction], at_ms: int) -> Vertex:
    parents = engine.frontier()[:4]
    return Vertex.create(CLIENT, chain=GENESIS.digest, parents=parents, timestamp_ms=at_ms, txs=txs)


def _balances(engine: Engine) -> tuple[int, int]:
    return engine.ledger.balance(CLIENT.account_id), engine.ledger.balance(PROVIDER.account_id)


def test_settle_pays_and_then_no_close_of_that_channel_enters_the_dag(tmp_path: Path) -> None:
    path = str(tmp_path / "dag.sqlite")
    engine = open_engine(GENESIS, ME, path)
    terms = _opened(engine)
    assert _balances(engine) == (900, 0)
    engine.build_vertex(ME, [_settle(terms, 30)], NOW + 100)
    _decide(engine, NOW + 100)
    assert _balances(engine) == (970, 30) and engine.ledger.total_locked == 0
    close = _close(terms)
    counts = engine.store.counts()
    with pytest.raises(AlreadyClaimed, match="already accepted"):
        engine.check_transaction(close, now_ms=EXPIRY)
    with pytest.raises(AlreadyClaimed):
        engine.receive(_from_client(engine, [close], EXPIRY).to_bytes(), now_ms=EXPIRY)
    assert engine.store.counts() == counts

    engine.store.close()  # the claimed key survives a crash and restart
    again = open_engine(GENESIS, ME, path)
    with pytest.raises(AlreadyClaimed):
        again.check_transaction(_settle(terms, 60, nonce=1))
    again.ledger.check_conservation()


def test_a_vertex_holding_a_settle_and_a_close_of_one_channel_is_refused() -> None:
    engine = open_engine(GENESIS, ME)
    terms = _opened(engine)
    counts = engine.store.counts()
    both = _from_client(engine, [_settle(terms, 30), _close(terms)], EXPIRY)
    with pytest.raises(InvalidVertex, match="two transactions of conflict set"):
        engine.receive(both.to_bytes(), now_ms=EXPIRY)
    assert engine.store.counts() == counts


def test_a_close_is_refused_before_the_expiry_and_returns_the_deposit_after() -> None:
    engine = open_engine(GENESIS, ME)
    terms = _opened(engine)
    close = _close(terms)
    with pytest.raises(InvalidTransaction, match="before"):
        engine.check_transaction(close, now_ms=EXPIRY - 1)
    early = _from_client(engine, [close], EXPIRY - 1)
    with pytest.raises(InvalidTransaction, match="before"):
        engine.receive(early.to_bytes(), now_ms=EXPIRY)
    engine.check_transaction(close, now_ms=EXPIRY)
    assert (
        engine.receive(_from_client(engine, [close], EXPIRY).to_bytes(), now_ms=EXPIRY).status
        == "added"
    )
    _decide(engine, EXPIRY)
    assert _balances(engine) == (1_000, 0) and engine.ledger.total_locked == 0


def test_a_settle_and_a_close_in_flight_together_end_with_exactly_one_accepted() -> None:
    engine = open_engine(GENESIS, ME)
    terms = _opened(engine)
    settle, close = _settle(terms, 40), _close(terms)
    for tx in (settle, close):
        engine.receive(_from_client(engine, [tx], EXPIRY).to_bytes(), now_ms=EXPIRY)
    _decide(engine, EXPIRY, rounds=80)
    records = [engine.store.tx_record(tx.id) for tx in (settle, close)]
    statuses = sorted(r.status for r in records if r is not None)
    assert statuses == [TxStatus.APPLIED, TxStatus.REJECTED]
    assert _balances(engine) in {(960, 40), (1_000, 0)}
    engine.ledger.check_conservation()


def test_a_store_of_schema_1_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "dag.sqlite"
    Store.open(path, GENESIS.digest).close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TABLE claimed; UPDATE meta SET value = x'31' WHERE key = 'schema';")
    conn.close()
    store = Store.open(path, GENESIS.digest)
    assert store.load_ledger().claimed == [] and SCHEMA_VERSION == 2
    store.close()
