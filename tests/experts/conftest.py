"""Small experts built in the test, so format and runtime tests need no shipped file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from experts.architecture import GeneratorShape, generator_manifest
from experts.format import save
from experts.layers import param_shapes
from experts.manifest import Limits, Manifest

TINY = GeneratorShape(context=8, dim=4, hidden=16, blocks=1)


def random_weights(manifest: Manifest, seed: int = 0) -> dict[str, npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    return {
        name: (rng.standard_normal(shape) * 0.5).astype(np.float32)
        for name, shape in param_shapes(manifest.layers).items()
    }


def tiny_manifest() -> Manifest:
    return generator_manifest(
        "language", TINY, limits=Limits(max_batch=8, max_prompt_tokens=64, max_tokens=32)
    )


@pytest.fixture
def tiny_generator(tmp_path: Path) -> Path:
    """A random 8-token-window generator saved to disk."""
    manifest = tiny_manifest()
    path = tmp_path / "tiny.npz"
    save(path, manifest, random_weights(manifest))
    return path
