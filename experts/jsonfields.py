"""Strict readers for fields of an untrusted JSON object (the manifest of an expert file).

Each raises `ExpertFormatError` naming the field, so a bad manifest is reported once, at
the edge, and the rest of the package works with typed values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from experts.errors import ExpertFormatError

MAX_NAME = 64


def canonical_json(obj: object) -> bytes:
    """The one byte encoding of a JSON value that the expert id is computed over."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def obj(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ExpertFormatError(f"{where}: expected an object")
    return value


def field(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ExpertFormatError(f"{where}: missing field {key!r}")
    return data[key]


def text(data: Mapping[str, Any], key: str, where: str, max_len: int = MAX_NAME) -> str:
    value = field(data, key, where)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ExpertFormatError(f"{where}.{key}: expected a non-empty string <= {max_len}")
    return value


def count(data: Mapping[str, Any], key: str, where: str, low: int = 1, high: int = 1 << 24) -> int:
    value = field(data, key, where)
    # bool is an int in Python; a manifest saying `true` for a size is malformed.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ExpertFormatError(f"{where}.{key}: expected an integer in [{low}, {high}]")
    return value


def number(data: Mapping[str, Any], key: str, where: str) -> float:
    value = field(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ExpertFormatError(f"{where}.{key}: expected a number")
    return float(value)


def only_keys(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(data) - allowed
    if extra:
        raise ExpertFormatError(f"{where}: unknown field(s) {sorted(extra)}")
