"""The file format: ids, and every kind of bad file refused with ExpertFormatError."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from experts import ExpertFormatError, load_expert, load_file
from experts.ffn import ffn_file
from experts.format import ID_KEY, MANIFEST_KEY, compute_id, save, write_unchecked
from experts.jsonfields import canonical_json
from tests.experts.conftest import random_weights, tiny_manifest


def _entries(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _rewrite(path: Path, entries: dict[str, np.ndarray]) -> None:
    """Write entries as-is, keeping the stored id (so a content change is a tampering)."""
    with open(path, "wb") as fh:
        np.savez(fh, **entries)  # type: ignore[arg-type]


def test_save_load_round_trip_keeps_id_and_weights(tiny_generator: Path) -> None:
    ef = load_file(tiny_generator)
    assert ef.manifest == tiny_manifest()
    assert len(ef.expert_id) == 64
    manifest_bytes = canonical_json(ef.manifest.to_json())
    assert compute_id(manifest_bytes, ef.arrays) == ef.expert_id
    assert load_file(tiny_generator, expect_id=ef.expert_id).expert_id == ef.expert_id


def test_id_changes_with_any_weight_or_manifest_field(tmp_path: Path) -> None:
    manifest = tiny_manifest()
    weights = random_weights(manifest)
    base = save(tmp_path / "a.npz", manifest, weights)
    weights["out.b"][0] += 1e-3
    assert save(tmp_path / "b.npz", manifest, weights) != base
    other = dataclasses.replace(manifest, version="1.0.1")
    assert save(tmp_path / "c.npz", other, random_weights(manifest)) != base


def test_truncated_file_is_refused(tiny_generator: Path) -> None:
    data = tiny_generator.read_bytes()
    tiny_generator.write_bytes(data[: len(data) // 2])
    with pytest.raises(ExpertFormatError, match="not a complete"):
        load_expert(tiny_generator)


def test_tampered_weight_is_a_hash_mismatch(tiny_generator: Path) -> None:
    entries = _entries(tiny_generator)
    entries["inp.w"] = entries["inp.w"].copy()
    entries["inp.w"][0, 0] += 0.5
    _rewrite(tiny_generator, entries)
    with pytest.raises(ExpertFormatError, match="hash mismatch") as info:
        load_expert(tiny_generator)
    assert info.value.path == str(tiny_generator)


def test_tampered_manifest_is_a_hash_mismatch(tiny_generator: Path) -> None:
    entries = _entries(tiny_generator)
    doc = json.loads(entries[MANIFEST_KEY].tobytes())
    doc["evaluation"] = {"metric": "x", "score": 99.0, "n": 1, "seed": 0, "extra": {}}
    entries[MANIFEST_KEY] = np.frombuffer(canonical_json(doc), dtype=np.uint8)
    _rewrite(tiny_generator, entries)
    with pytest.raises(ExpertFormatError, match="hash mismatch"):
        load_expert(tiny_generator)


def test_other_expert_than_expected_is_refused(tiny_generator: Path) -> None:
    with pytest.raises(ExpertFormatError, match="expected expert"):
        load_file(tiny_generator, expect_id="0" * 64)


def test_pickled_object_array_is_refused_without_unpickling(tiny_generator: Path) -> None:
    entries = _entries(tiny_generator)
    buf = io.BytesIO()
    # np.save with an object array writes a pickle; loading it must never run it.
    np.save(buf, np.array([{"boom": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(tiny_generator, "a") as zf:
        zf.writestr("evil.npy", buf.getvalue())
    assert "evil" not in entries
    with pytest.raises(ExpertFormatError, match="refused entry"):
        load_expert(tiny_generator)


def _bad_file(tmp_path: Path, mutate: str) -> Path:
    """A file with a *valid* id whose content is wrong in one way."""
    manifest = tiny_manifest()
    arrays: dict[str, np.ndarray] = dict(random_weights(manifest))
    if mutate == "shape":
        arrays["inp.w"] = arrays["inp.w"][:, :-1].copy()
    elif mutate == "dtype":
        arrays["inp.w"] = arrays["inp.w"].astype(np.float64)
    elif mutate == "nan":
        arrays["out.w"][3, 2] = np.nan
    elif mutate == "missing":
        del arrays["out.b"]
    elif mutate == "extra":
        arrays["spare.w"] = np.zeros(3, dtype=np.float32)
    path = tmp_path / f"{mutate}.npz"
    write_unchecked(path, canonical_json(manifest.to_json()), arrays)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("shape", "expected float32"),
        ("dtype", "expected float32"),
        ("nan", "NaN"),
        ("missing", "missing"),
        ("extra", "unexpected"),
    ],
)
def test_bad_weights_are_refused(tmp_path: Path, mutate: str, message: str) -> None:
    path = _bad_file(tmp_path, mutate)
    with pytest.raises(ExpertFormatError, match=message) as info:
        load_expert(path)
    assert info.value.expert_id is not None  # the id verified; the content did not


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "oracle"}, "kind"),
        ({"parameters": 12}, "parameters"),
        ({"unknown": 1}, "unknown field"),
        ({"input": {"type": "text", "context": 9}}, "expects last axis"),
        ({"layers": [{"op": "dense", "param": "x", "in": -1, "out": 2}]}, "integer"),
    ],
)
def test_bad_manifest_is_refused(tmp_path: Path, change: dict[str, object], message: str) -> None:
    manifest = tiny_manifest()
    doc = {**manifest.to_json(), **change}
    path = tmp_path / "m.npz"
    write_unchecked(path, canonical_json(doc), random_weights(manifest))
    with pytest.raises(ExpertFormatError, match=message):
        load_expert(path)


def test_non_canonical_manifest_is_refused(tmp_path: Path) -> None:
    manifest = tiny_manifest()
    path = tmp_path / "m.npz"
    write_unchecked(
        path, json.dumps(manifest.to_json(), indent=1).encode(), random_weights(manifest)
    )
    with pytest.raises(ExpertFormatError, match="canonical"):
        load_expert(path)


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    manifest = tiny_manifest()
    weights = random_weights(manifest)
    weights["inp.b"][0] = np.inf
    with pytest.raises(ExpertFormatError, match="NaN or inf"):
        save(tmp_path / "x.npz", manifest, weights)
    assert not (tmp_path / "x.npz").exists()


def test_missing_id_entry_is_refused(tmp_path: Path) -> None:
    ef = ffn_file(8)
    path = tmp_path / "f.npz"
    save(path, ef.manifest, ef.arrays)
    entries = _entries(path)
    del entries[ID_KEY]
    _rewrite(path, entries)
    with pytest.raises(ExpertFormatError, match="__id__"):
        load_expert(path)


def test_stray_non_array_member_is_refused(tiny_generator: Path) -> None:
    with zipfile.ZipFile(tiny_generator, "a") as zf:
        zf.writestr("notes.txt", b"hello")
    with pytest.raises(ExpertFormatError, match="not arrays"):
        load_expert(tiny_generator)
