"""Payment channels on the DAG: `channel_open`, `channel_settle`, `channel_close`, and IOUs.

A client locks a deposit for one provider until an expiry (`channel_open`). For each request
it signs an `Iou`: the cumulative amount it owes on the channel. The channel then ends exactly
once, in one of two ways:

- `channel_settle`, sent by the provider with the client's latest IOU: the provider gets the
  IOU's cumulative amount and the client gets the rest of the deposit back, at once;
- `channel_close`, sent by the client once the expiry has passed: the whole deposit goes back.

Why one final settlement and not several partial ones. The ledger must reach the same state
from every order of acceptance (see `dag.ledger`), but a settle (the provider's account) and
a close (the client's) have no order between them: if both could apply, "settle, then close"
pays the provider and "close, then settle" does not. No rule inside `plan` can fix that, since
either transaction may be accepted first on some node. So the two must be a conflict that
voting decides: every settle and close of a channel names the channel id as an extra conflict
key (`extra_conflict_keys`), and at most one transaction per key is ever accepted. With
partial settlements each settle would need its own place in a per-channel sequence; one final
settlement needs one key, and a provider that wants its credits earlier ends the channel and
the client opens another. Voting, the ledger and the engine honour these two hooks (see
`dag.kinds`): the engine puts every settle and close into the conflict set (channel id, -1),
refuses one once that set is decided, and refuses a vertex holding two of them.

State lives in buckets only, so the store restores it with no new table. The terms (client,
provider, deposit, expiry, IOU key) are hashed into the channel id, together with the chain
and the nonce of the opening transaction; settle and close carry the terms again and the
kind recomputes the id, so nothing but the locked amount has to be kept. The lock
`locked_under(channel_id)` holds the deposit while the channel is open and 0 before and after.
Only the client's transaction at that one nonce can fund it, exactly once. A settle or close
that finds it empty plans moves that would overdraw it, so it waits: for the open if that
is not applied yet, forever if the channel has ended (which the conflict key prevents).

Expiry. `plan` has no clock, and must not: the ledger sees a transaction, not the vertex
that carried it (the same transaction can sit in two vertices with two timestamps, and one
that waits is planned again later from the store, which keeps the transaction alone). So the
time check is an admission rule: a close may only be carried by a vertex whose timestamp is
at or after the expiry (`ChannelClose.not_before_ms`). Vertex timestamps are already bounded
by every honest receiver's clock (`MAX_CLOCK_SKEW_MS`), so a close cannot be accepted much
before the expiry, and once accepted its effect depends on nothing but the accepted set. A
provider should settle with a margin of more than that skew plus an acceptance time before the
expiry; after it, its settle and the client's close race, and voting picks one.

IOU keys are Ed25519, named in the open: an ML-DSA-65 signature (3,309 bytes) would not fit in
a settle beside the provider's own ML-DSA key and signature (`MAX_TX_BYTES`), and signing one
per request costs far more. The key can only pay this one provider up to this one deposit,
until the channel ends; the market layer makes a fresh one per channel.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from dag.codec import as_array, as_bytes, as_int, decode, encode, expect_header, packb
from dag.crypto import ACCOUNT_ID_BYTES, PublicKey, Scheme, Signature, SigningKey, scheme_of
from dag.errors import DecodeError, InvalidSignature, InvalidTransaction, RemoteProtocolError
from dag.genesis import MAX_CREDITS
from dag.kinds import (
    Bucket,
    KindRegistry,
    LedgerView,
    Move,
    TxFailed,
    balance_of,
    locked_under,
)

if TYPE_CHECKING:
    from dag.tx import Transaction

CHANNEL_TAG = "swarm/channel"
CHANNEL_VERSION = 1
IOU_TAG = "swarm/iou"
IOU_VERSION = 1
IOU_SIGN_DOMAIN = b"swarm/iou-sig/1\x00"
CHANNEL_ID_BYTES = 32
IOU_SCHEMES = (Scheme.ED25519,)
# An Ed25519 IOU encodes to about 130 bytes.
MAX_IOU_BYTES = 256
MAX_SEQ = 2**63 - 1
MAX_TIME_MS = 2**63 - 1


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=CHANNEL_ID_BYTES).digest()


def _iou_key(scheme: object, raw: object) -> PublicKey:
    scheme_id = as_int(scheme, "channel IOU key scheme", lo=0, hi=255)
    if scheme_id not in IOU_SCHEMES:
        raise InvalidTransaction(f"channel IOU key scheme {scheme_id} is not ed25519")
    return PublicKey.parse(scheme_id, as_bytes(raw, "channel IOU key", max_len=64))


@dataclass(frozen=True, slots=True)
class ChannelTerms:
    """What a channel is: hashed, with the chain, into its id (`channel_id`).

    `open_nonce` is the nonce of the client's `channel_open`: unique per client for ever, so
    two channels can never share an id, and nothing else has to serve as a salt.
    """

    client: bytes
    open_nonce: int
    provider: bytes
    deposit: int
    expiry_ms: int
    iou_key: PublicKey

    @classmethod
    def of_open(cls, tx: Transaction) -> ChannelTerms:
        """The terms of the channel a (parsed) `channel_open` transaction opens."""
        if tx.kind != ChannelOpen.name:
            raise InvalidTransaction(f"a {tx.kind!r} transaction opens no channel")
        provider, deposit, expiry_ms, scheme, raw = tx.payload
        key = PublicKey(Scheme(scheme), raw)
        return cls(tx.account, tx.nonce, provider, deposit, expiry_ms, key)

    def check_iou(
        self, chain: bytes, iou: Iou, known_id: bytes | None = None, *, signature: bool = True
    ) -> None:
        """Raise `RemoteProtocolError` unless `iou` is for this channel, within the deposit
        and signed by its IOU key: what a provider checks before it answers, and the ledger
        before it settles. `known_id` is this channel's id when the caller has it already;
        `signature=False` leaves the signature to a later `iou.verify(self.iou_key)`."""
        if iou.channel_id != (known_id or channel_id(chain, self)):
            raise InvalidTransaction("IOU is for another channel")
        if iou.cumulative > self.deposit:
            raise InvalidTransaction(
                f"IOU of {iou.cumulative} is above the channel deposit of {self.deposit}"
            )
        if signature:
            iou.verify(self.iou_key)


def channel_id(chain: bytes, terms: ChannelTerms) -> bytes:
    """BLAKE2b-256 over the canonical encoding of the chain digest and every term."""
    return _hash(
        encode(
            [
                CHANNEL_TAG,
                CHANNEL_VERSION,
                chain,
                terms.client,
                terms.open_nonce,
                terms.provider,
                terms.deposit,
                terms.expiry_ms,
                int(terms.iou_key.scheme),
                terms.iou_key.raw,
            ]
        )
    )


def lock_bucket(chain: bytes, terms: ChannelTerms) -> Bucket:
    """Where the deposit sits while the channel is open (the deposit, else 0)."""
    return locked_under(channel_id(chain, terms))


def is_open(view: LedgerView, chain: bytes, terms: ChannelTerms) -> bool:
    """True once the open has applied and until the channel ends: its deposit is locked."""
    return view.amount(locked_under(channel_id(chain, terms))) == terms.deposit


@dataclass(frozen=True, slots=True)
class Iou:
    """The client's promise: it owes `cumulative` credits in all on `channel_id`, as of
    request `seq`. Encoding: `["swarm/iou", 1, channel_id, cumulative, seq, [scheme, sig]]`;
    the signature is over `IOU_SIGN_DOMAIN` + the encoding of the first five fields."""

    channel_id: bytes
    cumulative: int
    seq: int
    signature: Signature

    @staticmethod
    def _message(channel: bytes, cumulative: int, seq: int) -> bytes:
        # (The fields were checked one by one, by `create` or by `from_fields`.)
        return IOU_SIGN_DOMAIN + encode(
            [IOU_TAG, IOU_VERSION, channel, cumulative, seq], types_checked=True
        )

    @classmethod
    def create(cls, client_key: SigningKey, channel: bytes, cumulative: int, seq: int) -> Iou:
        """Sign an IOU with the channel's IOU key (checks bounds first)."""
        as_bytes(channel, "IOU channel id", size=CHANNEL_ID_BYTES)
        as_int(cumulative, "IOU cumulative", lo=1, hi=MAX_CREDITS)
        as_int(seq, "IOU sequence", lo=0, hi=MAX_SEQ)
        signature = client_key.sign(cls._message(channel, cumulative, seq))
        return cls(channel, cumulative, seq, signature)

    def verify(self, client_public_key: PublicKey) -> None:
        """Raise `InvalidSignature` unless `client_public_key` signed this IOU."""
        message = self._message(self.channel_id, self.cumulative, self.seq)
        client_public_key.verify(self.signature, message)

    def to_fields(self) -> tuple[Any, ...]:
        """The encodable array (also embedded as is in a settle's payload)."""
        sig = (int(self.signature.scheme), self.signature.value)
        return (IOU_TAG, IOU_VERSION, self.channel_id, self.cumulative, self.seq, sig)

    def to_bytes(self) -> bytes:
        return encode(self.to_fields())

    @classmethod
    def from_fields(cls, value: object) -> Iou:
        """Check a decoded array field by field (`DecodeError`); no signature check."""
        fields = as_array(value, "IOU", length=6)
        expect_header(fields, IOU_TAG, IOU_VERSION, "IOU")
        channel = as_bytes(fields[2], "IOU channel id", size=CHANNEL_ID_BYTES)
        cumulative = as_int(fields[3], "IOU cumulative", lo=1, hi=MAX_CREDITS)
        seq = as_int(fields[4], "IOU sequence", lo=0, hi=MAX_SEQ)
        sig = as_array(fields[5], "IOU signature", length=2)
        scheme_id = as_int(sig[0], "IOU signature scheme", lo=0, hi=255)
        scheme = scheme_of(scheme_id)
        if scheme is None:
            raise InvalidSignature(f"IOU signature: unknown scheme id {scheme_id}")
        value_bytes = as_bytes(sig[1], "IOU signature", max_len=MAX_IOU_BYTES)
        return cls(channel, cumulative, seq, Signature(scheme, value_bytes))

    @classmethod
    def from_bytes(cls, data: bytes) -> Iou:
        """Decode one IOU of at most `MAX_IOU_BYTES` (signature not verified)."""
        iou = _well_formed(data)
        if iou is not None:
            return iou
        # Not an IOU as an honest client encodes one: the checks one by one, for the error.
        iou = cls.from_fields(decode(data, max_bytes=MAX_IOU_BYTES, what="IOU"))
        # Canonical: its fields, each checked, encode back to exactly these bytes (cheaper
        # than `decode_canonical`, which checks every type again to re-encode). Every paid
        # call's IOU comes this way.
        if encode(iou.to_fields(), types_checked=True) != data:
            raise DecodeError("IOU: not in canonical encoding")
        return iou


