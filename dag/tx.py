"""Account-model transactions, each signed by its account.

A transaction carries its sender's public key, so any node can verify it with no state; the
sender's account is the hash of that key (`dag.crypto.account_id_of`), never a separate field
that could disagree with it. Its conflict set is (account, nonce): two transactions of one
account with one nonce can never both be accepted.

Encoding (canonical msgpack, see `dag.codec`), one array:

    ["swarm/tx", 1, chain, scheme, public_key, nonce, kind, payload, [sig_scheme, signature]]

The first eight fields are the body. The id is BLAKE2b-256 of the body's encoding, and the
signature is over `SIGN_DOMAIN + id`. `chain` is the genesis digest, so a transaction signed
for one chain is refused by every other chain (`InvalidTransaction`), and its signature would
not verify there either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from dag.codec import (
    array_header,
    as_array,
    as_bytes,
    as_int,
    as_str,
    decode_canonical,
    encode,
    expect_header,
)
from dag.crypto import PublicKey, Signature, SigningKey, scheme_of
from dag.errors import InvalidSignature, InvalidTransaction
from dag.kinds import KindRegistry

TX_TAG = "swarm/tx"
TX_VERSION = 1
SIGN_DOMAIN = b"swarm/tx-sig/1\x00"
CHAIN_BYTES = 32
MAX_NONCE = 2**63 - 1
MAX_KIND_LEN = 32
# An ML-DSA-65 key and signature take 5,261 bytes; the rest is room for the payload.
MAX_TX_BYTES = 8192

ConflictKey = tuple[bytes, int]


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=32).digest()


def _body(
    chain: bytes, public_key: PublicKey, nonce: int, kind: str, payload: tuple[Any, ...]
) -> list[Any]:
    return [TX_TAG, TX_VERSION, chain, int(public_key.scheme), public_key.raw, nonce, kind, payload]


@dataclass(frozen=True, slots=True)
class Transaction:
    """A signed transaction. `id` and `account` are derived when it is built."""

    chain: bytes
    public_key: PublicKey
    nonce: int
    kind: str
    payload: tuple[Any, ...]
    signature: Signature
    id: bytes = field(init=False, repr=False, compare=False)
    account: bytes = field(init=False, repr=False, compare=False)
    # The canonical bytes (`to_bytes`), made with the id: a vertex's encoding joins them.
    encoded: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every field was checked when the transaction was parsed or created.
        body = encode(
            _body(self.chain, self.public_key, self.nonce, self.kind, self.payload),
            types_checked=True,
        )
        object.__setattr__(self, "id", _hash(body))
        object.__setattr__(self, "account", self.public_key.account_id)
        # The body's eight items (after its one-byte header), then the signature.
        signature = encode(signature_fields(self.signature), types_checked=True)
        object.__setattr__(self, "encoded", array_header(9) + body[1:] + signature)

    @classmethod
    def create(
        cls,
        key: SigningKey,
        *,
        chain: bytes,
        nonce: int,
        kind: str,
        payload: tuple[Any, ...],
        registry: KindRegistry,
    ) -> Transaction:
        """Check the payload with its kind, then sign a new transaction with `key`."""
        as_int(nonce, "transaction nonce", lo=0, hi=MAX_NONCE)
        payload = registry.get(kind).parse(payload, key.account_id)
        unsigned = _hash(encode(_body(chain, key.public_key, nonce, kind, payload)))
        return cls(chain, key.public_key, nonce, kind, payload, key.sign(SIGN_DOMAIN + unsigned))

    @property
    def conflict_key(self) -> ConflictKey:
        """The conflict set: at most one transaction per (account, nonce) is ever accepted."""
        return (self.account, self.nonce)

    def verify(self) -> None:
        """Raise `InvalidSignature` unless the sender's key signed this transaction."""
        self.public_key.verify(self.signature, SIGN_DOMAIN + self.id)

    def to_fields(self) -> list[Any]:
        """The encodable array (also embedded as is in a vertex)."""
        body = _body(self.chain, self.public_key, self.nonce, self.kind, self.payload)
        return [*body, signature_fields(self.signature)]

    def to_bytes(self) -> bytes:
        return self.encoded

    @classmethod
    def from_fields(cls, value: object, registry: KindRegistry, *, chain: bytes) -> Transaction:
        """Check a decoded array field by field; the signature is not verified here."""
        fields = as_array(value, "transaction", length=9)
        expect_header(fields, TX_TAG, TX_VERSION, "transaction")
        tx_chain = as_bytes(fields[2], "transaction chain", size=CHAIN_BYTES)
        if tx_chain != chain:
            raise InvalidTransaction("transaction is for another chain")
        public_key = PublicKey.parse(
            as_int(fields[3], "transaction scheme", lo=0, hi=255),
            as_bytes(fields[4], "transaction public key", max_len=4096),
        )
        nonce = as_int(fields[5], "transaction nonce", lo=0, hi=MAX_NONCE)
        kind = as_str(fields[6], "transaction kind", max_len=MAX_KIND_LEN)
        payload = registry.get(kind).parse(fields[7], public_key.account_id)
        signature = signature_from_fields(fields[8], "transaction signature")
        return cls(tx_chain, public_key, nonce, kind, payload, signature)

    @classmethod
    def from_bytes(cls, data: bytes, registry: KindRegistry, *, chain: bytes) -> Transaction:
        """Decode one transaction of at most `MAX_TX_BYTES` (signature not verified)."""
        value = decode_canonical(data, max_bytes=MAX_TX_BYTES, what="transaction")
        return cls.from_fields(value, registry, chain=chain)


def signature_from_fields(value: object, what: str) -> Signature:
    """Decode `[scheme id, signature bytes]`; an unknown scheme is `InvalidSignature`."""
    fields = as_array(value, what, length=2)
    scheme_id = as_int(fields[0], f"{what} scheme", lo=0, hi=255)
    scheme = scheme_of(scheme_id)
    if scheme is None:
        raise InvalidSignature(f"{what}: unknown signature scheme id {scheme_id}")
    return Signature(scheme, as_bytes(fields[1], what, max_len=4096))


def signature_fields(signature: Signature) -> list[Any]:
    """The encodable form of a signature, scheme first."""
    return [int(signature.scheme), signature.value]
