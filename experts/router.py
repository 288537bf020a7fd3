"""The router: a learned gate from text to the six domains, and the consensus rule.

The gate is a tensor expert in the usual file format (so it has an id and is verified on
load): hashed character n-grams (experts.features) in, a softmax over `DOMAINS` out, the
i-th output being `DOMAINS[i]`. When the best domain is at least `threshold` sure, it
alone answers; otherwise the top three are asked and `combine` picks the answer.

`combine` is a pure function of the answers, so the network layer applies the same rule
to answers that came back from remote peers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from experts.errors import ExpertFormatError, ExpertInputError
from experts.features import featurize
from experts.manifest import DOMAINS
from experts.runtime import TensorExpert, load_expert

DEFAULT_THRESHOLD = 0.7
CONSENSUS_K = 3


@dataclass(frozen=True)
class Route:
    """A domain and the gate's probability for it."""

    domain: str
    probability: float


@dataclass(frozen=True)
class Decision:
    """Which domains to ask: one when the gate is sure, the top three when it is not."""

    routes: tuple[Route, ...]
    consensus: bool


@dataclass(frozen=True, eq=False)
class Router:
    """Routes text with a loaded gate expert."""

    gate: TensorExpert

    @property
    def expert_id(self) -> str:
        return self.gate.expert_id

    def probabilities(self, text: str) -> tuple[Route, ...]:
        """Every domain with its probability, most likely first (ties by domain order)."""
        probs = self.gate.forward(featurize([text], self.gate.manifest.input_dim))[0]
        ranked = sorted(range(len(DOMAINS)), key=lambda i: (-float(probs[i]), i))
        return tuple(Route(DOMAINS[i], float(probs[i])) for i in ranked)

    def top_k(self, text: str, k: int = 1) -> tuple[Route, ...]:
        """The `k` most likely domains."""
        if not 1 <= k <= len(DOMAINS):
            raise ExpertInputError(f"k must be 1 to {len(DOMAINS)}", limit=len(DOMAINS), got=k)
        return self.probabilities(text)[:k]

    def decide(self, text: str, threshold: float = DEFAULT_THRESHOLD) -> Decision:
        """The best domain if its probability reaches `threshold`, else consensus of 3."""
        routes = self.probabilities(text)
        if routes[0].probability >= threshold:
            return Decision(routes[:1], consensus=False)
        return Decision(routes[:CONSENSUS_K], consensus=True)


def router_from_expert(gate: TensorExpert) -> Router:
    """Check that a tensor expert is shaped like a gate over DOMAINS, and wrap it."""
    m = gate.manifest
    if m.domain != "router" or m.output_dim != len(DOMAINS):
        raise ExpertFormatError(
            f"not a router: domain {m.domain!r}, {m.output_dim} outputs", expert_id=gate.expert_id
        )
    return Router(gate)


def load_router(path: str | os.PathLike[str]) -> Router:
    """Load and verify a router file."""
    gate = load_expert(path)
    if not isinstance(gate, TensorExpert):
        raise ExpertFormatError("a router is a tensor expert", expert_id=gate.expert_id)
    return router_from_expert(gate)


@dataclass(frozen=True)
class Answer:
    """One expert's answer to a consensus question; `weight` is its router probability."""

    expert_id: str
    domain: str
    weight: float
    text: str
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class Consensus:
    """The chosen answer, how much of the vote agreed with it, and the tokens all cost."""

    text: str
    domain: str
    expert_id: str
    agreement: float  # share of the total weight behind `text`, 0 to 1
    supporters: tuple[str, ...]  # expert ids whose answer matched `text`
    tokens_in: int
    tokens_out: int


def normalize(text: str) -> str:
    """What counts as the same answer: equal after collapsing whitespace."""
    return " ".join(text.split())


def combine(answers: Sequence[Answer]) -> Consensus:
    """Weighted vote: answers equal after `normalize` pool their weights; the heaviest
    group wins (ties: the group holding the single heaviest answer, then the smallest
    expert id, so every peer picks the same). Its text is that of its heaviest member.
    Tokens are summed over all answers: every expert asked did the work."""
    if not answers:
        raise ExpertInputError("consensus needs at least one answer", limit=1, got=0)
    groups: dict[str, list[Answer]] = {}
    for ans in answers:
        groups.setdefault(normalize(ans.text), []).append(ans)

    def best(members: list[Answer]) -> Answer:
        return min(members, key=lambda a: (-a.weight, a.expert_id))

    def rank(members: list[Answer]) -> tuple[float, float, str]:
        top = best(members)
        return (-sum(a.weight for a in members), -top.weight, top.expert_id)

    winner = min(groups.values(), key=rank)
    lead = best(winner)
    total = sum(a.weight for a in answers)
    support = sum(a.weight for a in winner)
    return Consensus(
        text=lead.text,
        domain=lead.domain,
        expert_id=lead.expert_id,
        agreement=support / total if total > 0 else len(winner) / len(answers),
        supporters=tuple(sorted(a.expert_id for a in winner)),
        tokens_in=sum(a.tokens_in for a in answers),
        tokens_out=sum(a.tokens_out for a in answers),
    )
