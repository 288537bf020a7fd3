"""The layers an expert may be made of, as data: parsed from and written to the manifest.

A network is a tuple of layers. Parameters live in the weight arrays of the file under
`<param>.<role>` names; `param_shapes` says which arrays a network needs and their shapes,
so a file with a missing, extra or misshapen array is refused before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experts import jsonfields as jf
from experts.errors import ExpertFormatError

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "softmax")
MAX_DEPTH = 4  # residual blocks may nest, but not without bound


@dataclass(frozen=True)
class Embedding:
    """Token ids (batch, context) to vectors (batch, context, dim); weight `<param>.w`."""

    param: str
    vocab: int
    dim: int


@dataclass(frozen=True)
class Flatten:
    """(batch, a, b) to (batch, a*b): the concatenated context window."""


@dataclass(frozen=True)
class Dense:
    """x @ w + b with w of shape (inputs, outputs), so the output channel is axis 1."""

    param: str
    inputs: int
    outputs: int


@dataclass(frozen=True)
class Activation:
    """Element-wise (relu, gelu, tanh, sigmoid) or over the last axis (softmax).

    gelu is the tanh approximation, as hivemind's `gelu_fast` and torch's
    `GELU(approximate="tanh")`, so weights trained in torch run unchanged here.
    """

    fn: str


@dataclass(frozen=True)
class LayerNorm:
    """Normalise the last axis, then scale `<param>.g` and shift `<param>.b`."""

    param: str
    dim: int
    eps: float


@dataclass(frozen=True)
class Residual:
    """x + body(x); the body must keep the shape."""

    body: tuple[Layer, ...]


Layer = Embedding | Flatten | Dense | Activation | LayerNorm | Residual


def layers_to_json(layers: Sequence[Layer]) -> list[dict[str, Any]]:
    """The manifest encoding of a network."""
    out: list[dict[str, Any]] = []
    for layer in layers:
        match layer:
            case Embedding(param, vocab, dim):
                out.append({"op": "embedding", "param": param, "vocab": vocab, "dim": dim})
            case Flatten():
                out.append({"op": "flatten"})
            case Dense(param, inputs, outputs):
                out.append({"op": "dense", "param": param, "in": inputs, "out": outputs})
            case Activation(fn):
                out.append({"op": fn})
            case LayerNorm(param, dim, eps):
                out.append({"op": "layer_norm", "param": param, "dim": dim, "eps": eps})
            case Residual(body):
                out.append({"op": "residual", "body": layers_to_json(body)})
    return out


def layers_from_json(value: object, where: str = "layers", depth: int = 0) -> tuple[Layer, ...]:
    """Parse the `layers` list of a manifest; raises ExpertFormatError on anything odd."""
    if depth > MAX_DEPTH:
        raise ExpertFormatError(f"{where}: residual blocks nested too deep")
    if not isinstance(value, list) or not value or len(value) > 64:
        raise ExpertFormatError(f"{where}: expected a list of 1 to 64 layers")
    return tuple(_layer(item, f"{where}[{i}]", depth) for i, item in enumerate(value))


def _layer(value: object, where: str, depth: int) -> Layer:
    data = jf.obj(value, where)
    op = jf.text(data, "op", where)
    if op in ACTIVATIONS or op == "flatten":
        jf.only_keys(data, {"op"}, where)
        return Flatten() if op == "flatten" else Activation(op)
    if op == "embedding":
        jf.only_keys(data, {"op", "param", "vocab", "dim"}, where)
        return Embedding(
            _param(data, where), jf.count(data, "vocab", where), jf.count(data, "dim", where)
        )
    if op == "dense":
        jf.only_keys(data, {"op", "param", "in", "out"}, where)
        return Dense(_param(data, where), jf.count(data, "in", where), jf.count(data, "out", where))
    if op == "layer_norm":
        jf.only_keys(data, {"op", "param", "dim", "eps"}, where)
        eps = jf.number(data, "eps", where)
        if not 0.0 < eps < 1.0:
            raise ExpertFormatError(f"{where}.eps: expected 0 < eps < 1")
        return LayerNorm(_param(data, where), jf.count(data, "dim", where), eps)
    if op == "residual":
        jf.only_keys(data, {"op", "body"}, where)
        return Residual(layers_from_json(data.get("body"), f"{where}.body", depth + 1))
    raise ExpertFormatError(f"{where}: unknown op {op!r}")


def _param(data: Mapping[str, Any], where: str) -> str:
    name = jf.text(data, "param", where, max_len=32)
    if not name.isidentifier():
        raise ExpertFormatError(f"{where}.param: {name!r} is not an identifier")
    return name


def param_shapes(layers: Sequence[Layer]) -> dict[str, tuple[int, ...]]:
    """Every weight array the network needs, by name, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def add(name: str, shape: tuple[int, ...]) -> None:
        if name in shapes:
            raise ExpertFormatError(f"layers: parameter {name!r} is used twice")
        shapes[name] = shape

    for layer in layers:
        match layer:
            case Embedding(param, vocab, dim):
                add(f"{param}.w", (vocab, dim))
            case Dense(param, inputs, outputs):
                add(f"{param}.w", (inputs, outputs))
                add(f"{param}.b", (outputs,))
            case LayerNorm(param, dim, _):
                add(f"{param}.g", (dim,))
                add(f"{param}.b", (dim,))
            case Residual(body):
                for name, shape in param_shapes(body).items():
                    add(name, shape)
            case _:
                pass
    return shapes


def channel_axes(layers: Sequence[Layer]) -> dict[str, int]:
    """The matrices worth quantizing and the axis of their output channels.

    Dense weights are (inputs, outputs): one scale per output column. Embedding rows are
    the vectors a token turns into: one scale per row. Biases and norms stay float32.
    """
    axes: dict[str, int] = {}
    for layer in layers:
        match layer:
            case Embedding(param, _, _):
                axes[f"{param}.w"] = 0
            case Dense(param, _, _):
                axes[f"{param}.w"] = 1
            case Residual(body):
                axes.update(channel_axes(body))
            case _:
                pass
    return axes


def output_shape(
    layers: Sequence[Layer], shape: tuple[int, ...], where: str = "layers"
) -> tuple[int, ...]:
    """The shape of one row after the network, given the shape of one input row.

    `shape` excludes the batch axis: a tensor expert passes (dim,), a generator its
    window of token ids (context,). Raises ExpertFormatError where the layers do not fit.
    """
    for i, layer in enumerate(layers):
        here = f"{where}[{i}]"
        match layer:
            case Embedding(_, _, dim):
                if len(shape) != 1:
                    raise ExpertFormatError(f"{here}: embedding needs token ids (context,)")
                shape = (shape[0], dim)
            case Flatten():
                if len(shape) != 2:
                    raise ExpertFormatError(f"{here}: flatten needs a 2-d row")
                shape = (shape[0] * shape[1],)
            case Dense(_, inputs, outputs):
                _expect_last(shape, inputs, here)
                shape = shape[:-1] + (outputs,)
            case LayerNorm(_, dim, _):
                _expect_last(shape, dim, here)
            case Residual(body):
                if output_shape(body, shape, f"{here}.body") != shape:
                    raise ExpertFormatError(f"{here}: residual body changes the shape")
            case Activation():
                pass
    return shape


def _expect_last(shape: tuple[int, ...], size: int, where: str) -> None:
    if shape[-1:] != (size,):
        raise ExpertFormatError(f"{where}: expects last axis {size}, gets shape {shape}")
