"""The shipped zoo: every file verifies, reaches the score its manifest records (the eval
is re-run here with the recorded size and seed), int8 keeps within a point of float32 at
a quarter of the size, and the router routes held-out text."""

from __future__ import annotations

from functools import cache

import pytest

from experts import (
    DOMAINS,
    ExpertNotFound,
    Zoo,
    count_tokens,
    evaluate_expert,
    find,
    list_zoo,
    load_generator,
    local_infer,
)
from experts.runtime import GeneratorExpert
from experts.zoo import ZOO_DIR, zoo_path

PRECISIONS = ("f32", "int8")


@cache
def zoo() -> Zoo:
    return Zoo.load()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_shipped_expert_reaches_its_recorded_score(domain: str, precision: str) -> None:
    expert = load_generator(domain, precision)  # type: ignore[arg-type]
    recorded = expert.manifest.evaluation
    assert recorded is not None and recorded.metric
    again = evaluate_expert(expert, n=recorded.n, seed=recorded.seed)
    # Greedy decoding is deterministic; the slack covers BLAS rounding on other machines
    # and, for language, the stdlib docstrings of another Python patch release.
    assert again.score >= recorded.score - 1.0


@pytest.mark.parametrize("domain", DOMAINS)
def test_int8_is_within_a_point_and_at_least_3_5x_smaller(domain: str) -> None:
    f32, int8 = (load_generator(domain, p) for p in PRECISIONS)  # type: ignore[arg-type]
    assert f32.manifest.evaluation and int8.manifest.evaluation
    assert abs(f32.manifest.evaluation.score - int8.manifest.evaluation.score) <= 1.0
    assert int8.manifest.quantized and not f32.manifest.quantized
    ratio = zoo_path(domain, "f32").stat().st_size / zoo_path(domain, "int8").stat().st_size
    assert ratio >= 3.5


def test_zoo_lists_every_file_and_fits_in_10_mb() -> None:
    entries = list_zoo()
    assert {(e.manifest.domain, e.precision) for e in entries} == {
        *((d, p) for d in DOMAINS for p in PRECISIONS),
        ("router", None),
    }
    assert sum(p.stat().st_size for p in ZOO_DIR.glob("*.npz")) < 10 * 1024 * 1024


def test_find_by_domain_and_by_id_prefix() -> None:
    entry = find("coding")
    assert find(entry.expert_id[:12]).path == entry.path
    with pytest.raises(ExpertNotFound):
        find("0123456789abcdef")


def test_router_accuracy_on_held_out_texts_is_at_least_95() -> None:
    gate = zoo().router.gate
    recorded = gate.manifest.evaluation
    assert recorded is not None
    assert evaluate_expert(gate, n=recorded.n, seed=recorded.seed).score >= 95.0


def test_router_decides_alone_when_sure_and_asks_three_when_not() -> None:
    router = zoo().router
    assert not router.decide("123+456=").consensus
    assert router.decide("123+456=").routes[0].domain == "mathematics"
    unsure = router.decide("hmm", threshold=1.01)
    assert unsure.consensus and len(unsure.routes) == 3
    probs = router.probabilities("weather in Oslo")
    assert sum(r.probability for r in probs) == pytest.approx(1.0, abs=1e-5)
    assert router.top_k("weather in Oslo", 2) == probs[:2]


def test_local_infer_routes_generates_and_bills() -> None:
    result = local_infer("12+30=", max_tokens=8, zoo=zoo())
    math = zoo().experts["mathematics"]
    assert (result.domain, result.expert_id) == ("mathematics", math.expert_id)
    assert result.text == math.generate("12+30=", max_tokens=8).text
    assert result.tokens_in == count_tokens("12+30=") and result.tokens_out == len(result.text)
    assert result.consensus is None


def test_local_infer_consensus_bills_all_three_experts() -> None:
    result = local_infer("hmm", max_tokens=4, threshold=1.01, zoo=zoo())
    assert result.consensus is not None and len(result.routes) == 3
    assert result.tokens_in == 3 * count_tokens("hmm")
    assert isinstance(zoo().experts[result.domain], GeneratorExpert)
