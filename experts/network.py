"""The numpy runtime: layers compiled into a chain of array functions.

Compilation happens once, at load: weights are made contiguous float32 and bound into
closures, so a forward pass is a handful of BLAS calls and ufuncs with no lookups. Every
step takes and returns a batch (the first axis), so one call serves one row or many.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from experts.layers import Activation, Dense, Embedding, Flatten, Layer, LayerNorm, Residual

F32 = npt.NDArray[np.float32]
# Steps pass token ids (int) into the embedding and float32 after it; one loose type for
# both keeps the chain a plain tuple of callables.
Array = npt.NDArray[Any]
Step = Callable[[Array], Array]

_GELU_C = np.float32(np.sqrt(2.0 / np.pi))
_GELU_K = np.float32(0.044715)


def gelu(x: F32) -> F32:
    """tanh-approximated GELU, hivemind's `gelu_fast`, computed in place on a fresh copy."""
    inner = x * x
    inner *= _GELU_K
    inner += 1.0
    inner *= x
    inner *= _GELU_C
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= x
    inner *= 0.5
    return inner


def relu(x: F32) -> F32:
    return np.maximum(x, np.float32(0.0))


def tanh(x: F32) -> F32:
    out: F32 = np.tanh(x)
    return out


def sigmoid(x: F32) -> F32:
    out = np.negative(x)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def softmax(x: F32) -> F32:
    """Softmax over the last axis, shifted by the max so large logits do not overflow."""
    out: F32 = x - x.max(axis=-1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)
    return out


ACTIVATION_FNS: Mapping[str, Callable[[F32], F32]] = {
    "relu": relu,
    "gelu": gelu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "softmax": softmax,
}


def layer_norm(x: F32, gain: F32, bias: F32, eps: float) -> F32:
    """Normalise the last axis with the biased variance, as torch.nn.LayerNorm does.

    Means are sums times 1/n: `np.mean` costs several microseconds of Python per call, more
    than the arithmetic on a few rows."""
    inv_n = np.float32(1.0 / x.shape[-1])
    mean = np.add.reduce(x, axis=-1, keepdims=True)
    mean *= inv_n
    centred: F32 = x - mean
    var = np.add.reduce(centred * centred, axis=-1, keepdims=True)
    var *= inv_n
    var += np.float32(eps)
    np.sqrt(var, out=var)
    centred /= var
    centred *= gain
    centred += bias
    return centred


@dataclass(frozen=True)
class Network:
    """A compiled chain of steps; call it on a batch."""

    steps: tuple[Step, ...]

    def __call__(self, x: Array) -> F32:
        out = x
        for step in self.steps:
            out = step(out)
        result: F32 = out.astype(np.float32, copy=False)
        return result


def compile_network(layers: Sequence[Layer], weights: Mapping[str, F32]) -> Network:
    """Bind float32 weights into steps; the shapes were checked when the file was loaded."""
    return Network(tuple(_step(layer, weights) for layer in layers))


def _step(layer: Layer, weights: Mapping[str, F32]) -> Step:
    match layer:
        case Embedding(param, _, _):
            table = np.ascontiguousarray(weights[f"{param}.w"], dtype=np.float32)
            return lambda x: table[x]
        case Flatten():
            return lambda x: x.reshape(x.shape[0], -1)
        case Dense(param, _, _):
            return _dense(weights[f"{param}.w"], weights[f"{param}.b"])
        case Activation(fn):
            return ACTIVATION_FNS[fn]
        case LayerNorm(param, _, eps):
            g = np.ascontiguousarray(weights[f"{param}.g"], dtype=np.float32)
            b = np.ascontiguousarray(weights[f"{param}.b"], dtype=np.float32)
            return lambda x: layer_norm(x, g, b, eps)
        case Residual(body):
            inner = compile_network(body, weights)
            return lambda x: np.add(x, inner(x))
    raise AssertionError(f"unhandled layer {layer!r}")  # the match above is exhaustive


def _dense(w: F32, b: F32) -> Step:
    w = np.ascontiguousarray(w, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)

    def dense(x: Array) -> Array:
        out: Array = x @ w
        out += b
        return out

    return dense
