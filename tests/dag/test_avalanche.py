import random
from collections import Counter

import pytest

from dag.avalanche import Avalanche, VertexAccepted, VertexRejected
from dag.params import Params

ME, PEERS = b"me", [b"p%d" % i for i in range(4)]
ROOT = b"root"
PARAMS = Params(k=4, alpha=3, beta1=2, beta2=4, concurrent_polls=1, query_timeout_s=1.0)
KEY = (b"alice", 0)


def _node(params: Params = PARAMS) -> Avalanche:
    stakes = {ME: 10, **{p: 10 for p in PEERS}}
    return Avalanche(params, stakes, ME, random.Random(0), [ROOT])


def _poll(node: Avalanche, yes: int, now: float = 0.0) -> bytes:
    """Run the next poll with `yes` peers answering yes and the rest no; return its vertex."""
    (req,) = node.polls_to_send(now)
    for i, peer in enumerate(req.peers):
        node.on_vote(req.poll_id, peer, i < yes)
    return req.vertex_id


def test_params_presets_and_threshold() -> None:
    for name in ("default", "fast", "high_security", "high-security"):
        params = Params.preset(name)
        assert params.k / 2 < params.alpha <= params.k
    assert Params.default().threshold(20) == 15
    assert Params.default().threshold(4) == 3
    assert Params.default().threshold(1) == 1
    with pytest.raises(ValueError, match="alpha"):
        Params(k=4, alpha=2, beta1=1, beta2=1, concurrent_polls=1, query_timeout_s=1)
    with pytest.raises(ValueError, match="unknown preset"):
        Params.preset("turbo")


