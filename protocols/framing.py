"""Length-prefixed msgpack frames: the one wire encoding every swarm protocol uses.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. The length is
checked against the protocol's limit before a single byte of the body is read, so an
oversized frame costs the reader nothing. Every message body is a map with a type tag `t`
and a version `v`; the typed decoders of each protocol check the rest.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from dag.codec import packb
from dag.errors import RemoteProtocolError
from protocols.errors import FrameTooLarge

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 1 << 20


def encode_frame(body: dict[str, Any]) -> bytes:
    payload = packb(body)
    return HEADER.pack(len(payload)) + payload


def decode_body(payload: bytes, *, peer: str | None = None) -> dict[str, Any]:
    """Unpack one frame body into a map that has a str `t` and an int `v`."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise RemoteProtocolError(f"frame is not valid msgpack: {exc}", peer=peer) from None
    if not isinstance(body, dict):
        raise RemoteProtocolError("frame body must be a map", peer=peer)
    if not isinstance(body.get("t"), str) or type(body.get("v")) is not int:
        raise RemoteProtocolError("frame body lacks a type tag `t` or a version `v`", peer=peer)
    return body


class FrameDecoder:
    """Sans-IO frame splitter: feed bytes in, take complete frame payloads out."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, *, peer: str | None = None) -> None:
        self.max_frame = max_frame
        self.peer = peer
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self) -> bytes | None:
        """Return the next whole payload, None if more bytes are needed."""
        if len(self._buf) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buf)
        if size > self.max_frame:
            raise FrameTooLarge(size, self.max_frame, peer=self.peer)
        end = HEADER.size + size
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[HEADER.size : end])
        del self._buf[:end]
        return payload


def field(
    body: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    *,
    peer: str | None = None,
    max_len: int | None = None,
) -> Any:
    """Fetch a typed field from a decoded body, or raise a RemoteProtocolError naming it."""
    value = body.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise RemoteProtocolError(
            f"message {body.get('t')!r}: field {key!r} has the wrong type", peer=peer
        )
    if max_len is not None and hasattr(value, "__len__") and len(value) > max_len:
        raise RemoteProtocolError(
            f"message {body.get('t')!r}: field {key!r} is longer than {max_len}", peer=peer
        )
    return value
