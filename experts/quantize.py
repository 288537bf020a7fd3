"""int8 weight quantization, one scale per output channel, recorded in the manifest.

Each matrix W is stored as round(W / s) in int8 with s = max|W| / 127 over its output
channel (a dense column, an embedding row), so one large channel cannot flatten the
resolution of the others. Biases and norm parameters stay float32: they are tiny, and
quantizing them costs accuracy for no size. The runtime dequantizes once, at load.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import numpy.typing as npt

from experts.errors import ExpertFormatError
from experts.format import SCALE, ExpertFile, load_file, save
from experts.layers import channel_axes
from experts.manifest import Manifest

# A channel of zeros still needs a positive scale to be a valid file.
_TINY = np.float32(1e-12)


def quantize_channels(
    w: npt.NDArray[np.float32], axis: int
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """int8 values and per-channel scales along `axis` (the output channels)."""
    reduce_axis = 1 - axis
    scale = np.maximum(np.abs(w).max(axis=reduce_axis) / np.float32(127.0), _TINY)
    shape = [1, 1]
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def quantize_expert(ef: ExpertFile) -> tuple[Manifest, dict[str, npt.NDArray[np.generic]]]:
    """The manifest and arrays of the int8 version of a float32 expert (evaluation unset)."""
    if ef.manifest.quantized:
        raise ExpertFormatError("expert is already quantized", expert_id=ef.expert_id)
    axes = channel_axes(ef.manifest.layers)
    arrays: dict[str, npt.NDArray[np.generic]] = {}
    for name, arr in ef.arrays.items():
        if name in axes:
            q, s = quantize_channels(arr.astype(np.float32), axes[name])
            arrays[name] = q
            arrays[name + SCALE] = s
        else:
            arrays[name] = arr
    manifest = dataclasses.replace(ef.manifest, quantization=axes, evaluation=None)
    return manifest, arrays


def quantize_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    evaluate: bool = True,
) -> str:
    """Write the int8 version of the float32 expert at `src` to `dst`; returns its id.

    With `evaluate`, a generator from the zoo's domains is re-scored with the same held-out
    set as the source so the new manifest records its own (int8) score.
    """
    ef = load_file(src)
    manifest, arrays = quantize_expert(ef)
    if evaluate and ef.manifest.evaluation is not None:
        # Imported here: evaluation pulls in the task corpora, which plain quantizing of a
        # tensor expert does not need.
        from experts.evaluate import evaluate_expert
        from experts.runtime import from_file

        probe = ExpertFile(manifest, "unsaved", arrays)
        result = evaluate_expert(
            from_file(probe), n=ef.manifest.evaluation.n, seed=ef.manifest.evaluation.seed
        )
        manifest = dataclasses.replace(manifest, evaluation=result)
    return save(dst, manifest, arrays)
