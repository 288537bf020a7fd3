"""`/swarm/hello/1.0.0`: the first exchange between two swarm nodes.

Each side states its chain (id and genesis digest) and binds its account to its peer id with
a record signed by both keys: the account key and the libp2p host key. A peer on another
genesis is refused, with the reason, on both sides. The checks are plain functions; the two
small coroutines at the bottom drive them over a `Stream`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID

from dag.crypto import PublicKey, Signature, SigningKey
from dag.errors import InvalidSignature, RemoteProtocolError
from protocols.errors import NetworkError, PeerRefused
from protocols.framing import field
from protocols.stream import FramedStream, Stream

VERSION = 1
MAX_FRAME = 32 * 1024
# After a refusal, how long the refuser waits for the peer to read why and hang up before
# it drops the connection: py-libp2p discards what a connection received but its streams
# had not read yet once the connection closes.
REFUSAL_LINGER_S = 2.0
MAX_KNOWN = 32
_BIND_TAG = b"swarm-node/bind/v1\x00"
# Host keys are Ed25519 (DESIGN.md), so a peer id is the identity multihash of the protobuf
# of its key: these 6 bytes then the 32-byte key. Accepting only that keeps other key types'
# verifiers, some of which raise instead of answering no, away from bytes from outside.
ED25519_PEER_PREFIX = bytes.fromhex("002408011220")
PEER_ID_BYTES = 38
HOST_SIG_BYTES = 64


def binding_message(peer_id: str, account_id: bytes) -> bytes:
    return _BIND_TAG + ID.from_base58(peer_id).to_bytes() + account_id


@dataclass(frozen=True, slots=True)
class Binding:
    """An account bound to a peer id: signed by the account key and by the host key."""

    account_key: PublicKey
    account_sig: bytes
    host_sig: bytes

    @classmethod
    def create(cls, peer_id: str, account: SigningKey, host_sign: Any) -> Binding:
        """`host_sign` is the libp2p private key's `sign` method."""
        msg = binding_message(peer_id, account.account_id)
        return cls(account.public_key, account.sign(msg).value, bytes(host_sign(msg)))

    def verify(self, peer_id: str) -> None:
        """Raise `InvalidSignature` unless both keys signed this binding to `peer_id`."""
        peer_bytes = ID.from_base58(peer_id).to_bytes()
        if len(peer_bytes) != PEER_ID_BYTES or not peer_bytes.startswith(ED25519_PEER_PREFIX):
            raise InvalidSignature(f"peer {peer_id} is not an Ed25519 identity peer id")
        if len(self.host_sig) != HOST_SIG_BYTES:
            raise InvalidSignature(f"host signature must be {HOST_SIG_BYTES} bytes")
        msg = binding_message(peer_id, self.account_key.account_id)
        self.account_key.verify(Signature(self.account_key.scheme, self.account_sig), msg)
        host_key = ID.from_base58(peer_id).extract_public_key()
        if host_key is None or not host_key.verify(msg, self.host_sig):
            raise InvalidSignature(f"host key of {peer_id} did not sign the account binding")


