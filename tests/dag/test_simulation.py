"""Many engines in one process, talking through `tests.dag.sim.Network`."""

from pathlib import Path

import pytest

from dag.channels import ChannelTerms, Iou, channel_id, close_payload, open_payload, settle_payload
from dag.crypto import SigningKey
from dag.params import Params
from dag.store import VertexStatus
from dag.vertex import Vertex
from tests.dag.helpers import GENESIS_MS, key, make_genesis, signed, transfer
from tests.dag.sim import Network, SimNode

PARAMS = Params.fast()


def _settled(net: Network) -> bool:
    return not net.in_flight and all(
        not n.mempool and not n.engine.needs_vertex() and not n.engine.avalanche.outstanding_polls
        for n in net.honest
    )


def _run_until_settled(net: Network, limit: float = 20.0) -> None:
    while net.now < limit and not _settled(net):
        net.run(0.25)
    assert _settled(net), f"not settled after {net.now:.1f} simulated seconds"


def _check_agreement(net: Network) -> None:
    """Honest nodes agree on accepted transactions, decisions and balances."""
    first = net.honest[0]
    for node in net.nodes:
        node.engine.ledger.check_conservation()
    for node in net.honest[1:]:
        assert net.accepted_txs(node) == net.accepted_txs(first)
        assert net.balances(node) == net.balances(first)
    for node in net.honest:
        for other in net.honest:
            for vid in net.accepted(node):
                assert other.engine.store.vertex_status(vid) is not VertexStatus.REJECTED


def _load(net: Network, keys: list[SigningKey], per_node: int) -> set[bytes]:
    """Each node pays the next one `per_node` times; return the transaction ids."""
    ids = set()
    for node in net.nodes:
        to = keys[(node.index + 1) % len(keys)].account_id
        for nonce in range(per_node):
            tx = transfer(node.key, net.genesis, to, 1 + nonce, nonce)
            node.engine.check_transaction(tx)
            node.mempool.append(tx)
            ids.add(tx.id)
    return ids


def test_honest_nodes_accept_the_same_set_despite_lost_messages() -> None:
    keys = [key(i) for i in range(8)]
    net = Network(make_genesis(keys), keys, PARAMS, seed=1, drop=0.1)
    sent = _load(net, keys, 5)
    _run_until_settled(net)
    _check_agreement(net)
    assert net.accepted_txs(net.nodes[0]) == sent
    # each paid 1+..+5 = 15 and received 15
    assert set(net.balances(net.nodes[0]).values()) == {1_000}


def _double_spend(
    net: Network, attacker: SigningKey, a: bytes, b: bytes, *, split: int
) -> tuple[bytes, bytes]:
    """Two transactions of one (account, nonce): the first shown to `split` nodes, the
    second to the rest at the same moment."""
    ids = []
    for to, targets in ((a, net.nodes[:split]), (b, net.nodes[split:])):
        tx = transfer(attacker, net.genesis, to, 600, 0)
        root = net.nodes[0].engine.root
        vertex = Vertex.create(
            attacker,
            chain=net.genesis.digest,
            parents=[root],
            timestamp_ms=net.now_ms(),
            txs=[tx],
        )
        net.inject(net.nodes[0], vertex, targets)
        ids.append(tx.id)
    return ids[0], ids[1]


def _attacked(net: Network, spends: tuple[bytes, bytes]) -> set[bytes]:
    won = {t for t in spends if t in net.accepted_txs(net.honest[0])}
    assert len(won) <= 1
    for node in net.honest:
        assert {t for t in spends if t in net.accepted_txs(node)} == won
    return won


@pytest.mark.parametrize(("split", "winners"), [(4, {0, 1}), (6, {1})])
def test_a_double_spend_has_at_most_one_winner_the_same_everywhere(
    split: int, winners: set[int]
) -> None:
    keys = [key(i) for i in range(8)]
    attacker = key(99)
    genesis = make_genesis([*keys, attacker], stakes=[100] * 8 + [0])
    net = Network(genesis, keys, PARAMS, seed=2, drop=0.05)
    spends = _double_spend(net, attacker, keys[1].account_id, keys[6].account_id, split=split)
    sent = _load(net, keys, 3)
    _run_until_settled(net)
    _check_agreement(net)
    assert sent <= net.accepted_txs(net.honest[0])  # honest transfers were not held up
    won = _attacked(net, spends)
    assert len(won) in winners
    if split > 4:
        assert won == {spends[0]}  # the side most nodes saw first
    spent = 600 * len(won)
    assert net.honest[0].engine.ledger.balance(attacker.account_id) == 1_000 - spent


