"""Sealed frames of receipts (`protocols.market_wire`): one signature per frame, each
receipt still proof on its own. Sans-IO."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgpack
import pytest

from dag.codec import decode, encode
from dag.crypto import Scheme, SigningKey
from dag.errors import DecodeError, InvalidSignature, RemoteProtocolError
from protocols import market_wire as mw

HOST = SigningKey(Scheme.ED25519, b"\x07" * 32)
OTHER = SigningKey(Scheme.ED25519, b"\x08" * 32)


def receipt(seq: int) -> mw.Receipt:
    return mw.Receipt(b"c" * 32, seq, "e" * 64, b"r" * 16, b"o" * 16, 1, 2, 10, 30, 30 * seq)


def frame(count: int, key: SigningKey = HOST) -> dict[str, Any]:
    """What a provider sends: `count` receipts, sealed, through msgpack and back."""
    sealed = mw.seal_receipts([receipt(i) for i in range(count)], lambda m: key.sign(m).value)
    body: dict[str, Any] = msgpack.unpackb(msgpack.packb(sealed, use_bin_type=True))
    return body


def opened(count: int, key: SigningKey = HOST) -> list[mw.Receipt]:
    body = frame(count, key)
    return mw.open_receipts(body["receipts"], body["seal"])


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 100])
def test_every_receipt_of_a_frame_proves_itself_with_one_seal_check(count: int) -> None:
    checked: set[bytes] = set()
    receipts = opened(count)
    assert [r.seq for r in receipts] == list(range(count))
    for r in receipts:
        assert r.seal is not None and r.seal.size == count
        assert len(r.seal.path) <= (count - 1).bit_length()
        r.verify(HOST.public_key.raw, checked)
        # Kept on its own (as the client stores it), it is still the provider's.
        stored = encode(r.evidence())
        kept = mw.Receipt.from_evidence(decode(stored, max_bytes=len(stored), what="kept"))
        assert kept == r
        kept.verify(HOST.public_key.raw)
    assert len(checked) == 1  # one frame, one signature checked


def test_a_receipt_opened_from_its_frame_is_checked_without_walking_its_path_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walks: list[int] = []
    walk = mw._root_of

    def counted(leaf: bytes, index: int, size: int, path: tuple[bytes, ...]) -> bytes:
        walks.append(index)
        return walk(leaf, index, size, path)

    monkeypatch.setattr(mw, "_root_of", counted)
    receipts = opened(5)
    checked: set[bytes] = set()
    for r in receipts:
        r.verify(HOST.public_key.raw, checked)
    assert walks == [] and len(checked) == 1  # the root their frame gave when opened
    # Kept and read back, or changed, a receipt walks its own path to the root.
    stored = encode(receipts[3].evidence())
    mw.Receipt.from_evidence(decode(stored, max_bytes=len(stored), what="kept")).verify(
        HOST.public_key.raw, checked
    )
    with pytest.raises(InvalidSignature):
        replace(receipts[1], tokens_in=9).verify(HOST.public_key.raw, checked)
    assert walks == [3, 1]


@pytest.mark.parametrize("count", [1, 2, 5, 8])
def test_a_receipt_changed_after_sealing_is_not_the_providers(count: int) -> None:
    for r in opened(count):
        for change in (
            {"tokens_out": r.tokens_out + 1},
            {"cost_milli": r.cost_milli + 1},
            {"seq": r.seq + count},
            {"output_hash": b"x" * 16},
        ):
            with pytest.raises(InvalidSignature):
                replace(r, **change).verify(HOST.public_key.raw)


def test_a_seal_proves_nothing_under_another_key_position_size_or_frame() -> None:
    receipts = opened(5)
    r = receipts[2]
    assert r.seal is not None
    with pytest.raises(InvalidSignature):
        r.verify(OTHER.public_key.raw)
    # (The same shape of path at another position or size: it leads to another root.)
    with pytest.raises(InvalidSignature):
        replace(r, seal=r.seal._replace(position=3)).verify(HOST.public_key.raw)
    with pytest.raises(InvalidSignature):
        replace(r, seal=r.seal._replace(size=6)).verify(HOST.public_key.raw)
    with pytest.raises(RemoteProtocolError, match="too short"):
        replace(r, seal=r.seal._replace(path=r.seal.path[:-1])).verify(HOST.public_key.raw)
    with pytest.raises(RemoteProtocolError, match="too long"):
        longer = r.seal.path + (b"p" * 32,)
        replace(r, seal=r.seal._replace(path=longer)).verify(HOST.public_key.raw)
    with pytest.raises(RemoteProtocolError, match="out of range"):
        replace(r, seal=r.seal._replace(position=5)).verify(HOST.public_key.raw)
    # The seal of another frame of the same size, over other receipts.
    other = mw.seal_receipts([receipt(i + 10) for i in range(5)], lambda m: HOST.sign(m).value)
    with pytest.raises(InvalidSignature):
        replace(r, seal=r.seal._replace(signature=other["seal"])).verify(HOST.public_key.raw)
    # A seal already checked for one frame does not stand for a receipt it does not cover.
    checked: set[bytes] = set()
    r.verify(HOST.public_key.raw, checked)
    with pytest.raises(InvalidSignature):
        replace(r, tokens_in=9).verify(HOST.public_key.raw, checked)
    with pytest.raises(RemoteProtocolError, match="not sealed"):
        receipt(1).verify(HOST.public_key.raw)


def test_a_frame_reordered_or_with_a_receipt_swapped_in_fails_its_seal() -> None:
    body = frame(4)
    swapped = [body["receipts"][1], body["receipts"][0], *body["receipts"][2:]]
    for r in mw.open_receipts(swapped, body["seal"]):
        with pytest.raises(InvalidSignature):
            r.verify(HOST.public_key.raw)
    forged = [*body["receipts"][:3], receipt(9).to_wire()]
    for r in mw.open_receipts(forged, body["seal"]):
        with pytest.raises(InvalidSignature):
            r.verify(HOST.public_key.raw)


@pytest.mark.parametrize(
    ("items", "seal", "error"),
    [
        ([], b"s" * 64, "1..65536"),
        ([receipt(1).to_wire()], b"s" * 63, "seal signature"),
        ([receipt(1).to_wire(), ["not", "a receipt"]], b"s" * 64, "receipt"),
        ([[*receipt(1).to_wire()[:2], b"c" * 31, *receipt(1).to_wire()[3:]]], b"s" * 64, "32"),
        ([[*receipt(1).to_wire()[:1], 1, *receipt(1).to_wire()[2:]]], b"s" * 64, "version"),
        ([[*receipt(1).to_wire()[:1], 2.0, *receipt(1).to_wire()[2:]]], b"s" * 64, "version"),
    ],
)
def test_a_malformed_frame_of_receipts_is_refused_whole(
    items: list[Any], seal: bytes, error: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=error):
        mw.open_receipts(items, seal)


@pytest.mark.parametrize(
    "kept",
    [
        "receipt",
        [],
        [receipt(1).to_wire(), b"s" * 64],
        [receipt(1).to_wire(), b"s" * 64, 0, 0, []],  # size 0
        [receipt(1).to_wire(), b"s" * 64, 2, 2, [b"p" * 32]],  # position past the size
        [receipt(1).to_wire(), b"s" * 64, 0, 2, [b"p" * 32, b"q" * 32]],  # path too long
        [receipt(1).to_wire(), b"s" * 64, 0, 2, [b"p" * 31]],
        [receipt(1).to_wire(), b"s", 0, 2, [b"p" * 32]],
    ],
)
def test_a_corrupt_kept_receipt_is_refused(kept: Any) -> None:
    with pytest.raises(DecodeError):
        mw.Receipt.from_evidence(kept)
