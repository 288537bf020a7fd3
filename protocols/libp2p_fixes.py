"""Workarounds for py-libp2p 0.8 behaviour that hurts a live node, each in one place.

Each is installed by `P2PService` and explained where it is defined; remove one when the
library fixes what it works around. The ones that only make the library faster are in
`protocols.libp2p_fast`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.io.abc import Reader
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub

log = logging.getLogger("swarm.p2p")
# How long one Noise message may take to go out once it is encrypted (see below).
NOISE_WRITE_TIMEOUT_S = 10.0


def install_signed_record_cache() -> None:
    """Make py-libp2p's gossipsub check each peer's signed peer record once, not per RPC.

    py-libp2p attaches the sender's signed peer record to every pubsub RPC and the receiver
    verifies it (an Ed25519 check and a peerstore write) every time; it changes only when
    the peer's addresses do. We keep the last record that verified, per host and peer, and
    skip the check for the same bytes. Installing twice is harmless.
    """
    import libp2p.pubsub.gossipsub as gossipsub
    import libp2p.pubsub.pubsub as pubsub

    original = gossipsub.maybe_consume_signed_record  # type: ignore[attr-defined]
    if getattr(original, "swarm_cached", False):
        return
    verified: dict[tuple[int, ID], bytes] = {}

    def cached(msg: Any, host: IHost, peer_id: ID) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key, record = (id(host), peer_id), msg.senderRecord
        if verified.get(key) == record:
            return True
        ok = bool(original(msg, host, peer_id))
        if ok:
            if len(verified) > 10_000:
                verified.clear()
            verified[key] = record
        return ok

    cached.swarm_cached = True  # type: ignore[attr-defined]
    # Both modules imported the function by name; both call sites are replaced.
    gossipsub.maybe_consume_signed_record = cached  # type: ignore[attr-defined]
    pubsub.maybe_consume_signed_record = cached  # type: ignore[attr-defined]


def guard_pubsub_streams(host: IHost, pubsub: Pubsub, protocols: list[TProtocol]) -> None:
    """Keep a malformed pubsub RPC from taking the whole node down.

    py-libp2p's pubsub stream handler lets a protobuf `DecodeError` or an oversized frame
    (`MessageTooLarge`) escape into the connection's nursery, which ends the process. Here
    such a stream is reset and its peer dropped from pubsub, as py-libp2p does for the
    errors it does catch; the connection and every other protocol carry on.
    """

    async def guarded(stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            await pubsub.stream_handler(stream)
        except Exception as exc:  # whatever a peer's bytes make the library raise
            log.info("dropped the pubsub stream of %s: %s: %s", peer, type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                await stream.reset()
            pubsub._handle_dead_peer(peer)

    for protocol in protocols:
        host.set_stream_handler(protocol, guarded)


def install_atomic_noise_writes() -> None:
    """Make a cancelled write leave the Noise session intact.

    py-libp2p's Noise writer encrypts a message (using up the next nonce) and then awaits the
    socket. A task cancelled at that await (a deadline, a lost race, a lookup no longer
    needed) sends nothing, or half the bytes; the peer then fails to authenticate every later
    message and the whole connection dies, taking every stream on it along. Found by the
    DHT-fallback test: a cancelled lookup broke the connection an inference call then used.
    Here the encrypt-and-send runs shielded, bounded by NOISE_WRITE_TIMEOUT_S (a peer that
    stops reading for that long breaks the connection, as it would anyway); the outer
    cancellation is delivered right after. Installing twice is harmless.
    """
    from libp2p.network.connection.exceptions import RawConnError
    from libp2p.security.noise.io import BaseNoiseMsgReadWriter

    original = BaseNoiseMsgReadWriter.write_msg
    if getattr(original, "swarm_atomic", False):
        return

    async def write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + NOISE_WRITE_TIMEOUT_S
            await original(self, msg, prefix_encoded)
        if scope.cancelled_caught:
            with contextlib.suppress(Exception):
                await self.close()
            raise RawConnError(f"a Noise write took over {NOISE_WRITE_TIMEOUT_S} s")
        await trio.lowlevel.checkpoint_if_cancelled()

    write_msg.swarm_atomic = True  # type: ignore[attr-defined]
    BaseNoiseMsgReadWriter.write_msg = write_msg  # type: ignore[method-assign]


class _CountingReader(Reader):
    """A stream whose reads are passed through and counted, to tell where it ended."""

    def __init__(self, stream: Reader) -> None:
        self.stream = stream
        self.received = 0

    async def read(self, n: int | None = None) -> bytes:
        data = await self.stream.read(n)
        self.received += len(data)
        return data


def install_clean_dht_stream_ends() -> None:
    """Let py-libp2p's Kademlia server take a peer's normal end of a stream as one.

    A DHT client sends its request, reads the answer and closes the stream; the server's
    handler is then waiting for a next message. py-libp2p 0.8's handler expects that end as
    an empty read (`IncompleteReadError` with nothing received: a debug line and a close),
    but its streams raise `StreamEOF` there, so every DHT request ended with the warning
    "Failed to read DHT message from stream: " (the error has no text) and a reset of a
    stream that had ended well. Here an end before the first byte of a message reaches the
    handler as it expects; an end inside a message, a reset or any other error still gets
    its warning and reset. Only the server's read is replaced: a client missing its answer
    has a real error. Installing twice is harmless.
    """
    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.kad_dht import kad_dht
    from libp2p.network.stream.exceptions import StreamEOF

    original = kad_dht.read_varint_prefixed_bytes_limited  # type: ignore[attr-defined]
    if getattr(original, "swarm_clean_eof", False):
        return

    async def read_message(reader: Reader, max_length: int) -> bytes:
        counted = _CountingReader(reader)
        try:
            return await original(counted, max_length)
        except StreamEOF as exc:
            if counted.received:
                raise
            raise IncompleteReadError("the peer ended the stream", received_bytes=0) from exc

    read_message.swarm_clean_eof = True  # type: ignore[attr-defined]
    kad_dht.read_varint_prefixed_bytes_limited = read_message  # type: ignore[attr-defined]