def test_progress_and_safety_with_a_fifth_of_the_stake_voting_badly() -> None:
    keys = [key(i) for i in range(10)]
    attacker = key(99)
    # nodes 8 and 9 hold 20% of the stake: one answers at random, one inverts its answer
    genesis = make_genesis([*keys, attacker], stakes=[100] * 8 + [100, 100, 0])
    net = Network(genesis, keys, PARAMS, seed=3, drop=0.05, byzantine={8: "random", 9: "inverted"})
    spends = _double_spend(net, attacker, keys[0].account_id, keys[5].account_id, split=5)
    sent = _load(net, keys, 3)
    _run_until_settled(net, limit=30.0)
    _check_agreement(net)
    assert sent <= net.accepted_txs(net.honest[0])
    _attacked(net, spends)


def test_a_node_that_restarts_after_missing_traffic_catches_up(tmp_path: Path) -> None:
    keys = [key(i) for i in range(5)]
    paths = [str(tmp_path / f"n{i}.sqlite") for i in range(5)]
    net = Network(make_genesis(keys), keys, PARAMS, seed=4, store_paths=paths)
    _load(net, keys, 2)
    net.run(0.5)
    victim: SimNode = net.nodes[2]
    before = net.accepted(victim)
    assert before  # it had accepted something before it stopped
    victim.engine.store.close()
    victim.offline = True
    late = set()
    for node in net.nodes:
        if node is not victim:
            tx = transfer(node.key, net.genesis, victim.account, 50, 2)
            node.mempool.append(tx)
            late.add(tx.id)
    net.run(1.0)  # the others go on without it
    net.restart(victim, paths[2])
    assert net.accepted(victim) == before
    _run_until_settled(net)
    _check_agreement(net)
    assert late <= net.accepted_txs(victim)
    assert victim.engine.ledger.balance(victim.account) == 1_000 + 4 * 50 + 3 - 3


def test_a_settle_and_a_close_raced_across_the_mesh_have_one_winner_everywhere() -> None:
    keys = [key(i) for i in range(8)]
    client, provider, iou_key = key(97), key(98), key(99)
    genesis = make_genesis([*keys, client, provider], stakes=[100] * 8 + [0, 0])
    net = Network(genesis, keys, PARAMS, seed=4, drop=0.05)
    payload = open_payload(provider.account_id, 300, GENESIS_MS, iou_key.public_key)
    open_tx = signed(client, genesis, 0, "channel_open", payload)
    net.nodes[0].mempool.append(open_tx)
    _run_until_settled(net)
    terms = ChannelTerms.of_open(open_tx)
    iou = Iou.create(iou_key, channel_id(genesis.digest, terms), 120, 7)
    settle = signed(provider, genesis, 0, "channel_settle", settle_payload(terms, iou))
    close = signed(client, genesis, 1, "channel_close", close_payload(terms))
    for tx, targets in ((settle, net.nodes[:4]), (close, net.nodes[4:])):
        vertex = Vertex.create(
            keys[0],
            chain=genesis.digest,
            parents=net.nodes[0].engine.frontier()[:4],
            timestamp_ms=net.now_ms(),
            txs=[tx],
        )
        net.inject(net.nodes[0], vertex, targets)
    _run_until_settled(net)
    _check_agreement(net)
    won = _attacked(net, (settle.id, close.id))
    assert len(won) == 1
    paid = 120 if won == {settle.id} else 0
    ledger = net.honest[0].engine.ledger
    assert (ledger.balance(client.account_id), ledger.balance(provider.account_id)) == (
        1_000 - paid,
        1_000 + paid,
    )
    assert ledger.total_locked == 0
