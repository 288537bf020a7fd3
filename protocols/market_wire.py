"""Messages of the market: usage receipts, and `/swarm/market/1.0.0` (quotes, channels).

A paid call is an ordinary `/swarm/infer/1.0.0` call whose request carries `"pay"`, the
client's IOU (`dag.channels.Iou`, its canonical bytes), and `"pay_seq"`, the call's number on
the channel, and whose answer is followed by its receipt, in a later frame of receipts (see
`protocols.infer_wire`):

    ["swarm/receipt", 2, channel id, call seq, expert id (hex), request hash, output hash,
     tokens_in, tokens_out, price per 1k, cost (milli-credits), charged (milli-credits)]

`cost` is tokens x price per 1,000 tokens, in thousandths of a credit, so that no call is
rounded; `charged` is the channel's running total.

The provider seals each frame of receipts with one signature by its host key (Ed25519, bound
to its account by the hello record) over the frame's Merkle tree: leaf i is
H(0x00 || `RECEIPT_DOMAIN` || the receipt's canonical encoding), a node is H(0x01 || left ||
right), an odd node is carried up as it is, and H is BLAKE2b-256; the seal signs
`SEAL_DOMAIN` || the count of receipts (4 bytes, big-endian) || the root. One signature and
one check per frame, where one per receipt cost more than the rest of a paid call; and each
receipt, kept with the seal, its position, the count and the sibling hashes from its leaf up
(`Receipt.evidence`), is still proof on its own of what the provider signed.

`/swarm/market/1.0.0` is one request and one reply per stream:

    {"t": "quote?"}                     -> {"t": "quote", "paid": bool, "prices": {expert: n},
                                             "ceiling": n, "valid_ms": n}
    {"t": "channel", "open": tx bytes}  -> {"t": "channel", "charged": n, "seq": n,
                                             "iou": bytes | nil, and the quote's "paid",
                                             "prices", "ceiling", "valid_ms"}
    any                                 -> {"t": "error", "reason": str}

`paid` says whether the provider serves for pay at all: a free one needs no channel. The
announced price of an expert is its floor; the price follows the provider's queue from there
up to `ceiling` (equal to the floor or 0: the price is fixed), and a quote holds it.

`channel` tells a provider about a channel the DAG has accepted for it (the `channel_open`
transaction itself); the reply gives the provider's state of that channel, so a client that
restarted resumes from it. A quote's prices hold for that client for `valid_ms`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from dag.codec import Encodable, as_array, as_bytes, as_int, encode, expect_header
from dag.crypto import PublicKey, Scheme, Signature
from dag.errors import DecodeError, RemoteProtocolError
from experts.tokens import count_tokens
from protocols import infer_wire as wire
from protocols.framing import field

VERSION = 1
MAX_FRAME = 64 << 10
RECEIPT_TAG = "swarm/receipt"
RECEIPT_VERSION = 2
RECEIPT_DOMAIN = b"swarm/receipt/2\x00"
SEAL_DOMAIN = b"swarm/receipt-seal/1\x00"
TREE_BYTES = 32
MAX_SEALED = 1 << 16  # receipts under one seal (a frame holds far fewer)
_LEAF = b"\x00" + RECEIPT_DOMAIN
DIGEST_BYTES = 16
MAX_COUNT = 2**62


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def request_digest(request: wire.Request) -> bytes:
    """What a receipt names as the request: a hash of everything the answer depends on."""
    if isinstance(request, wire.TensorRequest):
        shape = encode([request.rows, request.cols], types_checked=True)  # ints, as parsed
        return _digest(request.expert.encode(), shape, request.data)
    temperature = round(request.temperature * 1_000_000)  # the codec takes no floats
    params = encode(
        [request.max_tokens, temperature, request.top_k, request.seed], types_checked=True
    )
    return _digest(request.expert.encode(), request.prompt.encode(), params)


def output_digest(result: wire.TextResult | wire.ArrayResult) -> bytes:
    if isinstance(result, wire.ArrayResult):
        return _digest(encode([result.rows, result.cols], types_checked=True), result.data)
    return _digest(result.text.encode())


def max_tokens(request: wire.Request) -> int:
    """The most tokens a call can be charged: a tensor call's rows in and out (the same
    count), a generation's prompt and `max_tokens`. Both sides reserve this much."""
    if isinstance(request, wire.TensorRequest):
        return 2 * request.rows
    return count_tokens(request.prompt) + request.max_tokens


