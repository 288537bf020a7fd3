"""Answer a text with the local zoo and no network: route, generate, and if the router is
unsure, ask the top three and combine their answers (what `infer --local` does)."""

from __future__ import annotations

from dataclasses import dataclass

from experts.router import DEFAULT_THRESHOLD, Answer, Consensus, Route, combine
from experts.zoo import Zoo


@dataclass(frozen=True)
class LocalResult:
    """The answer, who gave it, and the tokens billed for it (summed over every expert
    asked: under consensus, three experts did the work)."""

    domain: str
    expert_id: str
    text: str
    tokens_in: int
    tokens_out: int
    routes: tuple[Route, ...]
    consensus: Consensus | None  # set when the router was unsure and three were asked


def local_infer(
    text: str,
    *,
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int = 0,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    zoo: Zoo | None = None,
) -> LocalResult:
    """Route `text` and generate with the chosen expert(s). Pass a loaded `zoo` to serve
    many calls; without one the shipped zoo is loaded for this call."""
    zoo = zoo or Zoo.load()
    decision = zoo.router.decide(text, threshold)
    answers = []
    for route in decision.routes:
        expert = zoo.experts[route.domain]
        gen = expert.generate(
            text, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed
        )
        answers.append(
            Answer(
                expert.expert_id,
                route.domain,
                route.probability,
                gen.text,
                gen.tokens_in,
                gen.tokens_out,
            )
        )
    result = combine(answers)
    return LocalResult(
        domain=result.domain,
        expert_id=result.expert_id,
        text=result.text,
        tokens_in=result.tokens_in,
        tokens_out=result.tokens_out,
        routes=decision.routes,
        consensus=result if decision.consensus else None,
    )
