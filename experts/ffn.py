"""The built-in tensor expert: hivemind's `ffn` block, for side-by-side comparisons.

hivemind (moe/server/layers/common.py) computes LayerNorm(x + Linear2(gelu_fast(Linear1(x))))
with Linear1: D -> 4D, Linear2: 4D -> D and eps 1e-12. The same layers here, with torch's
default Linear initialisation (uniform in +-1/sqrt(fan_in)), give the same function for
the same weights.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from experts.format import ExpertFile, compute_id
from experts.jsonfields import canonical_json
from experts.layers import Activation, Dense, Layer, LayerNorm, Residual
from experts.manifest import Limits, Manifest, count_parameters
from experts.runtime import TensorExpert, from_file


def ffn_layers(dim: int) -> tuple[Layer, ...]:
    """Residual(Linear(D,4D), gelu, Linear(4D,D)) then LayerNorm(D, eps=1e-12)."""
    body = (Dense("ffn", dim, 4 * dim), Activation("gelu"), Dense("ffn_output", 4 * dim, dim))
    return (Residual(body), LayerNorm("layer_norm", dim, 1e-12))


def ffn_manifest(dim: int) -> Manifest:
    layers = ffn_layers(dim)
    return Manifest(
        name=f"ffn-{dim}",
        version="1.0.0",
        domain="tensor",
        kind="tensor",
        layers=layers,
        input_dim=dim,
        output_dim=dim,
        tokenizer=None,
        parameters=count_parameters(layers),
        description="hivemind's ffn expert block, built in for comparisons",
        limits=Limits(max_batch=4096),
    )


def ffn_weights(dim: int, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    """Weights drawn as torch.nn.Linear draws them; the norm starts as identity."""
    rng = np.random.default_rng(seed)

    def uniform(fan_in: int, shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    return {
        "ffn.w": uniform(dim, (dim, 4 * dim)),
        "ffn.b": uniform(dim, (4 * dim,)),
        "ffn_output.w": uniform(4 * dim, (4 * dim, dim)),
        "ffn_output.b": uniform(4 * dim, (dim,)),
        "layer_norm.g": np.ones(dim, dtype=np.float32),
        "layer_norm.b": np.zeros(dim, dtype=np.float32),
    }


def ffn_file(dim: int, seed: int = 0) -> ExpertFile:
    """The ffn expert as a file-shaped value (save it with experts.format.save)."""
    manifest = ffn_manifest(dim)
    arrays = ffn_weights(dim, seed)
    return ExpertFile(manifest, compute_id(canonical_json(manifest.to_json()), arrays), arrays)


def build_ffn(dim: int, seed: int = 0) -> TensorExpert:
    """A ready-to-run ffn expert of width `dim` (the bench and tests use 64)."""
    expert = from_file(ffn_file(dim, seed))
    assert isinstance(expert, TensorExpert)
    return expert