def cost_milli(tokens: int, price_per_1k: int) -> int:
    """The price of `tokens` tokens in thousandths of a credit (exact: no rounding)."""
    return tokens * price_per_1k


def credits_for(milli: int) -> int:
    """Whole credits that cover `milli` thousandths (what an IOU or a settle names)."""
    return -(-milli // 1000)


# A receipt's fields but the seal, as `Receipt` takes them.
_Fields = tuple[bytes, int, str, bytes, bytes, int, int, int, int, int]


class Seal(NamedTuple):
    """What binds one receipt to its frame's seal: the signature, the receipt's position
    among the frame's `size`, and the sibling hashes from its leaf up to the root."""

    signature: bytes
    position: int
    size: int
    path: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Receipt:
    """A provider's account of one answer (see the module doc); `seal` once it came in a
    sealed frame (the provider's own copy has none)."""

    channel_id: bytes
    seq: int
    expert: str
    request_hash: bytes
    output_hash: bytes
    tokens_in: int
    tokens_out: int
    price_per_1k: int
    cost_milli: int
    charged_milli: int
    seal: Seal | None = None
    # The root of the tree its frame's receipts gave when `open_receipts` opened it from its
    # checked fields, so that `verify` need not walk up its path again. Never copied: a
    # receipt made from this one (`dataclasses.replace`) walks its own path.
    _root: bytes | None = dataclasses.field(default=None, init=False, compare=False, repr=False)

    def to_wire(self) -> list[Any]:
        return [
            RECEIPT_TAG,
            RECEIPT_VERSION,
            self.channel_id,
            self.seq,
            self.expert,
            self.request_hash,
            self.output_hash,
            self.tokens_in,
            self.tokens_out,
            self.price_per_1k,
            self.cost_milli,
            self.charged_milli,
        ]

    def leaf(self) -> bytes:
        # Every field is typed: checked one by one by `from_wire`, or made by the provider.
        return _leaf(encode(self.to_wire(), types_checked=True))

    def evidence(self) -> list[Any]:
        """The receipt as kept: its fields and, if sealed, its seal (`from_evidence`)."""
        if self.seal is None:
            return [self.to_wire()]
        signature, position, size, path = self.seal
        return [self.to_wire(), signature, position, size, list(path)]

    def verify(self, host_public_key: bytes, checked: set[bytes] | None = None) -> None:
        """Raise `RemoteProtocolError` unless the provider's host key sealed this receipt
        (`InvalidSignature` for a seal that does not verify; else the receipt has no seal,
        or its path does not fit its position and size). `checked` holds the seals already
        checked: a frame's receipts share one, checked once."""
        if self.seal is None:
            raise RemoteProtocolError("the receipt is not sealed")
        signature, position, size, path = self.seal
        root = self._root if self._root is not None else _root_of(self.leaf(), position, size, path)
        message = seal_message(size, root)
        memo = host_public_key + signature + message  # (each part of a fixed size)
        if checked is not None and memo in checked:
            return
        PublicKey(Scheme.ED25519, host_public_key).verify(
            Signature(Scheme.ED25519, signature), message
        )
        if checked is not None:
            checked.add(memo)

    @classmethod
    def from_wire(cls, value: object, seal: Seal | None = None) -> Receipt:
        """Check a decoded receipt field by field (`DecodeError`); no seal check."""
        return cls(*_fields(value), seal)

    @classmethod
    def from_evidence(cls, value: object) -> Receipt:
        """A kept receipt (`evidence`) back, its seal still to check (`verify`)."""
        kept = as_array(value, "kept receipt", max_len=5)
        if len(kept) == 1:
            return cls.from_wire(kept[0])
        if len(kept) != 5:
            raise DecodeError("kept receipt: expected 1 or 5 fields")
        size = as_int(kept[3], "seal size", lo=1, hi=MAX_SEALED)
        position = as_int(kept[2], "seal position", lo=0, hi=size - 1)
        hashes = as_array(kept[4], "seal path", max_len=_depth(size))
        path = tuple(as_bytes(h, "seal path hash", size=TREE_BYTES) for h in hashes)
        signature = as_bytes(kept[1], "seal signature", size=64)
        return cls.from_wire(kept[0], Seal(signature, position, size, path))


def seal_message(size: int, root: bytes) -> bytes:
    return SEAL_DOMAIN + size.to_bytes(4, "big") + root


def seal_receipts(receipts: Sequence[Receipt], sign: Callable[[bytes], bytes]) -> dict[str, Any]:
    """A frame's receipts and their seal (`sign`: the provider's host key's signature)."""
    levels = _tree([r.leaf() for r in receipts])
    return {
        "receipts": [r.to_wire() for r in receipts],
        "seal": sign(seal_message(len(receipts), levels[-1][0])),
    }


def open_receipts(items: list[Any], signature: bytes) -> list[Receipt]:
    """A sealed frame's receipts (`seal_receipts`), each with its own proof of the seal, still
    to be checked (`Receipt.verify`). Raises `RemoteProtocolError` for a malformed one: the
    seal covers them all, so no receipt of such a frame can be checked."""
    if not 0 < len(items) <= MAX_SEALED:
        raise RemoteProtocolError(f"receipts: 1..{MAX_SEALED} under one seal")
    signature = as_bytes(signature, "seal signature", size=64)
    fields = [_fields(item) for item in items]
    # Each leaf from the checked fields (not from the item as it came: the evidence kept is
    # then canonical whatever the encoding that came).
    levels = _tree([_leaf_of(f) for f in fields])
    size, root = len(items), levels[-1][0]
    receipts = [
        Receipt(*f, Seal(signature, i, size, _path(levels, i))) for i, f in enumerate(fields)
    ]
    for receipt in receipts:
        object.__setattr__(receipt, "_root", root)  # (frozen: set once, here)
    return receipts


def _fields(value: object) -> _Fields:
    """A receipt's fields but the seal, checked one by one (see `Receipt.to_wire`)."""
    fields = as_array(value, "receipt", length=12)
    expect_header(fields, RECEIPT_TAG, RECEIPT_VERSION, "receipt")
    expert = fields[4]
    if not isinstance(expert, str) or len(expert) != 64:
        raise RemoteProtocolError("receipt: expert must be a 64-hex-digit id")
    return (
        as_bytes(fields[2], "receipt channel", size=32),
        as_int(fields[3], "receipt seq", lo=0, hi=MAX_COUNT),
        expert,
        as_bytes(fields[5], "receipt request hash", size=DIGEST_BYTES),
        as_bytes(fields[6], "receipt output hash", size=DIGEST_BYTES),
        as_int(fields[7], "receipt tokens_in", lo=0, hi=MAX_COUNT),
        as_int(fields[8], "receipt tokens_out", lo=0, hi=MAX_COUNT),
        as_int(fields[9], "receipt price", lo=0, hi=MAX_COUNT),
        as_int(fields[10], "receipt cost", lo=0, hi=MAX_COUNT),
        as_int(fields[11], "receipt charged", lo=0, hi=MAX_COUNT),
    )


def _leaf_of(fields: _Fields) -> bytes:
    """`Receipt(*fields).leaf()`, without making the receipt (fields checked by `_fields`)."""
    wire_fields: list[Encodable] = [RECEIPT_TAG, RECEIPT_VERSION, *fields]
    return _leaf(encode(wire_fields, types_checked=True))


def _leaf(encoded: bytes) -> bytes:
    return hashlib.blake2b(_LEAF + encoded, digest_size=TREE_BYTES).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.blake2b(b"\x01" + left + right, digest_size=TREE_BYTES).digest()


def _tree(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the Merkle tree over `leaves`, the root's (one hash) last."""
    levels = [leaves]
    while len(level := levels[-1]) > 1:
        up = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])  # carried up: an odd node is not paired with itself
        levels.append(up)
    return levels