@dataclass(frozen=True, slots=True)
class Hello:
    chain_id: str
    genesis: bytes
    version: str
    name: str
    binding: Binding
    # Our own dialable addresses, and up to MAX_KNOWN other members we are connected to (each
    # a full /p2p/ multiaddr): peer exchange, so one bootstrap address is enough to join.
    addrs: tuple[str, ...] = ()
    known: tuple[str, ...] = ()

    def encode(self) -> dict[str, Any]:
        return {
            "t": "hello",
            "v": VERSION,
            "chain": self.chain_id,
            "genesis": self.genesis,
            "version": self.version,
            "name": self.name,
            "scheme": int(self.binding.account_key.scheme),
            "pk": self.binding.account_key.raw,
            "asig": self.binding.account_sig,
            "hsig": self.binding.host_sig,
            "addrs": list(self.addrs[:MAX_KNOWN]),
            "known": list(self.known[:MAX_KNOWN]),
        }

    @classmethod
    def decode(cls, body: dict[str, Any], *, peer: str) -> Hello:
        if body["t"] != "hello" or body["v"] != VERSION:
            raise RemoteProtocolError(
                f"expected hello v{VERSION}, got {body['t']!r} v{body['v']}", peer=peer
            )
        key = PublicKey.parse(
            field(body, "scheme", int, peer=peer), field(body, "pk", bytes, peer=peer, max_len=4096)
        )
        binding = Binding(
            key,
            field(body, "asig", bytes, peer=peer, max_len=4096),
            field(body, "hsig", bytes, peer=peer, max_len=512),
        )
        return cls(
            chain_id=field(body, "chain", str, peer=peer, max_len=64),
            genesis=field(body, "genesis", bytes, peer=peer, max_len=32),
            version=field(body, "version", str, peer=peer, max_len=32),
            name=field(body, "name", str, peer=peer, max_len=64),
            binding=binding,
            addrs=_addr_list(body, "addrs", peer),
            known=_addr_list(body, "known", peer),
        )


def _addr_list(body: dict[str, Any], key: str, peer: str) -> tuple[str, ...]:
    items = field(body, key, list, peer=peer, max_len=MAX_KNOWN)
    if not all(isinstance(i, str) and len(i) <= 256 for i in items):
        raise RemoteProtocolError(f"hello: {key!r} must list multiaddr strings", peer=peer)
    return tuple(items)


def check_hello(ours: Hello, theirs: Hello, remote_peer: str) -> None:
    """Accept `theirs` or raise `PeerRefused` with a reason a person can act on."""
    try:
        theirs.binding.verify(remote_peer)
    except InvalidSignature as exc:
        raise PeerRefused(
            f"peer {remote_peer}: bad account binding: {exc}", peer=remote_peer
        ) from None
    if (theirs.chain_id, theirs.genesis) != (ours.chain_id, ours.genesis):
        # Both sides see this text (the refuser logs it, the refused reads it), so it names
        # each node rather than saying "we" and "you".
        raise PeerRefused(
            f"genesis mismatch: {theirs.name or 'unnamed'} ({remote_peer}) is on chain "
            f"{theirs.chain_id!r} (genesis {theirs.genesis.hex()[:16]}), {ours.name or 'unnamed'} "
            f"is on chain {ours.chain_id!r} (genesis {ours.genesis.hex()[:16]})",
            peer=remote_peer,
        )


def _refusal(reason: str) -> dict[str, Any]:
    return {"t": "refuse", "v": VERSION, "reason": reason[:500]}


async def initiate_hello(stream: Stream, ours: Hello) -> Hello:
    """Dialer side: send our hello, read theirs (or their refusal), check it."""
    framed = FramedStream(stream, MAX_FRAME)
    peer = stream.remote_peer
    await framed.send(ours.encode())
    body = await framed.receive_required()
    if body["t"] == "refuse":
        reason = field(body, "reason", str, peer=peer, max_len=500)
        raise PeerRefused(f"peer {peer} refused us: {reason}", peer=peer)
    theirs = Hello.decode(body, peer=peer)
    check_hello(ours, theirs, peer)
    return theirs


async def serve_hello(stream: Stream, ours: Hello) -> Hello:
    """Listener side: read their hello, answer with ours or a refusal saying why."""
    framed = FramedStream(stream, MAX_FRAME)
    peer = stream.remote_peer
    try:
        theirs = Hello.decode(await framed.receive_required(), peer=peer)
        check_hello(ours, theirs, peer)
    except (RemoteProtocolError, PeerRefused) as exc:
        await framed.send(_refusal(str(exc)))
        with (
            trio.move_on_after(REFUSAL_LINGER_S),
            contextlib.suppress(NetworkError, RemoteProtocolError),
        ):
            await framed.receive()  # the peer's end of the stream, once it has read ours
        raise
    await framed.send(ours.encode())
    return theirs
