"""Signed expert announcements: what goes on gossipsub topic `swarm/experts/1` and in the DHT.

One canonical msgpack array (see `dag.codec` and `protocols/WIRE.md`), 13 fields in order:

    ["swarm/announce", 1, peer_id, scheme, account_key, binding_account_sig, binding_host_sig,
     [addr, ...], [[expert_id, domain, kind, price_per_1k, capacity, queue_depth, latency_us],
     ...], seq, issued_ms, expires_ms, [sig_scheme, signature]]

The account key signs `SIGN_TAG + encode(first 12 fields)`. The account is tied to the peer id
by the same `Binding` as in hello (account key and host key both sign it), so a node can only
announce for the account it holds, and only from the host key it holds.

`decode` checks, cheapest first: the size, canonical msgpack, every field's type and bound,
the expiry rules, the binding, then the account signature. It raises `DecodeError` (shape),
`InvalidAnnouncement` (a rule), `ExpiredAnnouncement` or `InvalidSignature`, all
`RemoteProtocolError`s carrying `peer`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from libp2p.peer.id import ID

from dag.codec import (
    as_array,
    as_bytes,
    as_int,
    as_str,
    decode_canonical,
    encode,
    expect_header,
)
from dag.crypto import PublicKey, Signature, SigningKey
from dag.errors import LocalProtocolError, RemoteProtocolError
from dag.tx import signature_fields, signature_from_fields
from experts.directory import Directory, Offer
from experts.manifest import KINDS
from protocols.hello import ED25519_PEER_PREFIX, HOST_SIG_BYTES, PEER_ID_BYTES, Binding

TAG = "swarm/announce"
VERSION = 1
SIGN_TAG = b"swarm-node/announce/v1\x00"
# The largest record within every field bound is about 17.2 KB (ML-DSA-65, 64 offers, 8
# addrs of 256 chars), so any valid record fits.
MAX_BYTES = 20 * 1024
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
MAX_OFFERS = 64
MAX_TTL_MS = 5 * 60_000
DEFAULT_TTL_MS = 60_000
# How far `issued_ms` may run ahead of the receiver's clock.
MAX_CLOCK_SKEW_MS = 10_000
MAX_KEY_BYTES = 4096
EXPERT_ID_BYTES = 32
U32 = 2**32 - 1
U63 = 2**63 - 1
_FIELDS = 13
_DOMAIN = re.compile(r"[a-z0-9_.-]{1,32}")
_ADDR = re.compile(r"/[\x21-\x7e]*")


class InvalidAnnouncement(RemoteProtocolError):
    """A well-formed announcement that breaks a rule: a bad domain, an offer twice, its times."""


class ExpiredAnnouncement(RemoteProtocolError):
    """An announcement past its expiry: late, not forged, so worth less of a penalty."""


@dataclass(frozen=True, slots=True)
class Announcement:
    """A provider's signed list of offers. Build with `create`, read with `decode`."""

    peer_id: str
    binding: Binding
    addrs: tuple[str, ...]
    offers: tuple[Offer, ...]
    seq: int
    issued_ms: int
    expires_ms: int
    signature: Signature

    @property
    def account(self) -> bytes:
        """The account id of the announcing node (BLAKE2b-256 of scheme byte and key)."""
        return self.binding.account_key.account_id

    def _body(self) -> list[Any]:
        key = self.binding.account_key
        return [
            TAG,
            VERSION,
            ID.from_base58(self.peer_id).to_bytes(),
            int(key.scheme),
            key.raw,
            self.binding.account_sig,
            self.binding.host_sig,
            list(self.addrs),
            [_offer_fields(o) for o in self.offers],
            self.seq,
            self.issued_ms,
            self.expires_ms,
        ]

    def signed_message(self) -> bytes:
        """The bytes the account key signs: the tag, then the first 12 fields encoded."""
        return SIGN_TAG + encode(self._body())

    def encode(self) -> bytes:
        """The canonical wire bytes (the gossipsub message data and the DHT record value)."""
        return encode([*self._body(), signature_fields(self.signature)])

    @classmethod
    def create(
        cls,
        *,
        peer_id: str,
        account: SigningKey,
        host_sign: Callable[[bytes], bytes],
        addrs: Sequence[str],
        offers: Sequence[Offer],
        seq: int,
        issued_ms: int,
        ttl_ms: int = DEFAULT_TTL_MS,
    ) -> Announcement:
        """Sign an announcement; `host_sign` is the libp2p private key's `sign` method.

        Use a `seq` that grows across restarts (e.g. `issued_ms`): receivers keep only the
        highest. Raises `LocalProtocolError` if the record breaks a limit (too many offers,
        too large, a bad domain): the same checks a receiver makes, run on our own bytes.
        """
        try:
            unsigned = cls(
                peer_id,
                Binding.create(peer_id, account, host_sign),
                tuple(addrs),
                tuple(offers),
                seq,
                issued_ms,
                issued_ms + ttl_ms,
                Signature(account.scheme, b""),
            )
            signed = replace(unsigned, signature=account.sign(unsigned.signed_message()))
            # Our own bytes through the receiver's checks: what we send is what peers accept.
            return cls.decode(signed.encode(), now_ms=issued_ms)
        except (RemoteProtocolError, TypeError, ValueError) as exc:
            raise LocalProtocolError(f"refusing to announce: {exc}") from None

    @classmethod
    def decode(cls, data: bytes, *, now_ms: int, peer: str | None = None) -> Announcement:
        """Parse and verify announcement bytes from outside (see the module doc).

        `peer` is who handed us the bytes (a gossip relay or a DHT node), named in errors so
        the caller can score it; it is not compared with the record's own peer id, because
        gossip relays records of other peers.
        """
        try:
            ann = _parse(decode_canonical(data, max_bytes=MAX_BYTES, what="announcement"))
            ann._check_time(now_ms)
            ann.binding.verify(ann.peer_id)
            ann.binding.account_key.verify(ann.signature, ann.signed_message())
        except RemoteProtocolError as exc:
            exc.peer = exc.peer or peer
            raise
        return ann

    def _check_time(self, now_ms: int) -> None:
        if self.expires_ms <= self.issued_ms:
            raise InvalidAnnouncement("announcement: expires_ms is not after issued_ms")
        if self.expires_ms - self.issued_ms > MAX_TTL_MS:
            raise InvalidAnnouncement(f"announcement: lives longer than {MAX_TTL_MS} ms")
        if self.issued_ms > now_ms + MAX_CLOCK_SKEW_MS:
            raise InvalidAnnouncement(
                f"announcement: issued {self.issued_ms - now_ms} ms in the future"
            )
        if self.expires_ms <= now_ms:
            raise ExpiredAnnouncement(
                f"announcement of {self.peer_id} expired {now_ms - self.expires_ms} ms ago"
            )

    def apply_to(self, directory: Directory, now_ms: int) -> bool:
        """Put this (verified) announcement into `directory`; True if it was new there."""
        return directory.apply(
            self.peer_id,
            self.account,
            self.addrs,
            self.offers,
            self.seq,
            self.expires_ms,
            now_ms,
        )


