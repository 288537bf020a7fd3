"""The shape of the zoo's generators: a byte-level context-window MLP.

The last `context` byte tokens are embedded and concatenated, then a dense layer, residual
MLP blocks and a final norm give the next-token logits. It has no attention, so a forward
pass is a few matrix products: far under a millisecond at batch 1. The training script
builds the same network in torch from this description, by the same parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

from experts.layers import Activation, Dense, Embedding, Flatten, Layer, LayerNorm, Residual
from experts.manifest import (
    ByteTokenizerSpec,
    Evaluation,
    Limits,
    Manifest,
    count_parameters,
)

NORM_EPS = 1e-5  # torch.nn.LayerNorm's default


@dataclass(frozen=True)
class GeneratorShape:
    """Sizes of a zoo generator."""

    context: int
    dim: int
    hidden: int
    blocks: int = 1


def generator_layers(shape: GeneratorShape, tok: ByteTokenizerSpec) -> tuple[Layer, ...]:
    """Embedding -> flatten -> dense+gelu -> blocks of (norm, dense, gelu) with a skip ->
    norm -> dense to logits over bytes and eos."""
    blocks = tuple(
        Residual(
            (
                LayerNorm(f"block{i}_norm", shape.hidden, NORM_EPS),
                Dense(f"block{i}", shape.hidden, shape.hidden),
                Activation("gelu"),
            )
        )
        for i in range(shape.blocks)
    )
    return (
        Embedding("embed", tok.vocab, shape.dim),
        Flatten(),
        Dense("inp", shape.context * shape.dim, shape.hidden),
        Activation("gelu"),
        *blocks,
        LayerNorm("out_norm", shape.hidden, NORM_EPS),
        Dense("out", shape.hidden, tok.eos + 1),
    )


def generator_manifest(
    domain: str,
    shape: GeneratorShape,
    *,
    evaluation: Evaluation | None = None,
    description: str = "",
    limits: Limits | None = None,
) -> Manifest:
    """The manifest of a float32 zoo generator for `domain`."""
    tok = ByteTokenizerSpec()
    layers = generator_layers(shape, tok)
    return Manifest(
        name=f"zoo-{domain}",
        version="1.0.0",
        domain=domain,
        kind="generator",
        layers=layers,
        input_dim=shape.context,
        output_dim=tok.eos + 1,
        tokenizer=tok,
        parameters=count_parameters(layers),
        evaluation=evaluation,
        description=description,
        limits=limits or Limits(),
    )
