"""What an expert file costs and how much int8 loses (kimi-expert-analyzer's job):
parameters, bytes, FLOPs per token, measured latency and the int8 error."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from experts.format import ExpertFile, load_file
from experts.layers import Activation, Dense, Layer, LayerNorm, Residual
from experts.quantize import quantize_expert
from experts.runtime import Expert, GeneratorExpert, from_file

# Rough element-wise costs, in FLOPs per element, of the non-matmul layers.
_ACT_FLOPS = {"relu": 1, "gelu": 8, "tanh": 4, "sigmoid": 4, "softmax": 5}
_NORM_FLOPS = 8


def flops_per_row(layers: Sequence[Layer], width: int) -> int:
    """FLOPs for one row (one generated token): 2 per multiply-add plus element-wise work.
    An embedding is a lookup and costs nothing; `width` is the row width entering."""
    total = 0
    for layer in layers:
        match layer:
            case Dense(_, inputs, outputs):
                total += 2 * inputs * outputs + outputs
                width = outputs
            case Activation(fn):
                total += _ACT_FLOPS[fn] * width
            case LayerNorm(_, dim, _):
                total += _NORM_FLOPS * dim
            case Residual(body):
                total += flops_per_row(body, width) + width
            case _:
                pass
    return total


def sample_input(expert: Expert, batch: int, seed: int = 0) -> npt.NDArray[np.generic]:
    """A valid random batch: token windows for a generator, unit-normal rows otherwise."""
    rng = np.random.default_rng(seed)
    if isinstance(expert, GeneratorExpert):
        return rng.integers(32, 127, size=(batch, expert.context), dtype=np.int64)
    return rng.standard_normal((batch, expert.manifest.input_dim)).astype(np.float32)


def latency_ms(expert: Expert, batch: int = 1, repeats: int = 200) -> list[float]:
    """Measured forward times in ms at `batch` rows, after a short warm-up."""
    x = sample_input(expert, batch)
    for _ in range(10):
        expert.forward(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        expert.forward(x)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def int8_error(ef: ExpertFile, expert: Expert, rows: int = 256) -> dict[str, float]:
    """How far the int8 version's outputs are from this float32 file's, on random input.

    For a generator, also the share of windows whose most likely next token is unchanged.
    """
    manifest, arrays = quantize_expert(ef)
    q = from_file(ExpertFile(manifest, "int8", arrays))
    x = sample_input(expert, rows, seed=1)
    ref, got = expert.forward(x), q.forward(x)
    err = np.abs(ref - got)
    norm = max(float(np.linalg.norm(ref)), 1e-12)
    out = {
        "max_abs": float(err.max()),
        "mean_abs": float(err.mean()),
        "relative": float(np.linalg.norm(ref - got)) / norm,
    }
    if isinstance(expert, GeneratorExpert):
        out["argmax_agreement"] = float((ref.argmax(1) == got.argmax(1)).mean())
    return out


def analyze(path: str | os.PathLike[str], repeats: int = 200) -> dict[str, object]:
    """The analysis of one expert file, as a JSON-ready dict."""
    ef = load_file(path)
    expert = from_file(ef)
    m = ef.manifest
    times = sorted(latency_ms(expert, 1, repeats))
    width = m.input_dim * getattr(m.layers[0], "dim", 1)
    return {
        "path": os.fspath(path),
        "expert_id": ef.expert_id,
        "name": m.name,
        "domain": m.domain,
        "kind": m.kind,
        "quantization": "int8-per-channel" if m.quantized else "float32",
        "parameters": m.parameters,
        "bytes_file": Path(path).stat().st_size,
        "bytes_weights": int(sum(a.nbytes for a in ef.arrays.values())),
        "flops_per_token": flops_per_row(m.layers, width),
        "latency_p50_ms": round(times[len(times) // 2], 4),
        "latency_p90_ms": round(times[int(len(times) * 0.9)], 4),
        "evaluation": None
        if m.evaluation is None
        else {"metric": m.evaluation.metric, "score": m.evaluation.score},
        # Measured against this file's own float32 weights; an int8 file has nothing to
        # compare to, so its error is None (analyze the float32 file instead).
        "int8_error": None if m.quantized else int8_error(ef, expert),
    }


def format_table(report: dict[str, object]) -> str:
    """The report as aligned `key  value` lines for a terminal."""
    rows: list[tuple[str, str]] = []
    for key, value in report.items():
        if isinstance(value, dict):
            rows.extend((f"{key}.{k}", _fmt(v)) for k, v in value.items())
        else:
            rows.append((key, _fmt(value)))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "-" if value is None else str(value)
