"""int8 per-channel quantization: recorded in the manifest, loaded by the runtime, close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experts import ExpertFormatError, build_ffn, load_expert, load_file, quantize_file, save
from experts.ffn import ffn_file
from experts.quantize import quantize_channels


def test_channel_scales_follow_the_output_axis() -> None:
    w = np.array([[1.0, 100.0], [-0.5, 50.0]], dtype=np.float32)
    q, scale = quantize_channels(w, axis=1)
    np.testing.assert_allclose(scale, [1 / 127, 100 / 127], rtol=1e-6)
    assert q.dtype == np.int8 and q[0, 0] == 127 and q[1, 0] == -64
    np.testing.assert_allclose(q * scale, w, atol=0.5 * scale.max())


def test_quantized_ffn_file_is_smaller_loads_and_stays_close(tmp_path: Path) -> None:
    src, dst = tmp_path / "ffn.f32.npz", tmp_path / "ffn.int8.npz"
    ef = ffn_file(64)
    save(src, ef.manifest, ef.arrays)
    new_id = quantize_file(src, dst)
    q = load_file(dst)
    assert q.expert_id == new_id != ef.expert_id
    assert q.manifest.quantization == {"ffn.w": 1, "ffn_output.w": 1}
    assert q.arrays["ffn.w"].dtype == np.int8
    assert src.stat().st_size / dst.stat().st_size > 3.4
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    ref, got = build_ffn(64).forward(x), load_expert(dst).forward(x)
    assert np.linalg.norm(ref - got) / np.linalg.norm(ref) < 0.01


def test_quantizing_twice_is_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.npz", tmp_path / "b.npz"
    ef = ffn_file(8)
    save(src, ef.manifest, ef.arrays)
    quantize_file(src, dst)
    with pytest.raises(ExpertFormatError, match="already"):
        quantize_file(dst, tmp_path / "c.npz")


def test_int8_weight_with_a_zero_scale_is_refused(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.npz", tmp_path / "b.npz"
    ef = ffn_file(8)
    save(src, ef.manifest, ef.arrays)
    quantize_file(src, dst)
    q = load_file(dst)
    arrays = dict(q.arrays)
    arrays["ffn.w.scale"] = np.zeros_like(arrays["ffn.w.scale"])
    with pytest.raises(ExpertFormatError, match="scales"):
        save(tmp_path / "c.npz", q.manifest, arrays)
