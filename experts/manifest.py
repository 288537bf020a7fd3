"""The manifest of an expert file: what the model is, what it accepts, how good it is.

Parsed strictly from JSON (unknown fields are refused, so a manifest means one thing) and
checked for internal consistency: the layers fit the input and output spec, the tokenizer
fits the embedding, the parameter count matches the layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from experts import jsonfields as jf
from experts.errors import ExpertFormatError
from experts.layers import (
    Embedding,
    Layer,
    channel_axes,
    layers_from_json,
    layers_to_json,
    output_shape,
    param_shapes,
)

FORMAT = "swarm-expert/1"
DOMAINS = ("reasoning", "coding", "language", "mathematics", "tool_use", "context")
KINDS = ("tensor", "generator")
INT8 = "int8-per-channel"

Kind = Literal["tensor", "generator"]


@dataclass(frozen=True)
class Limits:
    """What one call may ask of the expert; enforced before anything runs."""

    max_batch: int = 256
    max_prompt_tokens: int = 1024
    max_tokens: int = 256


@dataclass(frozen=True)
class Evaluation:
    """A held-out score for this very file (int8 and float32 files are scored apart).

    `score` is in points (0-100) of `metric`; `n` examples drawn with `seed` re-create the
    set exactly; `extra` holds secondary metrics.
    """

    metric: str
    score: float
    n: int
    seed: int
    extra: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ByteTokenizerSpec:
    """UTF-8 bytes are tokens 0-255; `eos` ends a generation and `pad` fills the window."""

    eos: int = 256
    pad: int = 257

    @property
    def vocab(self) -> int:
        return max(self.eos, self.pad) + 1


@dataclass(frozen=True)
class Manifest:
    """Everything an expert file says about itself, except its weights."""

    name: str
    version: str
    domain: str
    kind: Kind
    layers: tuple[Layer, ...]
    input_dim: int  # tensor: row width; generator: context window in tokens
    output_dim: int  # tensor: row width; generator: logits (vocab without pad)
    tokenizer: ByteTokenizerSpec | None
    parameters: int
    licence: str = "MIT"
    quantization: Mapping[str, int] = field(default_factory=dict)  # tensor -> channel axis
    evaluation: Evaluation | None = None
    limits: Limits = Limits()
    description: str = ""

    @property
    def quantized(self) -> bool:
        return bool(self.quantization)

    def to_json(self) -> dict[str, Any]:
        """The JSON object stored in the file (and hashed into the expert id)."""
        tok = self.tokenizer
        ev = self.evaluation
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "domain": self.domain,
            "kind": self.kind,
            "description": self.description,
            "licence": self.licence,
            "layers": layers_to_json(self.layers),
            "input": _io_json(self.kind, "input", self.input_dim),
            "output": _io_json(self.kind, "output", self.output_dim),
            "tokenizer": None if tok is None else {"type": "bytes", "eos": tok.eos, "pad": tok.pad},
            "quantization": (
                {"scheme": INT8, "tensors": dict(self.quantization)}
                if self.quantization
                else {"scheme": "none"}
            ),
            "parameters": self.parameters,
            "evaluation": None
            if ev is None
            else {
                "metric": ev.metric,
                "score": ev.score,
                "n": ev.n,
                "seed": ev.seed,
                "extra": dict(ev.extra),
            },
            "limits": {
                "max_batch": self.limits.max_batch,
                "max_prompt_tokens": self.limits.max_prompt_tokens,
                "max_tokens": self.limits.max_tokens,
            },
        }


def _io_json(kind: str, which: str, dim: int) -> dict[str, Any]:
    if kind == "tensor":
        return {"type": "tensor", "dtype": "float32", "dim": dim}
    if which == "input":
        return {"type": "text", "context": dim}
    return {"type": "logits", "vocab": dim}


def count_parameters(layers: tuple[Layer, ...]) -> int:
    """Scalars in the weights (a quantized weight counts once, its scales do not)."""
    return sum(math.prod(shape) for shape in param_shapes(layers).values())


def manifest_from_json(value: object) -> Manifest:
    """Parse and check a manifest; raises ExpertFormatError with the offending field."""
    w = "manifest"
    data = jf.obj(value, w)
    jf.only_keys(data, set(_KEYS), w)
    if data.get("format") != FORMAT:
        raise ExpertFormatError(f"{w}.format: expected {FORMAT!r}")
    kind = jf.text(data, "kind", w)
    if kind not in KINDS:
        raise ExpertFormatError(f"{w}.kind: expected one of {KINDS}")
    layers = layers_from_json(data.get("layers"))
    in_dim = _io_dim(data, "input", kind)
    out_dim = _io_dim(data, "output", kind)
    tokenizer = _tokenizer(data.get("tokenizer"), kind)
    manifest = Manifest(
        name=jf.text(data, "name", w),
        version=jf.text(data, "version", w),
        domain=jf.text(data, "domain", w),
        kind="tensor" if kind == "tensor" else "generator",
        layers=layers,
        input_dim=in_dim,
        output_dim=out_dim,
        tokenizer=tokenizer,
        parameters=jf.count(data, "parameters", w, low=0, high=1 << 31),
        licence=jf.text(data, "licence", w),
        quantization=_quantization(data.get("quantization")),
        evaluation=_evaluation(data.get("evaluation")),
        limits=_limits(data.get("limits")),
        description=_description(data.get("description", "")),
    )
    _check_consistent(manifest)
    return manifest


_KEYS = (
    "format",
    "name",
    "version",
    "domain",
    "kind",
    "description",
    "licence",
    "layers",
    "input",
    "output",
    "tokenizer",
    "quantization",
    "parameters",
    "evaluation",
    "limits",
)


def _description(value: object) -> str:
    if not isinstance(value, str) or len(value) > 2000:
        raise ExpertFormatError("manifest.description: expected a string <= 2000")
    return value


def _io_dim(data: Mapping[str, Any], which: str, kind: str) -> int:
    where = f"manifest.{which}"
    spec = jf.obj(data.get(which), where)
    expected = _io_json(kind, which, 1)
    jf.only_keys(spec, set(expected), where)
    for key in ("type", "dtype"):
        if key in expected and spec.get(key) != expected[key]:
            raise ExpertFormatError(f"{where}.{key}: expected {expected[key]!r}")
    key = next(k for k in expected if k not in ("type", "dtype"))
    return jf.count(spec, key, where)


def _tokenizer(value: object, kind: str) -> ByteTokenizerSpec | None:
    where = "manifest.tokenizer"
    if kind == "tensor":
        if value is not None:
            raise ExpertFormatError(f"{where}: a tensor expert has no tokenizer")
        return None
    data = jf.obj(value, where)
    jf.only_keys(data, {"type", "eos", "pad"}, where)
    if data.get("type") != "bytes":
        raise ExpertFormatError(f"{where}.type: only 'bytes' is supported")
    eos = jf.count(data, "eos", where, low=256, high=1024)
    pad = jf.count(data, "pad", where, low=256, high=1024)
    if pad != eos + 1:
        # Logits cover bytes and eos (0..eos); pad, the last id, is input-only.
        raise ExpertFormatError(f"{where}: pad must be eos + 1")
    return ByteTokenizerSpec(eos=eos, pad=pad)


def _quantization(value: object) -> dict[str, int]:
    where = "manifest.quantization"
    data = jf.obj(value, where)
    if data.get("scheme") == "none":
        jf.only_keys(data, {"scheme"}, where)
        return {}
    if data.get("scheme") != INT8:
        raise ExpertFormatError(f"{where}.scheme: expected 'none' or {INT8!r}")
    jf.only_keys(data, {"scheme", "tensors"}, where)
    tensors = jf.obj(data.get("tensors"), f"{where}.tensors")
    return {name: jf.count(tensors, name, f"{where}.tensors", low=0, high=1) for name in tensors}


def _evaluation(value: object) -> Evaluation | None:
    if value is None:
        return None
    where = "manifest.evaluation"
    data = jf.obj(value, where)
    jf.only_keys(data, {"metric", "score", "n", "seed", "extra"}, where)
    extra = jf.obj(data.get("extra", {}), f"{where}.extra")
    return Evaluation(
        metric=jf.text(data, "metric", where),
        score=jf.number(data, "score", where),
        n=jf.count(data, "n", where),
        seed=jf.count(data, "seed", where, low=0, high=1 << 62),
        extra=tuple(sorted((k, jf.number(extra, k, where)) for k in extra)),
    )


def _limits(value: object) -> Limits:
    where = "manifest.limits"
    data = jf.obj(value, where)
    jf.only_keys(data, {"max_batch", "max_prompt_tokens", "max_tokens"}, where)
    return Limits(
        max_batch=jf.count(data, "max_batch", where, high=1 << 16),
        max_prompt_tokens=jf.count(data, "max_prompt_tokens", where, high=1 << 20),
        max_tokens=jf.count(data, "max_tokens", where, high=1 << 16),
    )


def _check_consistent(m: Manifest) -> None:
    """The layers must turn the declared input into the declared output."""
    embeddings = [i for i, lay in enumerate(m.layers) if isinstance(lay, Embedding)]
    if embeddings not in ([], [0]) or bool(embeddings) != (m.kind == "generator"):
        raise ExpertFormatError("manifest: a generator, and only it, starts with an embedding")
    if m.kind == "generator":
        assert m.tokenizer is not None  # _tokenizer guarantees it for generators
        first = m.layers[0]
        if not isinstance(first, Embedding) or first.vocab != m.tokenizer.vocab:
            raise ExpertFormatError("manifest: a generator starts with an embedding of the vocab")
        if m.output_dim != m.tokenizer.eos + 1:
            raise ExpertFormatError("manifest.output: logits must cover bytes and eos")
    if output_shape(m.layers, (m.input_dim,)) != (m.output_dim,):
        raise ExpertFormatError("manifest: layers do not map the input spec to the output spec")
    if m.parameters != count_parameters(m.layers):
        raise ExpertFormatError("manifest.parameters: does not match the layers")
    axes = channel_axes(m.layers)
    for name, axis in m.quantization.items():
        if axes.get(name) != axis:
            raise ExpertFormatError(
                f"manifest.quantization: {name!r} is not a channel of axis {axis}"
            )