def iou_head(data: object) -> tuple[bytes, int, int] | None:
    """(channel id, cumulative, seq) of what unpacks as an IOU with fields of their types and
    ranges, or None; the signature and the canonical form are not checked. Enough to admit a
    call that an IOU checked before already pays for (`Iou.from_bytes` when it must be
    checked): one unpack and plain type tests, where a paid call's path costs most."""
    fields = _unpacked(data)
    return None if fields is None else (fields[2], fields[3], fields[4])


def _unpacked(data: object) -> list[Any] | None:
    if type(data) is not bytes or len(data) > MAX_IOU_BYTES:
        return None
    try:
        fields = msgpack.unpackb(data)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        return None
    if type(fields) is not list or len(fields) != 6:
        return None
    tag, version, channel, cumulative, seq, sig = fields
    if not (
        type(tag) is str
        and tag == IOU_TAG
        and type(version) is int
        and version == IOU_VERSION
        and type(channel) is bytes
        and len(channel) == CHANNEL_ID_BYTES
        and type(cumulative) is int
        and 1 <= cumulative <= MAX_CREDITS
        and type(seq) is int
        and 0 <= seq <= MAX_SEQ
        and type(sig) is list
        and len(sig) == 2
        and type(sig[0]) is int
        and type(sig[1]) is bytes
    ):
        return None
    return fields