def test_sample_excludes_self_and_unstaked_and_follows_stake() -> None:
    stakes = {ME: 100, b"none": 0, b"big": 900, b"small": 100, b"mid": 300}
    params = Params(k=2, alpha=2, beta1=1, beta2=1, concurrent_polls=1, query_timeout_s=1)
    node = Avalanche(params, stakes, ME, random.Random(4), [ROOT])
    seen: Counter[bytes] = Counter()
    for i in range(300):
        node.add(bytes([i % 256, i // 256]), [ROOT], [])
        (req,) = node.polls_to_send(float(i))
        assert len(set(req.peers)) == 2
        seen.update(req.peers)
        node.on_poll_timeout(req.poll_id)
    assert set(seen) == {b"big", b"small", b"mid"}
    assert seen[b"big"] > seen[b"mid"] > seen[b"small"]


def test_k_is_capped_by_the_number_of_other_validators() -> None:
    node = _node(Params.default())
    node.add(b"v", [ROOT], [])
    (req,) = node.polls_to_send(0.0)
    assert sorted(req.peers) == sorted(PEERS)
    assert node.stats()["threshold"] == 3


def test_uncontested_vertex_is_accepted_after_beta1_chits_and_not_before() -> None:
    node = _node()
    node.add(b"a", [ROOT], [KEY])
    node.add(b"b", [b"a"], [])
    node.add(b"c", [b"b"], [])
    assert _poll(node, 3) == b"a"  # d(a) = 1
    assert _poll(node, 3) == b"b"  # d(a) = 2, d(b) = 1
    assert node.drain_decisions() == []
    assert _poll(node, 4) == b"c"  # d(a) = 3 > beta1
    assert node.drain_decisions() == [VertexAccepted(b"a")]
    assert node.is_processing(b"b") and not node.is_processing(b"a")


def test_failed_polls_give_no_chit() -> None:
    node = _node()
    node.add(b"a", [ROOT], [])
    (req,) = node.polls_to_send(0.0)
    node.on_vote(req.poll_id, PEERS[0], True)
    node.on_vote(req.poll_id, PEERS[0], True)  # a repeat does not count twice
    node.on_vote(req.poll_id, b"stranger", True)  # nor does a peer that was not asked
    assert node.outstanding_polls == 1
    node.polls_to_send(1.0)  # the deadline passes: silence is no
    assert node.outstanding_polls == 0
    for i in range(3):
        node.add(bytes([i]), [b"a"], [])
        _poll(node, 2, now=2.0 + i)
    assert node.drain_decisions() == []
    assert node.stats()["processing"] == 4


def test_conflict_needs_beta2_and_rejects_the_loser_and_its_progeny() -> None:
    node = _node()
    node.add(b"x", [ROOT], [KEY])
    node.add(b"y", [ROOT], [KEY])
    node.add(b"x-child", [b"x"], [])
    assert node.is_strongly_preferred(b"x") and not node.is_strongly_preferred(b"y")
    assert node.stats()["conflicts"] == 1
    assert _poll(node, 0) == b"x"
    assert _poll(node, 4) == b"y"  # d(y) = 1 > d(x) = 0: the preference flips
    assert not node.is_strongly_preferred(b"x") and node.is_strongly_preferred(b"y")
    assert _poll(node, 2) == b"x-child"
    tip = b"y"
    for i in range(3):  # successes 2, 3, 4 for y: d(y) > beta1, but y is contested
        node.add(b"y%d" % i, [tip], [])
        tip = b"y%d" % i
        _poll(node, 4)
    assert node.drain_decisions() == []
    node.add(b"y-last", [tip], [])
    _poll(node, 4)  # the fifth consecutive success: cnt > beta2
    decisions = node.drain_decisions()
    assert decisions[0] == VertexAccepted(b"y")
    rejected = {d.vertex_id for d in decisions if isinstance(d, VertexRejected)}
    assert rejected == {b"x", b"x-child"}
    assert node.is_rejected(b"x-child") and not node.is_strongly_preferred(b"x")
    assert VertexAccepted(b"y0") in decisions  # its progeny follows, d > beta1
    assert node.stats()["conflicts"] == 0


def test_parents_avoid_a_fresh_conflict_and_fall_back_to_accepted_tips() -> None:
    node = _node()
    assert node.choose_parents() == [ROOT]
    node.add(b"x", [ROOT], [KEY])
    node.add(b"plain", [ROOT], [(b"bob", 0)])
    node.add(b"y", [ROOT], [KEY])
    assert node.choose_parents() == [b"plain", ROOT]
    node.add(b"on-plain", [b"plain"], [])
    assert node.choose_parents(1) == [b"on-plain"]


def test_vertex_on_a_rejected_parent_is_rejected_at_once() -> None:
    node = _node()
    node.note_rejected(b"lost")
    node.add(b"child", [b"lost"], [])
    assert node.drain_decisions() == [VertexRejected(b"child")]
    assert node.polls_to_send(0.0) == []


def test_a_lone_validator_decides_alone_and_idle_dag_goes_quiet() -> None:
    node = Avalanche(PARAMS, {ME: 1, b"idle": 0}, ME, random.Random(0), [ROOT])
    node.add(b"a", [ROOT], [KEY])
    assert node.polls_to_send(0.0) == []
    assert node.needs_vertex()
    for i in range(3):
        node.add(bytes([i]), [node.choose_parents()[0]], [])
        node.polls_to_send(0.0)
    assert VertexAccepted(b"a") in node.drain_decisions()
    assert not node.needs_vertex()


def _strongly_preferred_by_definition(node: Avalanche, vertex_id: bytes) -> bool:
    """V and every processing ancestor are the preference of each of their sets."""
    stack, seen = [vertex_id], set()
    while stack:
        v = node._vertices.get(stack.pop())
        if v is None or v.id in seen:
            continue
        seen.add(v.id)
        if any(node._sets[key].pref != v.id for key in v.keys):
            return False
        stack.extend(v.parents)
    return vertex_id in node._vertices


def test_preference_answers_match_the_definition_as_conflicts_come_and_go() -> None:
    rng = random.Random(7)
    for _ in range(30):
        node = _node(Params(k=4, alpha=3, beta1=2, beta2=3, concurrent_polls=2, query_timeout_s=1))
        held: list[bytes] = [ROOT]
        for step in range(60):
            vertex_id = b"v%d" % step
            # distinct keys, as a vertex holds one transaction per (account, nonce)
            keys = list({(b"a%d" % rng.randrange(4), rng.randrange(3)) for _ in range(2)})
            node.add(vertex_id, rng.sample(held, min(len(held), rng.randint(1, 2))), keys)
            held.append(vertex_id)
            for req in node.polls_to_send(float(step)):
                for peer in req.peers:
                    node.on_vote(req.poll_id, peer, rng.random() < 0.8)
            contested = sum(1 for cs in node._sets.values() if len(cs.members) > 1)
            assert node.stats()["conflicts"] == contested
            for v in held:
                assert node.is_strongly_preferred(v) == _strongly_preferred_by_definition(node, v)