def _offer_fields(offer: Offer) -> list[Any]:
    return [
        bytes.fromhex(offer.expert_id),
        offer.domain,
        offer.kind,
        offer.price_per_1k,
        offer.capacity,
        offer.queue_depth,
        offer.latency_us,
    ]


def _parse(value: object) -> Announcement:
    w = "announcement"
    f = as_array(value, w, length=_FIELDS)
    expect_header(f, TAG, VERSION, w)
    peer_bytes = as_bytes(f[2], f"{w} peer_id", size=PEER_ID_BYTES)
    if not peer_bytes.startswith(ED25519_PEER_PREFIX):
        raise InvalidAnnouncement(f"{w} peer_id: not an Ed25519 identity peer id")
    key = PublicKey.parse(
        as_int(f[3], f"{w} scheme", lo=0, hi=255),
        as_bytes(f[4], f"{w} account_key", max_len=MAX_KEY_BYTES),
    )
    binding = Binding(
        key,
        as_bytes(f[5], f"{w} binding account signature", max_len=MAX_KEY_BYTES),
        as_bytes(f[6], f"{w} binding host signature", size=HOST_SIG_BYTES),
    )
    addrs = tuple(_addr(a, f"{w} addr") for a in as_array(f[7], f"{w} addrs", max_len=MAX_ADDRS))
    offers = tuple(_offer(o) for o in as_array(f[8], f"{w} offers", max_len=MAX_OFFERS))
    if len({o.expert_id for o in offers}) != len(offers):
        raise InvalidAnnouncement(f"{w}: offers one expert twice")
    return Announcement(
        peer_id=ID(peer_bytes).to_base58(),
        binding=binding,
        addrs=addrs,
        offers=offers,
        seq=as_int(f[9], f"{w} seq", lo=0, hi=U63),
        issued_ms=as_int(f[10], f"{w} issued_ms", lo=0, hi=U63),
        expires_ms=as_int(f[11], f"{w} expires_ms", lo=0, hi=U63),
        signature=signature_from_fields(f[12], f"{w} signature"),
    )


def _addr(value: object, what: str) -> str:
    addr = as_str(value, what, max_len=MAX_ADDR_LEN)
    if not _ADDR.fullmatch(addr):
        raise InvalidAnnouncement(f"{what}: {addr[:40]!r} is not a printable multiaddr")
    return addr


def _offer(value: object) -> Offer:
    w = "announcement offer"
    f = as_array(value, w, length=7)
    domain = as_str(f[1], f"{w} domain", max_len=32)
    if not _DOMAIN.fullmatch(domain):
        raise InvalidAnnouncement(f"{w} domain: {domain!r} is not [a-z0-9_.-]{{1,32}}")
    kind = as_str(f[2], f"{w} kind", max_len=16)
    if kind not in KINDS:
        raise InvalidAnnouncement(f"{w} kind: {kind!r} is not one of {KINDS}")
    return Offer(
        expert_id=as_bytes(f[0], f"{w} expert_id", size=EXPERT_ID_BYTES).hex(),
        domain=domain,
        kind="tensor" if kind == "tensor" else "generator",
        price_per_1k=as_int(f[3], f"{w} price_per_1k", lo=0, hi=U32),
        capacity=as_int(f[4], f"{w} capacity", lo=1, hi=U32),
        queue_depth=as_int(f[5], f"{w} queue_depth", lo=0, hi=U32),
        latency_us=as_int(f[6], f"{w} latency_us", lo=0, hi=U32),
    )