def _well_formed(data: bytes) -> Iou | None:
    """The IOU `data` encodes, if every field is of its type and range and the encoding is
    canonical; else None (and `Iou.from_bytes` finds out why): plain type tests, one unpack
    and one pack, instead of a checker per field."""
    fields = _unpacked(data)
    if fields is None:
        return None
    scheme = scheme_of(fields[5][0])
    if scheme is None or packb(fields) != data:
        return None
    return Iou(fields[2], fields[3], fields[4], Signature(scheme, fields[5][1]))


def _terms_fields(fields: list[Any], what: str) -> tuple[int, int, int, int, bytes]:
    """(open nonce, deposit, expiry, IOU key scheme, IOU key): the terms every kind repeats."""
    open_nonce = as_int(fields[0], f"{what} open nonce", lo=0, hi=MAX_SEQ)
    deposit = as_int(fields[1], f"{what} deposit", lo=1, hi=MAX_CREDITS)
    expiry_ms = as_int(fields[2], f"{what} expiry", lo=0, hi=MAX_TIME_MS)
    key = _iou_key(fields[3], fields[4])
    return (open_nonce, deposit, expiry_ms, int(key.scheme), key.raw)


class ChannelOpen:
    """`channel_open`: payload [provider, deposit, expiry_ms, IOU key scheme, IOU key].

    Moves the deposit from the client's (sender's) balance to the channel's lock; waits, like
    a transfer, while the balance is short.
    """

    name = "channel_open"

    def parse(self, payload: object, sender: bytes) -> tuple[Any, ...]:
        fields = as_array(payload, "channel_open payload", length=5)
        provider = as_bytes(fields[0], "channel provider", size=ACCOUNT_ID_BYTES)
        if provider == sender:
            raise InvalidTransaction("a channel to the opening account itself")
        deposit = as_int(fields[1], "channel deposit", lo=1, hi=MAX_CREDITS)
        expiry_ms = as_int(fields[2], "channel expiry", lo=0, hi=MAX_TIME_MS)
        key = _iou_key(fields[3], fields[4])
        return (provider, deposit, expiry_ms, int(key.scheme), key.raw)

    def plan(self, view: LedgerView, tx: Transaction) -> Sequence[Move]:
        terms = ChannelTerms.of_open(tx)
        return [Move(balance_of(tx.account), lock_bucket(tx.chain, terms), terms.deposit)]


