from __future__ import annotations

import msgpack
import pytest

from dag.errors import RemoteProtocolError
from protocols.errors import FrameTooLarge
from protocols.framing import HEADER, FrameDecoder, decode_body, encode_frame, field


def test_frames_split_at_any_byte_boundary() -> None:
    wire = encode_frame({"t": "a", "v": 1, "x": b"\x00" * 300}) + encode_frame({"t": "b", "v": 1})
    for cut in range(len(wire) + 1):
        dec = FrameDecoder()
        got = []
        for part in (wire[:cut], wire[cut:]):
            dec.feed(part)
            while (payload := dec.next_frame()) is not None:
                got.append(decode_body(payload)["t"])
        assert got == ["a", "b"]


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    dec = FrameDecoder(max_frame=1000)
    dec.feed(HEADER.pack(1001))  # no body at all: the header is enough to refuse
    with pytest.raises(FrameTooLarge) as info:
        dec.next_frame()
    assert info.value.limit == 1000 and info.value.size == 1001


@pytest.mark.parametrize(
    "payload",
    [
        b"\xc1",  # never-used msgpack byte
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"t": "x"}),
        msgpack.packb({"t": 1, "v": 1}),
        msgpack.packb({"t": "x", "v": True}),
        msgpack.packb({1: 2}),
    ],
)
def test_malformed_bodies_raise_one_typed_error(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_body(payload, peer="p")


def test_field_checks_type_and_length() -> None:
    body = {"t": "m", "v": 1, "n": 5, "s": "abc", "b": True}
    assert field(body, "n", int) == 5
    with pytest.raises(RemoteProtocolError, match="'b'"):
        field(body, "b", int)  # a bool is not an int on our wire
    with pytest.raises(RemoteProtocolError, match="longer than 2"):
        field(body, "s", str, max_len=2)
    with pytest.raises(RemoteProtocolError, match="'missing'"):
        field(body, "missing", str)
