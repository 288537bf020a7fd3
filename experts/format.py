"""The expert file: one `.npz` holding the manifest, the id and the weights.

Layout: `__manifest__` is the canonical JSON of the manifest as a uint8 array, `__id__` the
expert id as ASCII hex, every other entry a weight (`<param>.w`, `<param>.b`, ...; an int8
weight also has `<param>.w.scale`). The id is BLAKE2b-256 over the manifest bytes and every
array's name, dtype, shape and bytes in name order, so it names the model exactly.

Loading trusts nothing: sizes are bounded before reading, pickles are refused
(`allow_pickle=False`), the id is recomputed and compared, then the manifest, the shapes,
dtypes and finiteness of every array are checked. Any failure raises ExpertFormatError and
returns nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from experts.errors import ExpertFormatError
from experts.jsonfields import canonical_json
from experts.layers import param_shapes
from experts.manifest import Manifest, manifest_from_json

MANIFEST_KEY = "__manifest__"
ID_KEY = "__id__"
SCALE = ".scale"
MAX_FILE_BYTES = 64 << 20
MAX_ENTRIES = 512
MAX_MANIFEST_BYTES = 256 << 10

Arrays = Mapping[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class ExpertFile:
    """A verified expert file: manifest, id, and the weights as stored (int8 or float32)."""

    manifest: Manifest
    expert_id: str
    arrays: Mapping[str, npt.NDArray[np.generic]]

    def float_weights(self) -> dict[str, npt.NDArray[np.float32]]:
        """The weights as float32, int8 ones multiplied back by their channel scales."""
        out: dict[str, npt.NDArray[np.float32]] = {}
        for name in param_shapes(self.manifest.layers):
            arr = self.arrays[name]
            axis = self.manifest.quantization.get(name)
            if axis is None:
                out[name] = arr.astype(np.float32)
            else:
                scale = self.arrays[name + SCALE].astype(np.float32)
                shape = [1, 1]
                shape[axis] = -1
                out[name] = arr.astype(np.float32) * scale.reshape(shape)
        return out


def compute_id(manifest_bytes: bytes, arrays: Arrays) -> str:
    """BLAKE2b-256 hex over the manifest bytes and the weights, in a fixed order."""
    h = hashlib.blake2b(digest_size=32, person=b"swarm-expert/1")
    h.update(len(manifest_bytes).to_bytes(8, "big"))
    h.update(manifest_bytes)
    for name in sorted(arrays):
        arr = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, arr.dtype.str, list(arr.shape)]).encode()
        h.update(len(header).to_bytes(8, "big"))
        h.update(header)
        h.update(arr.tobytes())
    return h.hexdigest()


def expected_arrays(manifest: Manifest) -> dict[str, tuple[tuple[int, ...], np.dtype[np.generic]]]:
    """Every weight entry the manifest implies, with its shape and dtype."""
    out: dict[str, tuple[tuple[int, ...], np.dtype[np.generic]]] = {}
    for name, shape in param_shapes(manifest.layers).items():
        axis = manifest.quantization.get(name)
        if axis is None:
            out[name] = (shape, np.dtype(np.float32))
        else:
            out[name] = (shape, np.dtype(np.int8))
            out[name + SCALE] = ((shape[axis],), np.dtype(np.float32))
    return out


def check_arrays(manifest: Manifest, arrays: Arrays, expert_id: str | None = None) -> None:
    """Names, shapes, dtypes and finiteness of the weights, against the manifest."""
    expected = expected_arrays(manifest)
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing or extra:
        raise ExpertFormatError(
            f"weights do not match the layers: missing {missing}, unexpected {extra}",
            expert_id=expert_id,
        )
    for name, (shape, dtype) in expected.items():
        arr = arrays[name]
        if arr.dtype != dtype or arr.shape != shape:
            raise ExpertFormatError(
                f"weight {name!r}: expected {dtype} {shape}, got {arr.dtype} {arr.shape}",
                expert_id=expert_id,
            )
        if dtype == np.float32 and not np.isfinite(arr).all():
            raise ExpertFormatError(f"weight {name!r} holds NaN or inf", expert_id=expert_id)
        if name.endswith(SCALE) and not (arr.astype(np.float32) > 0).all():
            raise ExpertFormatError(f"weight {name!r}: scales must be > 0", expert_id=expert_id)


def save(path: str | os.PathLike[str], manifest: Manifest, arrays: Arrays) -> str:
    """Check and write an expert file; returns its id. Refuses what `load` would refuse."""
    check_arrays(manifest, arrays)
    # Round-trip the manifest so that what is written is exactly what load() accepts.
    manifest_from_json(json.loads(canonical_json(manifest.to_json())))
    return write_unchecked(path, canonical_json(manifest.to_json()), arrays)


def write_unchecked(path: str | os.PathLike[str], manifest_bytes: bytes, arrays: Arrays) -> str:
    """Write the entries with a correct id but no other check (tests build bad files so)."""
    expert_id = compute_id(manifest_bytes, arrays)
    entries: dict[str, npt.NDArray[np.generic]] = dict(arrays)
    entries[MANIFEST_KEY] = np.frombuffer(manifest_bytes, dtype=np.uint8)
    entries[ID_KEY] = np.frombuffer(expert_id.encode("ascii"), dtype=np.uint8)
    tmp = Path(f"{os.fspath(path)}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **entries)  # type: ignore[arg-type]
    os.replace(tmp, path)  # a reader never sees half a file
    return expert_id


def load_file(path: str | os.PathLike[str], expect_id: str | None = None) -> ExpertFile:
    """Read and verify an expert file. `expect_id` pins the exact model a peer asked for."""
    where = os.fspath(path)
    try:
        size = os.path.getsize(where)
        if size > MAX_FILE_BYTES:
            raise ExpertFormatError(f"file is {size} bytes, over {MAX_FILE_BYTES}", path=where)
        with open(where, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ExpertFormatError(f"cannot read expert file: {exc}", path=where) from exc
    return load_bytes(data, expect_id=expect_id, path=where)


def load_bytes(data: bytes, *, expect_id: str | None = None, path: str | None = None) -> ExpertFile:
    """Verify an expert file held in memory (as received from a peer)."""
    raw = _read_entries(data, path)
    manifest_bytes = _entry_bytes(raw, MANIFEST_KEY, path, MAX_MANIFEST_BYTES)
    stored_id = _entry_bytes(raw, ID_KEY, path, 64).decode("ascii", "replace")
    arrays = {k: v for k, v in raw.items() if k not in (MANIFEST_KEY, ID_KEY)}
    actual = compute_id(manifest_bytes, arrays)
    if actual != stored_id:
        raise ExpertFormatError(
            f"hash mismatch: file says {stored_id[:16]}..., content hashes to {actual[:16]}...",
            path=path,
            expert_id=stored_id,
        )
    if expect_id is not None and actual != expect_id:
        raise ExpertFormatError(
            f"expected expert {expect_id[:16]}..., file holds {actual[:16]}...",
            path=path,
            expert_id=actual,
        )
    try:
        value = json.loads(manifest_bytes.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExpertFormatError("manifest is not ASCII JSON", path=path) from exc
    if canonical_json(value) != manifest_bytes:
        raise ExpertFormatError("manifest is not in canonical form", path=path)
    try:
        manifest = manifest_from_json(value)
        check_arrays(manifest, arrays, expert_id=actual)
    except ExpertFormatError as exc:
        raise ExpertFormatError(str(exc), path=path, expert_id=actual) from exc
    return ExpertFile(manifest=manifest, expert_id=actual, arrays=arrays)


def _read_entries(data: bytes, path: str | None) -> dict[str, npt.NDArray[np.generic]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ENTRIES:
                raise ExpertFormatError(f"{len(infos)} entries, over {MAX_ENTRIES}", path=path)
            # Bound what decompression may produce before any entry is inflated.
            if sum(i.file_size for i in infos) > MAX_FILE_BYTES:
                raise ExpertFormatError("entries inflate past the size limit", path=path)
            # numpy hands back raw bytes for a member that is not an .npy array.
            stray = [i.filename for i in infos if not i.filename.endswith(".npy")]
            if stray:
                raise ExpertFormatError(f"entries that are not arrays: {stray[:3]}", path=path)
        out: dict[str, npt.NDArray[np.generic]] = {}
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for name in npz.files:
                out[name] = npz[name]
    except ExpertFormatError:
        raise
    except ValueError as exc:  # numpy's refusal of object (pickled) arrays lands here
        raise ExpertFormatError(f"refused entry: {exc}", path=path) from exc
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise ExpertFormatError(f"not a complete .npz file: {exc}", path=path) from exc
    for name, arr in out.items():
        if arr.dtype.hasobject or arr.dtype.kind not in "iuf":
            raise ExpertFormatError(f"entry {name!r} has dtype {arr.dtype}", path=path)
    return out


def _entry_bytes(
    raw: Mapping[str, npt.NDArray[np.generic]], key: str, path: str | None, limit: int
) -> bytes:
    arr = raw.get(key)
    if arr is None or arr.dtype != np.uint8 or arr.ndim != 1 or arr.size > limit:
        raise ExpertFormatError(f"missing or malformed {key} entry", path=path)
    return arr.tobytes()