class ChannelSettle:
    """`channel_settle`, sent by the provider: payload [client, open nonce, deposit,
    expiry_ms, IOU key scheme, IOU key, IOU fields, amount].

    The provider is the sender, so no other account can settle the channel: its terms would
    name another provider, hence another id, and the IOU would not match. `amount` is what the
    provider claims, at most the IOU's cumulative amount: an IOU may authorise more than was
    used (a call reserves its largest cost before the provider counts its tokens), and an
    honest provider claims what its receipts add up to. Ends the channel: `amount` to the
    provider, the rest of the deposit to the client. An IOU that is for another channel or
    does not verify fails (no effect; the reason is in the outcome); one above the deposit,
    or a claim above the IOU, is refused when the transaction is parsed.
    """

    name = "channel_settle"

    def parse(self, payload: object, sender: bytes) -> tuple[Any, ...]:
        fields = as_array(payload, "channel_settle payload", length=8)
        client = as_bytes(fields[0], "channel client", size=ACCOUNT_ID_BYTES)
        if client == sender:
            raise InvalidTransaction("a settle of a channel to the settling account itself")
        terms = _terms_fields(fields[1:6], "channel_settle")
        iou = Iou.from_fields(fields[6])
        if iou.cumulative > terms[1]:
            raise InvalidTransaction(
                f"IOU of {iou.cumulative} is above the channel deposit of {terms[1]}"
            )
        amount = as_int(fields[7], "channel_settle amount", lo=1, hi=iou.cumulative)
        return (client, *terms, iou.to_fields(), amount)

    def plan(self, view: LedgerView, tx: Transaction) -> Sequence[Move]:
        terms = self.terms(tx)
        iou = Iou.from_fields(tx.payload[6])
        amount = tx.payload[7]
        try:
            terms.check_iou(tx.chain, iou)
        except RemoteProtocolError as exc:
            raise TxFailed(str(exc)) from None
        lock = lock_bucket(tx.chain, terms)
        moves = [Move(lock, balance_of(terms.provider), amount)]
        if terms.deposit > amount:
            moves.append(Move(lock, balance_of(terms.client), terms.deposit - amount))
        return moves

    def terms(self, tx: Transaction) -> ChannelTerms:
        client, open_nonce, deposit, expiry_ms, scheme, raw, _, _ = tx.payload
        key = PublicKey(Scheme(scheme), raw)
        return ChannelTerms(client, open_nonce, tx.account, deposit, expiry_ms, key)

    def extra_conflict_keys(self, tx: Transaction) -> tuple[bytes, ...]:
        """The channel id: at most one settle or close of a channel is ever accepted."""
        return (channel_id(tx.chain, self.terms(tx)),)


