"""DAG vertices: a signed batch of transactions on top of 1..4 parent vertices.

Encoding (canonical msgpack, see `dag.codec`), one array:

    ["swarm/vertex", 1, chain, scheme, author_key, [parent ids], timestamp_ms, [txs],
     [sig_scheme, signature]]

The id is BLAKE2b-256 over the encoding of the first eight fields (the unsigned body, which
holds the signed transactions whole); the author signs `SIGN_DOMAIN + id`. Content addressing
makes a cycle impossible (a vertex would have to contain its own hash); we still refuse a
vertex naming itself or one parent twice.

Checks come in three steps so the caller can do the cheap ones first:

1. `Vertex.from_bytes`: size before reading, every field's type and bound, the chain, limits
   on parents and transactions, no conflict set twice in one vertex (`DecodeError`,
   `InvalidVertex`, `InvalidTransaction`).
2. `check_time`: once the parents are known, the timestamp is not before any parent's and
   not further ahead of the receiver's clock than `MAX_CLOCK_SKEW_MS` (`InvalidVertex`).
3. `verify`: every signature, each exactly once (`InvalidSignature`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dag.codec import (
    array_header,
    as_array,
    as_bytes,
    as_int,
    decode_canonical,
    encode,
    expect_header,
)
from dag.crypto import PublicKey, Signature, SigningKey
from dag.errors import InvalidSignature, InvalidVertex, LocalProtocolError
from dag.genesis import Genesis
from dag.kinds import KindRegistry
from dag.tx import CHAIN_BYTES, Transaction, signature_fields, signature_from_fields

VERTEX_TAG = "swarm/vertex"
VERTEX_VERSION = 1
SIGN_DOMAIN = b"swarm/vertex-sig/1\x00"
ID_BYTES = 32
MAX_PARENTS = 4
MAX_TXS = 256
MAX_VERTEX_BYTES = 2 * 1024 * 1024
MAX_TIMESTAMP_MS = 2**63 - 1
# How far a vertex's timestamp may run ahead of the receiver's wall clock.
MAX_CLOCK_SKEW_MS = 10_000


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=ID_BYTES).digest()


def genesis_vertex_id(genesis: Genesis) -> bytes:
    """The root every node of the chain shares: a function of the genesis digest alone.

    The root is not a `Vertex` (nobody signs it); it is accepted by definition and carries
    no transactions, since the genesis balances are the ledger's starting state.
    """
    return _hash(encode(["swarm/genesis-vertex", 1, genesis.digest]))


@dataclass(frozen=True, slots=True)
class Vertex:
    """A signed vertex. `id` and `author` (the author's account) are derived when built."""

    chain: bytes
    author_key: PublicKey
    parents: tuple[bytes, ...]
    timestamp_ms: int
    txs: tuple[Transaction, ...]
    signature: Signature
    id: bytes = field(init=False, repr=False, compare=False)
    author: bytes = field(init=False, repr=False, compare=False)
    # The canonical bytes, once made or received: a vertex is stored, announced and served
    # as these, and encoding one of many transactions is not free.
    _encoded: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every field was checked when the vertex was parsed or its transactions built.
        object.__setattr__(self, "id", _hash(self._body()))
        object.__setattr__(self, "author", self.author_key.account_id)
        object.__setattr__(self, "_encoded", None)

    def _body(self) -> bytes:
        """The encoding of the unsigned body: its first seven items, then the transactions,
        joined from their own encodings rather than packed again one field at a time."""
        head = encode(
            [
                VERTEX_TAG,
                VERTEX_VERSION,
                self.chain,
                int(self.author_key.scheme),
                self.author_key.raw,
                list(self.parents),
                self.timestamp_ms,
            ],
            types_checked=True,
        )
        txs = b"".join(tx.encoded for tx in self.txs)
        return array_header(8) + head[1:] + array_header(len(self.txs)) + txs

    @classmethod
    def create(
        cls,
        key: SigningKey,
        *,
        chain: bytes,
        parents: Sequence[bytes],
        timestamp_ms: int,
        txs: Sequence[Transaction] = (),
    ) -> Vertex:
        """Sign a new vertex; `LocalProtocolError` if it breaks a limit (a bug of ours)."""
        unsigned = cls(
            chain,
            key.public_key,
            tuple(parents),
            timestamp_ms,
            tuple(txs),
            Signature(key.scheme, b""),
        )
        vertex = cls(
            chain,
            key.public_key,
            tuple(parents),
            timestamp_ms,
            tuple(txs),
            key.sign(SIGN_DOMAIN + unsigned.id),
        )
        try:
            vertex.check_shape()
        except InvalidVertex as exc:
            raise LocalProtocolError(f"refusing to build an invalid vertex: {exc}") from None
        if len(vertex.to_bytes()) > MAX_VERTEX_BYTES:
            raise LocalProtocolError(f"vertex is over {MAX_VERTEX_BYTES} bytes; batch fewer txs")
        return vertex

    def check_shape(self) -> None:
        """The rules that need nothing but the vertex itself (`InvalidVertex`)."""
        if not 1 <= len(self.parents) <= MAX_PARENTS:
            raise InvalidVertex(f"vertex must have 1 to {MAX_PARENTS} parents")
        if len(set(self.parents)) != len(self.parents):
            raise InvalidVertex("vertex names a parent twice")
        if self.id in self.parents:
            raise InvalidVertex("vertex names itself as a parent")
        if len(self.txs) > MAX_TXS:
            raise InvalidVertex(f"vertex holds more than {MAX_TXS} transactions")
        keys = {tx.conflict_key for tx in self.txs}
        if len(keys) != len(self.txs):
            raise InvalidVertex("vertex holds two transactions of one (account, nonce)")

    def check_time(self, now_ms: int, parent_timestamps: Iterable[int]) -> None:
        """Bound the timestamp by the parents' and by the receiver's clock (`InvalidVertex`)."""
        if self.timestamp_ms > now_ms + MAX_CLOCK_SKEW_MS:
            raise InvalidVertex(
                f"vertex timestamp is {self.timestamp_ms - now_ms} ms in the future "
                f"(limit {MAX_CLOCK_SKEW_MS} ms)"
            )
        latest = max(parent_timestamps, default=0)
        if self.timestamp_ms < latest:
            raise InvalidVertex("vertex timestamp is before one of its parents'")

    def verify(self) -> None:
        """Check the author's signature and each transaction's, once each."""
        self.author_key.verify(self.signature, SIGN_DOMAIN + self.id)
        for index, tx in enumerate(self.txs):
            try:
                tx.verify()
            except InvalidSignature as exc:
                raise InvalidSignature(f"transaction {index} of vertex: {exc}") from None

    def to_bytes(self) -> bytes:
        if self._encoded is None:
            signature = encode(signature_fields(self.signature), types_checked=True)
            encoded = array_header(9) + self._body()[1:] + signature
            object.__setattr__(self, "_encoded", encoded)
            return encoded
        return self._encoded

    @classmethod
    def from_bytes(cls, data: bytes, registry: KindRegistry, *, chain: bytes) -> Vertex:
        """Decode and shape-check a vertex (step 1 of the module doc); no signature check."""
        value = decode_canonical(data, max_bytes=MAX_VERTEX_BYTES, what="vertex")
        fields = as_array(value, "vertex", length=9)
        expect_header(fields, VERTEX_TAG, VERTEX_VERSION, "vertex")
        if as_bytes(fields[2], "vertex chain", size=CHAIN_BYTES) != chain:
            raise InvalidVertex("vertex is for another chain")
        author_key = PublicKey.parse(
            as_int(fields[3], "vertex scheme", lo=0, hi=255),
            as_bytes(fields[4], "vertex author key", max_len=4096),
        )
        parents = tuple(
            as_bytes(p, "vertex parent", size=ID_BYTES)
            for p in as_array(fields[5], "vertex parents", max_len=MAX_PARENTS)
        )
        timestamp_ms = as_int(fields[6], "vertex timestamp", lo=0, hi=MAX_TIMESTAMP_MS)
        txs = tuple(
            Transaction.from_fields(tx, registry, chain=chain)
            for tx in as_array(fields[7], "vertex transactions", max_len=MAX_TXS)
        )
        signature = signature_from_fields(fields[8], "vertex signature")
        vertex = cls(chain, author_key, parents, timestamp_ms, txs, signature)
        vertex.check_shape()
        object.__setattr__(vertex, "_encoded", bytes(data))  # canonical: checked above
        return vertex
