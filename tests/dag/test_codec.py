import threading

import msgpack
import pytest

from dag.codec import (
    Encodable,
    array_header,
    as_array,
    as_bytes,
    as_int,
    as_str,
    decode,
    decode_canonical,
    encode,
    expect_header,
    packb,
)
from dag.errors import DecodeError, RemoteProtocolError


def test_encoding_is_canonical_and_round_trips() -> None:
    value: list[Encodable] = ["tag", 1, b"\x00\x01", [2**40, -5, "é"], ()]
    data = encode(value)
    assert data == encode(list(value))
    assert decode_canonical(data, max_bytes=100, what="x") == [
        "tag",
        1,
        b"\x00\x01",
        [2**40, -5, "é"],
        [],
    ]
    # bytes are msgpack bin, text is str
    assert encode(b"ab")[0] == 0xC4
    assert encode("ab")[0] == 0xA2


def test_the_kept_packer_packs_as_msgpack_does_after_an_error_and_in_threads() -> None:
    values = [{"t": "x", "v": 1, "b": b"\x00" * 300}, [1, "é", [b"", 2**63]], 7]
    expected = [msgpack.packb(v, use_bin_type=True) for v in values]
    assert [packb(v) for v in values] == expected
    with pytest.raises(TypeError):
        packb([1, object()])  # part-way through a value, then refused
    with pytest.raises(TypeError, match="canonical"):
        encode([b"ab", 1.5])  # type: ignore[list-item]
    assert [packb(v) for v in values] == expected  # nothing of those is left behind
    packed: list[list[bytes]] = [[] for _ in range(4)]  # by each thread, its own packer

    def pack_many(out: list[bytes]) -> None:
        out.extend(packb(v) for _ in range(2_000) for v in values)

    threads = [threading.Thread(target=pack_many, args=(out,)) for out in packed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert packed == [expected * 2_000] * 4


@pytest.mark.parametrize("length", [0, 15, 16, 65_535, 65_536])
def test_an_array_joined_from_its_items_encodings_is_the_array_encoded(length: int) -> None:
    items: list[Encodable] = [i % 300 for i in range(length)]
    joined = array_header(length) + b"".join(encode(item) for item in items)
    assert joined == encode(items)


@pytest.mark.parametrize("bad", [1.5, True, None, {"a": 1}, [1, [2, 0.5]]])
def test_encode_refuses_what_has_no_canonical_form(bad: object) -> None:
    with pytest.raises(TypeError, match="canonical"):
        encode(bad)  # type: ignore[arg-type]


def test_size_is_checked_before_reading() -> None:
    with pytest.raises(DecodeError, match="over the limit of 10"):
        decode(b"\xff" * 11, max_bytes=10, what="frame")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (msgpack.packb({"a": 1}), "msgpack"),
        (msgpack.packb(msgpack.ExtType(1, b"x")), "msgpack"),
        (encode([1]) + b"\x01", "msgpack"),
        (encode([1, 2])[:-1], "msgpack"),
        (b"\xc1", "msgpack"),
    ],
)
def test_decode_refuses_maps_extensions_and_broken_frames(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode(data, max_bytes=100, what="frame")


@pytest.mark.parametrize(
    "data",
    [
        b"\x91\xcd\x00\x05",  # [5] with a 16-bit integer where one byte is canonical
        b"\x91\xda\x00\x01a",  # a 1-char str in the str16 form
        msgpack.packb([1.0]),
        msgpack.packb([True]),
    ],
)
def test_decode_canonical_refuses_other_encodings(data: bytes) -> None:
    assert decode(data, max_bytes=100, what="x") is not None
    with pytest.raises(DecodeError, match="canonical"):
        decode_canonical(data, max_bytes=100, what="x")


def test_field_helpers_check_type_and_bound() -> None:
    assert as_int(5, "n", lo=0, hi=5) == 5
    with pytest.raises(DecodeError, match="n: 6 is outside 0..5"):
        as_int(6, "n", lo=0, hi=5)
    with pytest.raises(DecodeError, match="expected an integer"):
        as_int(True, "n", lo=0, hi=5)
    with pytest.raises(DecodeError, match="expected 2 bytes"):
        as_bytes(b"abc", "b", size=2)
    with pytest.raises(DecodeError, match="over the limit"):
        as_bytes(b"abc", "b", max_len=2)
    with pytest.raises(DecodeError, match="expected bytes"):
        as_bytes("abc", "b", max_len=5)
    with pytest.raises(DecodeError, match="outside 1..3"):
        as_str("", "s", max_len=3)
    with pytest.raises(DecodeError, match="expected 2 fields"):
        as_array([1], "a", length=2)
    with pytest.raises(DecodeError, match="over the limit"):
        as_array([1, 2, 3], "a", max_len=2)
    with pytest.raises(DecodeError, match="version 2 is not supported"):
        expect_header(["t", 2], "t", 1, "msg")
    with pytest.raises(DecodeError, match="type tag"):
        expect_header(["u", 1], "t", 1, "msg")


def test_decode_error_is_a_remote_protocol_error() -> None:
    assert issubclass(DecodeError, RemoteProtocolError)
