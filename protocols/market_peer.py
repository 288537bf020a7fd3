"""`/swarm/market/1.0.0` over a stream: one request, one reply (see `market_wire`).

The provider's side answers through a `Desk` (the market service of `node`); the client's
side is `ask`. Neither touches libp2p: both see our `Stream` interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from dag.errors import SwarmError
from protocols import ids
from protocols import market_wire as mw
from protocols.errors import PeerTimeout
from protocols.stream import FramedStream, Stream

REQUEST_TIMEOUT_S = 5.0  # a client that does not finish its request in this long is dropped


class Desk(Protocol):
    """What a provider answers with."""

    def quote(self, peer: str) -> mw.Quote: ...

    async def channel(self, peer: str, open_tx: bytes) -> mw.ChannelState:
        """Serve the channel `open_tx` opens; a `SwarmError` says why not."""


async def serve(stream: Stream, desk: Desk) -> None:
    """Answer one market request; a refusal goes back as an error reply with the reason."""
    framed = FramedStream(stream, mw.MAX_FRAME)
    peer = stream.remote_peer
    reply: dict[str, Any]
    try:
        with trio.fail_after(REQUEST_TIMEOUT_S):
            body = await framed.receive_required()
        open_tx = mw.decode_request(body, peer=peer)
        if open_tx is None:
            reply = desk.quote(peer).encode()
        else:
            reply = (await desk.channel(peer, open_tx)).encode()
    except trio.TooSlowError:
        raise PeerTimeout(
            "no market request in time", peer=peer, after_s=REQUEST_TIMEOUT_S
        ) from None
    except SwarmError as exc:
        reply = mw.error_reply(str(exc))
    await framed.send(reply)


OpenStream = Callable[[str, str], Awaitable[Stream]]


async def ask(
    open_stream: OpenStream, peer: str, request: dict[str, Any]
) -> mw.Quote | mw.ChannelState:
    """Send one request to `peer` and decode its reply; a refusal is a `RemoteProtocolError`.
    The caller bounds the wait."""
    stream = await open_stream(peer, ids.MARKET)
    framed = FramedStream(stream, mw.MAX_FRAME)
    try:
        await framed.send(request)
        return mw.decode_reply(await framed.receive_required(), peer=peer)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()
