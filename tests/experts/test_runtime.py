"""The numpy runtime: the ffn expert against hivemind's formula, batching, generation,
token counting, and refusal of bad input before anything runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from experts import ExpertInputError, GeneratorExpert, build_ffn, count_tokens, load_expert
from experts.ffn import ffn_weights
from experts.network import gelu, layer_norm, softmax


def _reference_ffn(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """hivemind's FeedforwardBlock, written out in float64 with the math module's tanh."""
    x = x.astype(np.float64)
    h = x @ w["ffn.w"].astype(np.float64) + w["ffn.b"]
    h = np.vectorize(
        lambda v: 0.5 * v * (1.0 + math.tanh(v * 0.7978845608 * (1.0 + 0.044715 * v * v)))
    )(h)
    y = x + h @ w["ffn_output.w"].astype(np.float64) + w["ffn_output.b"]
    mu = y.mean(-1, keepdims=True)
    var = ((y - mu) ** 2).mean(-1, keepdims=True)
    return (y - mu) / np.sqrt(var + 1e-12) * w["layer_norm.g"] + w["layer_norm.b"]  # type: ignore[no-any-return]


def test_ffn_matches_hivemind_formula() -> None:
    expert = build_ffn(64, seed=3)
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    np.testing.assert_allclose(expert.forward(x), _reference_ffn(x, ffn_weights(64, 3)), atol=2e-5)


def test_ffn_matches_torch_when_torch_is_installed() -> None:
    torch = pytest.importorskip("torch")
    w = ffn_weights(16, seed=1)
    lin1, lin2 = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
    norm = torch.nn.LayerNorm(16, eps=1e-12)
    with torch.no_grad():
        lin1.weight.copy_(torch.from_numpy(w["ffn.w"].T.copy()))
        lin1.bias.copy_(torch.from_numpy(w["ffn.b"]))
        lin2.weight.copy_(torch.from_numpy(w["ffn_output.w"].T.copy()))
        lin2.bias.copy_(torch.from_numpy(w["ffn_output.b"]))
        x = torch.randn(4, 16)
        gelu_fast = torch.nn.GELU(approximate="tanh")
        want = norm(x + lin2(gelu_fast(lin1(x)))).numpy()
    np.testing.assert_allclose(build_ffn(16, seed=1).forward(x.numpy()), want, atol=1e-5)


def test_batched_forward_equals_row_by_row() -> None:
    expert = build_ffn(64)
    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    rows = np.concatenate([expert.forward(row) for row in x])
    np.testing.assert_allclose(expert.forward(x), rows, rtol=1e-5, atol=1e-5)


def test_activations_match_their_definitions() -> None:
    x = np.linspace(-6, 6, 101, dtype=np.float32)[None, :]
    assert np.allclose(softmax(x).sum(), 1.0)
    assert np.allclose(
        gelu(x), 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))), atol=1e-6
    )
    normed = layer_norm(x, np.ones(101, np.float32), np.zeros(101, np.float32), 1e-5)
    assert abs(float(normed.mean())) < 1e-5 and abs(float(normed.std()) - 1) < 1e-3


@pytest.mark.parametrize("shape", [(63,), (2, 65), (1, 2, 64)])
def test_tensor_input_of_wrong_size_is_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ExpertInputError) as info:
        build_ffn(64).forward(np.zeros(shape, np.float32))
    assert info.value.limit == 64


def test_tensor_batch_over_limit_and_nan_are_refused() -> None:
    expert = build_ffn(8)
    limit = expert.manifest.limits.max_batch
    with pytest.raises(ExpertInputError) as info:
        expert.forward(np.zeros((limit + 1, 8), np.float32))
    assert (info.value.limit, info.value.got) == (limit, limit + 1)
    with pytest.raises(ExpertInputError, match="NaN"):
        expert.forward(np.full((1, 8), np.nan, np.float32))


def _generator(path: Path) -> GeneratorExpert:
    expert = load_expert(path)
    assert isinstance(expert, GeneratorExpert)
    return expert


def test_same_seed_same_text_and_seeds_differ(tiny_generator: Path) -> None:
    g = _generator(tiny_generator)
    runs = [g.generate("hello", max_tokens=30, temperature=1.0, seed=s).text for s in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_top_k_one_is_greedy(tiny_generator: Path) -> None:
    g = _generator(tiny_generator)
    greedy = g.generate("abc", max_tokens=20)
    assert g.generate("abc", max_tokens=20, temperature=2.0, top_k=1, seed=5).text == greedy.text


def test_tokens_are_counted_as_billed(tiny_generator: Path) -> None:
    g = _generator(tiny_generator)
    prompt = "héllo wörld"  # non-ASCII: 2 bytes a letter
    out = g.generate(prompt, max_tokens=25, temperature=1.0, seed=1)
    assert out.tokens_in == count_tokens(prompt) == len(prompt) + 2
    assert out.tokens_out == count_tokens(out.text) <= 25
    assert all(c in "\t\n" or " " <= c <= "~" for c in out.text)
    assert out.stopped == (out.tokens_out < 25)


def test_batch_generation_equals_single_generation(tiny_generator: Path) -> None:
    g = _generator(tiny_generator)
    prompts = ["a", "bcd", ""]
    batch = g.generate_batch(prompts, max_tokens=12)
    assert [b.text for b in batch] == [g.generate(p, max_tokens=12).text for p in prompts]


@pytest.mark.parametrize(
    ("kwargs", "limit"),
    [
        ({"prompt": "x" * 65, "max_tokens": 8}, 64),
        ({"prompt": "x", "max_tokens": 33}, 32),
        ({"prompt": "x", "max_tokens": 8, "top_k": 999}, 257),
        ({"prompt": "x", "max_tokens": 8, "temperature": float("nan")}, None),
        ({"prompt": "x", "max_tokens": 8, "seed": -1}, None),
    ],
)
def test_generation_requests_over_limits_are_refused(
    tiny_generator: Path, kwargs: dict[str, object], limit: int | None
) -> None:
    g = _generator(tiny_generator)
    prompt = str(kwargs.pop("prompt"))
    with pytest.raises(ExpertInputError) as info:
        g.generate(prompt, **kwargs)  # type: ignore[arg-type]
    assert info.value.limit == limit
    assert info.value.expert_id == g.expert_id


def test_generator_forward_refuses_bad_windows(tiny_generator: Path) -> None:
    g = _generator(tiny_generator)
    with pytest.raises(ExpertInputError):
        g.forward(np.zeros((1, 7), np.int64))
    with pytest.raises(ExpertInputError, match="vocabulary"):
        g.forward(np.full((1, 8), 999, np.int64))
    with pytest.raises(ExpertInputError):
        g.generate_batch(["a"] * 9)
