"""Signed expert announcements: round trips, and every way a record is refused. No sockets."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import msgpack
import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from dag.codec import encode
from dag.crypto import Scheme, SigningKey
from dag.errors import DecodeError, InvalidSignature, LocalProtocolError, RemoteProtocolError
from experts.directory import Directory, Offer
from protocols.announce import (
    MAX_BYTES,
    MAX_CLOCK_SKEW_MS,
    MAX_TTL_MS,
    SIGN_TAG,
    Announcement,
    ExpiredAnnouncement,
    InvalidAnnouncement,
)

WIRE_MD = Path(__file__).parents[2] / "protocols" / "WIRE.md"
NOW = 1_700_000_000_000
OFFER = Offer("ab" * 32, "coding", "generator", 25, 4, 1, 850)


@dataclass
class Node:
    peer: str
    account: SigningKey
    host_sign: Callable[[bytes], bytes]

    def announce(self, **kw: Any) -> Announcement:
        args: dict[str, Any] = {
            "addrs": [f"/ip4/127.0.0.1/tcp/4001/p2p/{self.peer}"],
            "offers": [OFFER, replace(OFFER, expert_id="cd" * 32, kind="tensor", domain="context")],
            "seq": 7,
            "issued_ms": NOW,
        }
        args.update(kw)
        return Announcement.create(
            peer_id=self.peer, account=self.account, host_sign=self.host_sign, **args
        )


def node(scheme: Scheme = Scheme.ED25519) -> Node:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key).to_base58()
    return Node(peer, SigningKey.generate(scheme), kp.private_key.sign)


def signed(ann: Announcement, key: SigningKey, **changes: Any) -> bytes:
    """`ann` with `changes`, signed again by `key`: a record a remote peer could send."""
    body = replace(ann, **changes)
    return replace(body, signature=key.sign(body.signed_message())).encode()


def fields_of(data: bytes) -> list[Any]:
    out: list[Any] = msgpack.unpackb(data, raw=False)
    return out


def signed_fields(fields: list[Any], key: SigningKey) -> bytes:
    """Raw fields (any types) signed by `key`, so only the type checks can refuse them."""
    body = fields[:12]
    sig = key.sign(SIGN_TAG + msgpack.packb(body, use_bin_type=True))
    packed: bytes = msgpack.packb([*body, [int(sig.scheme), sig.value]], use_bin_type=True)
    return packed


@pytest.mark.parametrize("scheme", list(Scheme))
def test_round_trip_with_either_account_scheme(scheme: Scheme) -> None:
    n = node(scheme)
    ann = n.announce()
    data = ann.encode()
    got = Announcement.decode(data, now_ms=NOW + 1, peer="relay")
    assert got == ann and got.encode() == data
    assert got.peer_id == n.peer and got.account == n.account.account_id
    assert got.offers[0] == OFFER and got.expires_ms > got.issued_ms
    d = Directory()
    assert got.apply_to(d, NOW + 1)
    assert [x.provider for x in d.providers(expert_id=OFFER.expert_id, now_ms=NOW + 1)] == [n.peer]


def test_the_largest_record_within_every_bound_fits_the_size_cap() -> None:
    n = node(Scheme.ML_DSA_65)
    offers = [
        Offer(f"{i:064x}", "d" * 32, "generator", 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1)
        for i in range(64)
    ]
    addrs = ["/dns/" + "x" * 251] * 8
    ann = n.announce(offers=offers, addrs=addrs, seq=2**63 - 1)
    assert len(ann.encode()) <= MAX_BYTES
    assert Announcement.decode(ann.encode(), now_ms=NOW) == ann


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"offers": [OFFER] * 65}, "offers: 65 items"),
        ({"addrs": ["/ip4/1.2.3.4/tcp/1"] * 9}, "addrs: 9 items"),
        ({"offers": [replace(OFFER, domain="Coding!")]}, "domain"),
        ({"offers": [OFFER, OFFER]}, "one expert twice"),
        ({"offers": [replace(OFFER, expert_id="zz")]}, "non-hexadecimal"),
        ({"ttl_ms": MAX_TTL_MS + 1}, "lives longer"),
        ({"addrs": ["not a multiaddr"]}, "multiaddr"),
    ],
)
def test_create_refuses_what_a_receiver_would_refuse(change: dict[str, Any], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        node().announce(**change)


@pytest.mark.parametrize("scheme", list(Scheme))
def test_any_flipped_byte_is_rejected(scheme: Scheme) -> None:
    data = node(scheme).announce().encode()
    # every byte of an Ed25519 record; a spread of the larger ML-DSA one to stay fast
    step = 1 if scheme is Scheme.ED25519 else 41
    for i in range(0, len(data), step):
        forged = bytearray(data)
        forged[i] ^= 0x01
        with pytest.raises(RemoteProtocolError):
            Announcement.decode(bytes(forged), now_ms=NOW)


def test_unsigned_or_signed_by_another_account_is_rejected() -> None:
    n = node()
    ann = n.announce()
    unsigned = replace(ann, signature=replace(ann.signature, value=b"")).encode()
    with pytest.raises(InvalidSignature, match="wrong length"):
        Announcement.decode(unsigned, now_ms=NOW)
    with pytest.raises(DecodeError, match="expected 13 fields"):
        Announcement.decode(encode(fields_of(ann.encode())[:12]), now_ms=NOW)
    with pytest.raises(InvalidSignature, match="bad ed25519 signature"):
        Announcement.decode(signed(ann, SigningKey.generate(Scheme.ED25519)), now_ms=NOW)


def test_a_record_claiming_another_peer_id_or_account_is_rejected() -> None:
    a, b = node(), node()
    ann = a.announce()
    # a's account and binding, relabelled as b's peer: b's host key never signed it
    with pytest.raises(InvalidSignature, match="bad ed25519 signature|host key"):
        Announcement.decode(signed(ann, a.account, peer_id=b.peer), now_ms=NOW)
    # b's binding carried by a record a's account signs: the binding names b's account
    stolen = b.announce().binding
    with pytest.raises(InvalidSignature):
        Announcement.decode(signed(ann, a.account, binding=stolen), now_ms=NOW)


def test_time_rules() -> None:
    n = node()
    ann = n.announce(ttl_ms=1000)
    with pytest.raises(ExpiredAnnouncement, match="expired 0 ms ago") as info:
        Announcement.decode(ann.encode(), now_ms=NOW + 1000, peer="relay")
    assert info.value.peer == "relay"
    ahead = n.announce(issued_ms=NOW + MAX_CLOCK_SKEW_MS + 1)
    with pytest.raises(InvalidAnnouncement, match="in the future"):
        Announcement.decode(ahead.encode(), now_ms=NOW)
    Announcement.decode(n.announce(issued_ms=NOW + MAX_CLOCK_SKEW_MS).encode(), now_ms=NOW)
    long = signed(ann, n.account, expires_ms=NOW + MAX_TTL_MS + 1)
    with pytest.raises(InvalidAnnouncement, match="lives longer"):
        Announcement.decode(long, now_ms=NOW)
    backwards = signed(ann, n.account, expires_ms=NOW - 1)
    with pytest.raises(InvalidAnnouncement, match="not after"):
        Announcement.decode(backwards, now_ms=NOW - 10)


def test_too_large_is_rejected_before_it_is_read() -> None:
    data = node().announce().encode()
    with pytest.raises(DecodeError, match="over the limit") as info:
        Announcement.decode(data + b"\x00" * MAX_BYTES, now_ms=NOW, peer="relay")
    assert info.value.peer == "relay"


def _set(path: tuple[int, ...], value: Any) -> Callable[[list[Any]], None]:
    def change(fields: list[Any]) -> None:
        target = fields
        for i in path[:-1]:
            target = target[i]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (_set((0,), "swarm/vertex"), DecodeError, "type tag"),
        (_set((1,), 2), DecodeError, "version"),
        (_set((2,), "12D3Koo"), DecodeError, "peer_id: expected bytes"),
        (_set((2,), b"\x12\x20" + b"\x00" * 36), InvalidAnnouncement, "not an Ed25519"),
        (_set((2,), b"\x00" * 39), DecodeError, "peer_id: expected 38 bytes"),
        (_set((6,), b"\x00" * 10), DecodeError, "host signature: expected 64 bytes"),
        (_set((3,), 9), InvalidSignature, "unknown signature scheme"),
        (_set((4,), b"\x00" * 31), InvalidSignature, "public key must be"),
        (_set((7,), "/ip4/1.2.3.4"), DecodeError, "addrs: expected an array"),
        (_set((7, 0), 5), DecodeError, "addr: expected a string"),
        (_set((8,), {"a": 1}), DecodeError, "not valid msgpack"),
        (_set((8, 0, 0), b"\x01" * 31), DecodeError, "expert_id: expected 32 bytes"),
        (_set((8, 0, 1), ""), DecodeError, "domain: length 0"),
        (_set((8, 0, 2), "image"), InvalidAnnouncement, "kind"),
        (_set((8, 0, 3), -1), DecodeError, "price_per_1k: -1 is outside"),
        (_set((8, 0, 4), 0), DecodeError, "capacity: 0 is outside"),
        (_set((8, 0, 5), True), DecodeError, "not in canonical encoding"),
        (_set((8, 0, 6), 1.5), DecodeError, "not in canonical encoding"),
        (_set((8, 0), [1, 2]), DecodeError, "expected 7 fields"),
        (_set((9,), "7"), DecodeError, "seq: expected an integer"),
        (_set((10,), None), DecodeError, "not in canonical encoding"),
        (_set((10,), b"\x07"), DecodeError, "issued_ms: expected an integer"),
        (_set((11,), 2**64 - 1), DecodeError, "expires_ms: .* is outside"),
    ],
)
def test_wrong_types_and_bounds_are_rejected_even_when_signed(
    change: Callable[[list[Any]], None], error: type[Exception], match: str
) -> None:
    n = node()
    fields = fields_of(n.announce().encode())
    change(fields)
    with pytest.raises(error, match=match) as info:
        Announcement.decode(signed_fields(fields, n.account), now_ms=NOW, peer="relay")
    assert getattr(info.value, "peer", None) == "relay"


def test_non_canonical_encodings_and_garbage_are_rejected() -> None:
    n = node()
    fields = fields_of(n.announce().encode())
    wide_seq = msgpack.packb(fields[:9], use_bin_type=True)[1:]  # the first 9 fields
    data = b"\x9d" + wide_seq + b"\xcf" + (7).to_bytes(8, "big") + msgpack.packb(fields[10:])[1:]
    with pytest.raises(DecodeError, match="canonical"):
        Announcement.decode(data, now_ms=NOW)
    for junk in (b"", b"\xc1", b"\x92\x01", b"\xa3abc"):
        with pytest.raises(DecodeError):
            Announcement.decode(junk, now_ms=NOW)


def test_the_documented_test_vector_and_signed_bytes_rule() -> None:
    host = create_new_key_pair(b"\x01" * 32)
    peer = ID.from_pubkey(host.public_key).to_base58()
    ann = Announcement.create(
        peer_id=peer,
        account=SigningKey(Scheme.ED25519, b"\x02" * 32),
        host_sign=host.private_key.sign,
        addrs=["/ip4/127.0.0.1/tcp/4001"],
        offers=[OFFER],
        seq=1,
        issued_ms=NOW,
        ttl_ms=60_000,
    )
    block = re.search(r"### Test vector.*?```\n(.*?)```", WIRE_MD.read_text(), re.S)
    assert block is not None
    data = ann.encode()
    assert data.hex() == "".join(block.group(1).split())
    assert peer in WIRE_MD.read_text() and ann.account.hex() in WIRE_MD.read_text()
    # WIRE.md: the signed bytes can be cut from the input without re-encoding
    sig_field = encode([int(ann.signature.scheme), ann.signature.value])
    assert ann.signed_message() == SIGN_TAG + b"\x9c" + data[1 : -len(sig_field)]