class ChannelClose:
    """`channel_close`, sent by the client after the expiry: payload [provider, open nonce,
    deposit, expiry_ms, IOU key scheme, IOU key]. Ends the channel: the whole deposit back.

    Only a vertex with a timestamp at or after the expiry may carry it (`not_before_ms`),
    so a close before the expiry never enters the DAG.
    """

    name = "channel_close"

    def parse(self, payload: object, sender: bytes) -> tuple[Any, ...]:
        fields = as_array(payload, "channel_close payload", length=6)
        provider = as_bytes(fields[0], "channel provider", size=ACCOUNT_ID_BYTES)
        if provider == sender:
            raise InvalidTransaction("a close of a channel to the closing account itself")
        return (provider, *_terms_fields(fields[1:6], "channel_close"))

    def plan(self, view: LedgerView, tx: Transaction) -> Sequence[Move]:
        terms = self.terms(tx)
        return [Move(lock_bucket(tx.chain, terms), balance_of(tx.account), terms.deposit)]

    def terms(self, tx: Transaction) -> ChannelTerms:
        provider, open_nonce, deposit, expiry_ms, scheme, raw = tx.payload
        key = PublicKey(Scheme(scheme), raw)
        return ChannelTerms(tx.account, open_nonce, provider, deposit, expiry_ms, key)

    def extra_conflict_keys(self, tx: Transaction) -> tuple[bytes, ...]:
        """The channel id, shared with its settles (see `ChannelSettle.extra_conflict_keys`)."""
        return (channel_id(tx.chain, self.terms(tx)),)

    def not_before_ms(self, tx: Transaction) -> int:
        """The earliest timestamp of a vertex that may carry this close: the expiry."""
        return self.terms(tx).expiry_ms


def open_payload(
    provider: bytes, deposit: int, expiry_ms: int, iou_key: PublicKey
) -> tuple[Any, ...]:
    """The payload of a `channel_open` to `provider`; the channel's IOUs are signed with the
    private half of `iou_key` (Ed25519)."""
    return (provider, deposit, expiry_ms, int(iou_key.scheme), iou_key.raw)


def settle_payload(terms: ChannelTerms, iou: Iou, amount: int | None = None) -> tuple[Any, ...]:
    """The payload of the provider's `channel_settle` of the channel `terms` with `iou`,
    claiming `amount` (default: all the IOU says)."""
    key = terms.iou_key
    return (
        terms.client,
        terms.open_nonce,
        terms.deposit,
        terms.expiry_ms,
        int(key.scheme),
        key.raw,
        iou.to_fields(),
        iou.cumulative if amount is None else amount,
    )


def close_payload(terms: ChannelTerms) -> tuple[Any, ...]:
    """The payload of the client's `channel_close` of the channel `terms`."""
    key = terms.iou_key
    return (
        terms.provider,
        terms.open_nonce,
        terms.deposit,
        terms.expiry_ms,
        int(key.scheme),
        key.raw,
    )


def register_channel_kinds(registry: KindRegistry) -> None:
    """Add the three channel kinds to `registry` (`dag.kinds.default_registry` does)."""
    for kind in (ChannelOpen(), ChannelSettle(), ChannelClose()):
        registry.register(kind)
