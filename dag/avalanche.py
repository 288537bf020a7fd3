"""The Avalanche DAG protocol of Rocket et al. ("Scalable and Probabilistic Leaderless BFT
Consensus through Metastability", fig. 4-5) as a sans-IO state machine over vertex ids.

It knows nothing of bytes, signatures or sockets: a vertex is an id, its parent ids and the
conflict keys of its transactions. The unit of voting is the vertex (its transactions are
accepted or rejected together), so the paper's per-transaction rules read per vertex:

- conflict set P_k of a key k: the processing vertices holding a transaction with key k, with
  `pref`, `last` and `cnt`. The same transaction in two vertices is two members of one set:
  only one instance can win, which is harmless since both carry the same effect.
- chit c_V: 1 once a poll of V got `threshold(k_eff)` yes votes, else 0 forever.
- confidence d(V): the sum of chits over V's progeny, V included; kept as a counter that each
  chit adds to along the processing ancestry (accepted ancestors are skipped: their sets are
  decided), so one poll result costs O(undecided ancestry), not O(DAG).
- preferred: V is `pref` of all its sets; strongly preferred: V and all its processing
  ancestors are preferred. `vote_for` answers remote queries with it.
- accepted: all parents accepted, and for every key either the safe early commit
  (|P_k| = 1 and d(V) > beta1) or the counter (pref = last = V and cnt > beta2). A vertex
  with no transactions needs d(V) > beta1. Accepting V rejects every other member of its
  sets, and rejection runs down to all descendants. The accepted set is therefore always
  closed under ancestors, and accepted vertices are dropped from memory: a parent id that
  is not held here is taken as accepted (the caller checks presence before `add`).

Peers are sampled without replacement with probability proportional to genesis stake
(Efraimidis-Spirakis), excluding ourselves; k_eff = min(k, number of staked peers). Alpha is
count-weighted over the sample: a poll succeeds with at least `Params.threshold(k_eff)` yes
votes. Stake enters through who is asked, as in the paper; a timeout or an error is a no.
With no staked peer at all (a one-validator chain) every poll succeeds at once.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dag.params import Params

ConflictKey = tuple[bytes, int]


@dataclass(frozen=True, slots=True)
class PollRequest:
    """Ask each of `peers` whether it strongly prefers `vertex_id`; answer to `poll_id`."""

    poll_id: int
    vertex_id: bytes
    peers: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class VertexAccepted:
    vertex_id: bytes


@dataclass(frozen=True, slots=True)
class VertexRejected:
    vertex_id: bytes


VertexDecision = VertexAccepted | VertexRejected


class _Vertex:
    __slots__ = ("children", "conf", "id", "keys", "parents", "seq")

    def __init__(
        self, seq: int, vertex_id: bytes, parents: tuple[bytes, ...], keys: tuple[ConflictKey, ...]
    ) -> None:
        self.seq = seq  # insertion order, which is a topological order
        self.id = vertex_id
        self.parents = parents
        self.keys = keys
        self.children: list[bytes] = []
        self.conf = 0


class _ConflictSet:
    __slots__ = ("cnt", "last", "members", "pref")

    def __init__(self, first: bytes) -> None:
        self.members = {first}
        self.pref = first
        self.last: bytes | None = None
        self.cnt = 0


class _Poll:
    __slots__ = ("deadline", "pending", "vertex_id", "yes")

    def __init__(self, vertex_id: bytes, peers: tuple[bytes, ...], deadline: float) -> None:
        self.vertex_id = vertex_id
        self.pending = set(peers)
        self.yes = 0
        self.deadline = deadline


class Avalanche:
    """Voting state of one node. Not thread-safe; drive it from one task."""

    def __init__(
        self,
        params: Params,
        validators: Mapping[bytes, int],
        self_id: bytes,
        rng: random.Random,
        accepted_tips: Iterable[bytes] = (),
    ) -> None:
        """`validators` maps account id to stake; `accepted_tips` seeds parent choice."""
        self.params = params
        self._rng = rng
        self._peers = sorted((a, s) for a, s in validators.items() if s > 0 and a != self_id)
        self._k = min(params.k, len(self._peers))
        self._threshold = params.threshold(self._k) if self._k else 0
        self._vertices: dict[bytes, _Vertex] = {}  # processing only, in insertion order
        self._sets: dict[ConflictKey, _ConflictSet] = {}
        # Keys whose set has more than one member. A set of one prefers its one member, so
        # while this is empty every held vertex is preferred (the common case: no double
        # spend in flight), and answering a query walks nothing.
        self._contested: set[ConflictKey] = set()
        self._rejected: set[bytes] = set()
        self._unpolled: deque[bytes] = deque()
        self._polls: dict[int, _Poll] = {}
        self._next_poll = 0
        self._next_seq = 0
        self._tips: dict[bytes, None] = dict.fromkeys(accepted_tips)
        self._decisions: list[VertexDecision] = []

    # -- adding vertices ------------------------------------------------------------------

    def add(self, vertex_id: bytes, parents: Sequence[bytes], keys: Sequence[ConflictKey]) -> None:
        """Add a processing vertex. Each parent must be held here or already accepted.

        A vertex on top of a rejected one is rejected at once (a `VertexRejected` decision).
        """
        if vertex_id in self._vertices or vertex_id in self._rejected:
            return
        v = _Vertex(self._next_seq, vertex_id, tuple(parents), tuple(keys))
        self._next_seq += 1
        self._vertices[vertex_id] = v
        for parent in v.parents:
            held = self._vertices.get(parent)
            if held is not None:
                held.children.append(vertex_id)
        for key in v.keys:
            cs = self._sets.get(key)
            if cs is None:
                self._sets[key] = _ConflictSet(vertex_id)
            else:
                cs.members.add(vertex_id)
                if len(cs.members) > 1:
                    self._contested.add(key)
        if any(p in self._rejected for p in v.parents):
            self._reject(vertex_id)
        else:
            self._unpolled.append(vertex_id)

    def note_rejected(self, vertex_id: bytes) -> None:
        """Remember that a vertex no longer held here was rejected (after a restart)."""
        if vertex_id not in self._vertices:
            self._rejected.add(vertex_id)

    def is_processing(self, vertex_id: bytes) -> bool:
        return vertex_id in self._vertices

    def is_rejected(self, vertex_id: bytes) -> bool:
        return vertex_id in self._rejected

    # -- polls ----------------------------------------------------------------------------

    def polls_to_send(self, now: float) -> list[PollRequest]:
        """Expire overdue polls, then start new ones up to `concurrent_polls`.

        `now` is monotonic seconds (the driver's `trio.current_time()`).
        """
        self.expire_polls(now)
        requests = []
        while self._unpolled and len(self._polls) < self.params.concurrent_polls:
            vertex_id = self._unpolled.popleft()
            if vertex_id not in self._vertices:
                continue
            if not self._k:
                self._record_chit(vertex_id)
                continue
            peers = self._sample()
            poll_id = self._next_poll
            self._next_poll += 1
            self._polls[poll_id] = _Poll(vertex_id, peers, now + self.params.query_timeout_s)
            requests.append(PollRequest(poll_id, vertex_id, peers))
        return requests

    def on_vote(self, poll_id: int, peer: bytes, yes: bool) -> None:
        """Record one peer's answer; unknown polls, unasked peers and repeats are ignored."""
        poll = self._polls.get(poll_id)
        if poll is None or peer not in poll.pending:
            return
        poll.pending.discard(peer)
        poll.yes += bool(yes)
        if poll.yes >= self._threshold:
            self._finish(poll_id, success=True)
        elif poll.yes + len(poll.pending) < self._threshold:
            self._finish(poll_id, success=False)

    def on_poll_timeout(self, poll_id: int) -> None:
        """Close a poll: every peer that has not answered counts as a no."""
        poll = self._polls.get(poll_id)
        if poll is not None:
            self._finish(poll_id, success=poll.yes >= self._threshold)

    def expire_polls(self, now: float) -> None:
        for poll_id in [p for p, poll in self._polls.items() if poll.deadline <= now]:
            self.on_poll_timeout(poll_id)

    @property
    def outstanding_polls(self) -> int:
        return len(self._polls)

    def _sample(self) -> tuple[bytes, ...]:
        # Efraimidis-Spirakis: the k largest log(u)/w give a stake-weighted sample without
        # replacement; the log form keeps precision for stakes up to 10**15.
        keyed = ((math.log(1.0 - self._rng.random()) / stake, peer) for peer, stake in self._peers)
        return tuple(peer for _, peer in heapq.nlargest(self._k, keyed))

    def _finish(self, poll_id: int, *, success: bool) -> None:
        poll = self._polls.pop(poll_id)
        if success and poll.vertex_id in self._vertices:
            self._record_chit(poll.vertex_id)

    # -- chits, confidence, acceptance ----------------------------------------------------

    def _record_chit(self, vertex_id: bytes) -> None:
        touched = self._processing_ancestry(vertex_id)
        for v in touched:
            v.conf += 1
            for key in v.keys:
                cs = self._sets[key]
                if cs.pref != v.id and v.conf > self._vertices[cs.pref].conf:
                    cs.pref = v.id
                if cs.last != v.id:
                    cs.last, cs.cnt = v.id, 1
                else:
                    cs.cnt += 1
        for v in sorted(touched, key=lambda t: t.seq):
            self._try_accept(v.id)

    def _processing_ancestry(self, vertex_id: bytes) -> list[_Vertex]:
        seen = {vertex_id}
        stack = [self._vertices[vertex_id]]
        found = []
        while stack:
            v = stack.pop()
            found.append(v)
            for parent in v.parents:
                held = self._vertices.get(parent)
                if held is not None and parent not in seen:
                    seen.add(parent)
                    stack.append(held)
        return found

    def _is_acceptable(self, v: _Vertex) -> bool:
        if any(p in self._vertices or p in self._rejected for p in v.parents):
            return False
        if not v.keys:
            return v.conf > self.params.beta1
        for key in v.keys:
            cs = self._sets[key]
            early = len(cs.members) == 1 and v.conf > self.params.beta1
            counted = cs.pref == cs.last == v.id and cs.cnt > self.params.beta2
            if not (early or counted):
                return False
        return True

    def _try_accept(self, vertex_id: bytes) -> None:
        stack = [vertex_id]
        while stack:
            v = self._vertices.get(stack.pop())
            if v is None or not self._is_acceptable(v):
                continue
            del self._vertices[v.id]
            self._decisions.append(VertexAccepted(v.id))
            for parent in v.parents:
                self._tips.pop(parent, None)
            self._tips[v.id] = None
            for key in v.keys:
                losers = self._sets[key].members - {v.id}
                del self._sets[key]
                self._contested.discard(key)
                for loser in losers:
                    self._reject(loser)
            stack.extend(v.children)

    def _reject(self, vertex_id: bytes) -> None:
        stack = [vertex_id]
        while stack:
            v = self._vertices.pop(stack.pop(), None)
            if v is None:
                continue
            self._rejected.add(v.id)
            self._decisions.append(VertexRejected(v.id))
            for key in v.keys:
                cs = self._sets.get(key)
                if cs is not None:
                    self._leave(key, cs, v.id)
            stack.extend(v.children)

    def _leave(self, key: ConflictKey, cs: _ConflictSet, vertex_id: bytes) -> None:
        cs.members.discard(vertex_id)
        if len(cs.members) <= 1:
            self._contested.discard(key)
        if not cs.members:
            del self._sets[key]
            return
        if cs.last == vertex_id:
            cs.last, cs.cnt = None, 0
        if cs.pref == vertex_id:
            # The next preference is the most confident member; ties go to the smallest id
            # so that the choice does not depend on set iteration order.
            cs.pref = max(cs.members, key=lambda m: (self._vertices[m].conf, _neg(m)))

    def drain_decisions(self) -> list[VertexDecision]:
        """Accepted and rejected vertices since the last call, in the order they happened.

        Accepted ones come parents first, so they can be applied in this order.
        """
        decisions, self._decisions = self._decisions, []
        return decisions

    # -- answers and parents --------------------------------------------------------------

    def is_strongly_preferred(self, vertex_id: bytes) -> bool:
        """True if `vertex_id` is processing and it and its processing ancestors are preferred.

        An accepted vertex is not held here; the caller answers yes for it.
        """
        if vertex_id not in self._vertices:
            return False
        if not self._contested:
            return True
        return all(self._is_preferred(v) for v in self._processing_ancestry(vertex_id))

    def _is_preferred(self, v: _Vertex) -> bool:
        if not self._contested:
            return True
        return all(self._sets[key].pref == v.id for key in v.keys)

    def choose_parents(self, limit: int = 4) -> list[bytes]:
        """Parents for a new vertex: the frontier of the eligible processing vertices.

        Eligible are processing vertices that are strongly preferred and either uncontested
        or already confident (d > 0), as the paper's adaptive parent selection: a fresh
        double spend then does not drag the honest vertices built after it into its fate.
        The tips of the accepted set fill the rest.
        """
        eligible = self._eligible()
        frontier = [
            v
            for v in self._vertices.values()
            if eligible[v.id] and not any(eligible.get(c, False) for c in v.children)
        ]
        frontier.sort(key=lambda v: -v.conf)
        chosen = [v.id for v in frontier[:limit]]
        for tip in reversed(self._tips):
            if len(chosen) >= limit:
                break
            chosen.append(tip)
        return chosen

    def _eligible(self) -> dict[bytes, bool]:
        eligible: dict[bytes, bool] = {}
        for v in self._vertices.values():  # insertion order: parents before children
            parents_ok = all(eligible.get(p, p not in self._rejected) for p in v.parents)
            eligible[v.id] = (
                parents_ok
                and self._is_preferred(v)
                and (
                    v.conf > 0
                    or not self._contested
                    or all(len(self._sets[k].members) == 1 for k in v.keys)
                )
            )
        return eligible

    def needs_vertex(self) -> bool:
        """True when eligible transactions (see `choose_parents`) wait in processing vertices
        but nothing is left to poll: the driver should then issue a vertex, empty if it has
        no transactions, so that chits keep flowing to them. Vertices without transactions
        do not ask for more, so an idle DAG goes quiet; nor do double spends that no poll
        has favoured, which the paper leaves without a liveness guarantee."""
        if self._unpolled or self._polls:
            return False
        eligible = self._eligible()
        return any(v.keys and eligible[v.id] for v in self._vertices.values())

    def frontier(self) -> list[bytes]:
        """The newest vertices we hold: processing ones with no processing child, and the
        accepted tips. A peer that syncs asks for these and pulls their ancestry."""
        held = [
            v.id
            for v in self._vertices.values()
            if not any(c in self._vertices for c in v.children)
        ]
        return held + list(self._tips)

    def stats(self) -> dict[str, int]:
        """Counts for `dag status`: processing vertices, open conflicts, polls in flight."""
        return {
            "processing": len(self._vertices),
            "conflicts": len(self._contested),
            "polls": len(self._polls),
            "k": self._k,
            "threshold": self._threshold,
        }


def _neg(data: bytes) -> bytes:
    return bytes(255 - b for b in data)