def _path(levels: list[list[bytes]], index: int) -> tuple[bytes, ...]:
    path = []
    for level in levels[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return tuple(path)


def _depth(size: int) -> int:
    return (size - 1).bit_length()


def _root_of(leaf: bytes, index: int, size: int, path: tuple[bytes, ...]) -> bytes:
    """The root that `path` leads to from leaf `index` of `size` (`_path`, walked up)."""
    if not 0 <= index < size <= MAX_SEALED:
        raise RemoteProtocolError("seal: position out of range")
    node, rest = leaf, iter(path)
    try:
        while size > 1:
            if index % 2:
                node = _node(next(rest), node)
            elif index + 1 < size:
                node = _node(node, next(rest))
            index, size = index // 2, (size + 1) // 2
    except StopIteration:
        raise RemoteProtocolError("seal: path too short") from None
    if next(rest, None) is not None:
        raise RemoteProtocolError("seal: path too long")
    return node


# -- /swarm/market/1.0.0 ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """A provider's prices per expert, held for the asking client for `valid_ms`."""

    paid: bool
    prices: dict[str, int]
    valid_ms: int
    ceiling: int = 0

    def encode(self) -> dict[str, Any]:
        return {"t": "quote", "v": VERSION, **self._fields()}

    def _fields(self) -> dict[str, Any]:
        return {
            "paid": self.paid,
            "prices": self.prices,
            "ceiling": self.ceiling,
            "valid_ms": self.valid_ms,
        }


@dataclass(frozen=True, slots=True)
class ChannelState:
    """A provider's state of one channel: what it has charged, the last IOU it holds."""

    charged_milli: int
    seq: int
    iou: bytes | None
    quote: Quote

    def encode(self) -> dict[str, Any]:
        return {
            "t": "channel",
            "v": VERSION,
            "charged": self.charged_milli,
            "seq": self.seq,
            "iou": self.iou,
            **self.quote._fields(),
        }


def quote_request() -> dict[str, Any]:
    return {"t": "quote?", "v": VERSION}


def channel_request(open_tx: bytes) -> dict[str, Any]:
    return {"t": "channel", "v": VERSION, "open": open_tx}


def error_reply(reason: str) -> dict[str, Any]:
    return {"t": "error", "v": VERSION, "reason": reason[:500]}


def decode_request(body: dict[str, Any], *, peer: str) -> bytes | None:
    """A client's request: None for a quote, the `channel_open` bytes for a channel."""
    if body["v"] != VERSION:
        raise RemoteProtocolError(f"market version {body['v']} is not {VERSION}", peer=peer)
    if body["t"] == "quote?":
        return None
    if body["t"] == "channel":
        return bytes(field(body, "open", bytes, peer=peer, max_len=MAX_FRAME))
    raise RemoteProtocolError(f"unknown market request {body['t']!r}", peer=peer)


def _quote(body: dict[str, Any], peer: str) -> Quote:
    paid = field(body, "paid", bool, peer=peer)
    prices = field(body, "prices", dict, peer=peer)
    if len(prices) > 256:
        raise RemoteProtocolError("quote: too many experts", peer=peer)
    for expert, price in prices.items():
        if not isinstance(expert, str) or len(expert) != 64:
            raise RemoteProtocolError("quote: expert must be a 64-hex-digit id", peer=peer)
        if type(price) is not int or not 0 <= price <= 10**9:
            raise RemoteProtocolError("quote: price must be 0..1e9", peer=peer)
    valid_ms = field(body, "valid_ms", int, peer=peer)
    if not 0 <= valid_ms <= 3_600_000:
        raise RemoteProtocolError("quote: valid_ms must be 0..3600000", peer=peer)
    ceiling = field(body, "ceiling", int, peer=peer)
    if not 0 <= ceiling <= 10**9:
        raise RemoteProtocolError("quote: ceiling must be 0..1e9", peer=peer)
    return Quote(paid, dict(prices), valid_ms, ceiling)


def decode_reply(body: dict[str, Any], *, peer: str) -> Quote | ChannelState:
    """A provider's reply; its `error` becomes a `RemoteProtocolError` with the reason."""
    if body["v"] != VERSION:
        raise RemoteProtocolError(f"market version {body['v']} is not {VERSION}", peer=peer)
    if body["t"] == "error":
        reason = field(body, "reason", str, peer=peer, max_len=500)
        raise RemoteProtocolError(f"provider refused: {reason}", peer=peer)
    quote = _quote(body, peer)
    if body["t"] == "quote":
        return quote
    if body["t"] == "channel":
        charged = field(body, "charged", int, peer=peer)
        seq = field(body, "seq", int, peer=peer)
        iou = body.get("iou")
        if iou is not None and not isinstance(iou, bytes):
            raise RemoteProtocolError("channel: iou must be bytes or nil", peer=peer)
        if not 0 <= charged <= MAX_COUNT or not 0 <= seq <= MAX_COUNT:
            raise RemoteProtocolError("channel: counts out of range", peer=peer)
        return ChannelState(charged, seq, iou, quote)
    raise RemoteProtocolError(f"unknown market reply {body['t']!r}", peer=peer)
