"""Canonical msgpack: the one encoding used for hashing, signing and the wire.

Every structure is a msgpack array with a fixed field order (never a map, so there is no key
order to agree on), integers take msgpack's shortest form, byte strings are `bin` and text is
`str`. There are no floats in anything we hash or sign. Because msgpack's packer is
deterministic for these types, `encode(decode(b)) == b` holds exactly for canonical bytes, and
`decode_canonical` rejects anything else: two encodings of one value would otherwise give two
sizes for one id.

Decoders check the size before reading, then every field's type and bound through the
`as_*` helpers, which raise `DecodeError` (a `RemoteProtocolError`) naming the field.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

from dag.errors import DecodeError

# The largest element msgpack may allocate while decoding; the caller's byte limit is the
# real bound, these only stop a small frame from declaring a huge container.
_MAX_CONTAINER = 65_536

Encodable = int | bytes | str | list["Encodable"] | tuple["Encodable", ...]

_packers = threading.local()


def packb(value: Any) -> bytes:
    """`msgpack.packb(value, use_bin_type=True)`, by a packer kept for the thread: `packb`
    makes a new one, with its 256 KB buffer, every time, which costs more than packing the
    few hundred bytes of a frame or a receipt. (A packer is not to be shared between threads;
    after an error it starts empty again; its buffer stays as large as the largest value it
    packed, which the frame limits bound.)"""
    try:
        pack = _packers.pack
    except AttributeError:
        pack = _packers.pack = msgpack.Packer(use_bin_type=True).pack
    packed: bytes = pack(value)
    return packed


def encode(value: Encodable, *, types_checked: bool = False) -> bytes:
    """Pack `value` canonically. Only int, bytes, str, list and tuple are allowed.

    `types_checked=True` skips checking that, for values built only of fields that were
    checked one by one already (a parsed vertex or transaction): there the walk over every
    item costs more than the packing itself.
    """
    if not types_checked:
        _check_types(value)
    try:
        return packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"cannot encode canonically: {exc}") from None


def array_header(length: int) -> bytes:
    """msgpack's header of an array of `length` items. An array encodes as this header and
    then each item's encoding in turn, so encodings made once can be joined into a larger
    one (a vertex from its transactions') with the very bytes `encode` would give."""
    if length < 16:
        return bytes((0x90 | length,))
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


_LEAVES = (int, bytes, str)


def _check_types(value: object) -> None:
    # msgpack would pack a float, a bool or a dict without complaint; none is canonical here.
    # Exact types first (the common case, and cheap); subclasses such as an IntEnum take
    # the isinstance path. `type(True) is bool`, so a bool never passes as an int.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is list or kind is tuple:
            stack.extend(item)  # type: ignore[arg-type]
        elif kind is int or kind is bytes or kind is str:
            continue
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, bool) or not isinstance(item, _LEAVES):
            raise TypeError(f"type {type(item).__name__} has no canonical encoding")


def decode(data: bytes, *, max_bytes: int, what: str) -> Any:
    """Unpack one msgpack value of at most `max_bytes`, refusing floats, maps and extensions."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"{what}: {len(data)} bytes is over the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_bytes,
            max_bin_len=max_bytes,
            max_array_len=min(max_bytes, _MAX_CONTAINER),
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise DecodeError(f"{what}: not valid msgpack ({exc})") from None


def decode_canonical(data: bytes, *, max_bytes: int, what: str) -> Any:
    """`decode`, then check that re-encoding gives the same bytes (see the module doc)."""
    value = decode(data, max_bytes=max_bytes, what=what)
    try:
        same = encode(value) == bytes(data)
    except TypeError:
        same = False
    if not same:
        raise DecodeError(f"{what}: not in canonical encoding")
    return value


def as_array(value: object, what: str, *, length: int | None = None, max_len: int = 0) -> list[Any]:
    """`value` as a list, of exactly `length` items or of at most `max_len` items.

    A tuple is taken too, so locally built values go through the same checks as decoded ones.
    """
    if not isinstance(value, list | tuple):
        raise DecodeError(f"{what}: expected an array, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise DecodeError(f"{what}: expected {length} fields, got {len(value)}")
    if length is None and len(value) > max_len:
        raise DecodeError(f"{what}: {len(value)} items is over the limit of {max_len}")
    return list(value)


def as_int(value: object, what: str, *, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi (bool and float are refused)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DecodeError(f"{what}: expected an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise DecodeError(f"{what}: {value} is outside {lo}..{hi}")
    return value


def as_bytes(value: object, what: str, *, size: int | None = None, max_len: int = 0) -> bytes:
    """`value` as bytes of exactly `size` bytes or of at most `max_len` bytes."""
    if not isinstance(value, bytes):
        raise DecodeError(f"{what}: expected bytes, got {type(value).__name__}")
    if size is not None and len(value) != size:
        raise DecodeError(f"{what}: expected {size} bytes, got {len(value)}")
    if size is None and len(value) > max_len:
        raise DecodeError(f"{what}: {len(value)} bytes is over the limit of {max_len}")
    return value


def as_str(value: object, what: str, *, max_len: int) -> str:
    """`value` as a str of 1..max_len characters."""
    if not isinstance(value, str):
        raise DecodeError(f"{what}: expected a string, got {type(value).__name__}")
    if not 1 <= len(value) <= max_len:
        raise DecodeError(f"{what}: length {len(value)} is outside 1..{max_len}")
    return value


def expect_header(fields: list[Any], tag: str, version: int, what: str) -> None:
    """Check the type tag and version that open every message."""
    if fields[0] != tag:
        raise DecodeError(f"{what}: type tag {fields[0]!r} is not {tag!r}")
    if type(fields[1]) is not int or fields[1] != version:  # (2.0 is not canonical)
        raise DecodeError(f"{what}: version {fields[1]!r} is not supported (want {version})")
