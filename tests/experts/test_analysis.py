"""The analysis report: counts derived from the layers, measured latency, int8 error."""

from __future__ import annotations

from pathlib import Path

from experts import analyze, format_table, quantize_file, save
from experts.ffn import ffn_file


def test_ffn_report_counts_parameters_flops_and_int8_error(tmp_path: Path) -> None:
    path = tmp_path / "ffn.npz"
    ef = ffn_file(64)
    save(path, ef.manifest, ef.arrays)
    report = analyze(path, repeats=20)
    d = 64
    assert report["parameters"] == d * 4 * d * 2 + 4 * d + d + 2 * d
    flops = report["flops_per_token"]
    assert isinstance(flops, int) and 4 * d * 4 * d <= flops < 1.1 * 4 * d * 4 * d
    assert report["bytes_file"] == path.stat().st_size
    latency = report["latency_p50_ms"]
    assert isinstance(latency, float) and latency > 0
    error = report["int8_error"]
    assert isinstance(error, dict) and 0 < error["relative"] < 0.01
    table = format_table(report)
    assert "parameters" in table and "int8_error.relative" in table


def test_int8_file_reports_no_error_against_itself(tmp_path: Path) -> None:
    src, dst = tmp_path / "a.npz", tmp_path / "b.npz"
    ef = ffn_file(8)
    save(src, ef.manifest, ef.arrays)
    quantize_file(src, dst)
    report = analyze(dst, repeats=5)
    assert report["quantization"] == "int8-per-channel" and report["int8_error"] is None
