"""A small stream interface of our own, its py-libp2p adapter, and an in-memory fake.

Handlers take a `Stream` and never a libp2p type, so every protocol handler can be tested
over `memory_stream_pair()` with no sockets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import trio

from dag.errors import RemoteProtocolError
from protocols.errors import NetworkError, PeerTimeout, map_libp2p_errors
from protocols.framing import DEFAULT_MAX_FRAME, FrameDecoder, decode_body, encode_frame
from protocols.libp2p_fast import stream_may_receive

if TYPE_CHECKING:
    from libp2p.abc import INetStream

READ_CHUNK = 65536


class Stream(Protocol):
    """A reliable, ordered byte stream to one authenticated peer."""

    remote_peer: str

    async def receive_some(self, max_bytes: int = READ_CHUNK) -> bytes:
        """Return the next bytes, or b"" once the peer closed its side."""
        ...

    async def send_all(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...

    def may_receive(self) -> bool:
        """False once this end knows nothing more will come (closed, reset, peer gone)
        without reading; True when it cannot tell."""
        ...


class Libp2pStream:
    """Adapts a py-libp2p `INetStream`; its errors become `NetworkError` here, once."""

    def __init__(self, stream: INetStream, remote_peer: str) -> None:
        self._stream = stream
        self.remote_peer = remote_peer

    async def receive_some(self, max_bytes: int = READ_CHUNK) -> bytes:
        # Plain try/except on the way through: a context manager per call costs more than
        # the rest of this adapter.
        try:
            return await self._stream.read(max_bytes)
        except Exception as exc:
            from libp2p.network.stream.exceptions import StreamEOF

            if isinstance(exc, StreamEOF):
                return b""
            with map_libp2p_errors(self.remote_peer):
                raise

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.write(data)
        except Exception:
            with map_libp2p_errors(self.remote_peer):
                raise

    def may_receive(self) -> bool:
        return stream_may_receive(self._stream)

    async def aclose(self) -> None:
        # Closing a stream the peer already reset is not an error worth reporting.
        try:
            with map_libp2p_errors(self.remote_peer):
                await self._stream.close()
        except NetworkError:
            pass


class MemoryStream:
    """One end of an in-memory stream pair, for tests."""

    def __init__(self, stream: trio.abc.HalfCloseableStream, remote_peer: str) -> None:
        self._stream = stream
        self.remote_peer = remote_peer

    async def receive_some(self, max_bytes: int = READ_CHUNK) -> bytes:
        try:
            return bytes(await self._stream.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise NetworkError(str(exc) or "stream closed", peer=self.remote_peer) from exc

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise NetworkError(str(exc) or "stream closed", peer=self.remote_peer) from exc

    def may_receive(self) -> bool:
        return True  # a memory stream tells only when read

    async def aclose(self) -> None:
        await self._stream.aclose()


def memory_stream_pair(a: str = "peer-a", b: str = "peer-b") -> tuple[MemoryStream, MemoryStream]:
    """Two connected fake streams: the first is `a`'s end (its remote is `b`), and back."""
    # Imported here: trio.testing costs a running node 6 MB it never uses.
    import trio.testing

    left, right = trio.testing.memory_stream_pair()
    return MemoryStream(left, remote_peer=b), MemoryStream(right, remote_peer=a)


class FramedStream:
    """Whole msgpack frames over a `Stream`, with the protocol's size limit."""

    def __init__(self, stream: Stream, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.stream = stream
        self._decoder = FrameDecoder(max_frame, peer=stream.remote_peer)

    @property
    def remote_peer(self) -> str:
        return self.stream.remote_peer

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as a message (the start of the next ones)."""
        return self._decoder.buffered

    async def send(self, body: dict[str, Any]) -> None:
        await self.stream.send_all(encode_frame(body))

    async def receive(self, *, partial_timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next message, or None at a clean end of stream (between frames).

        With `partial_timeout_s`, a peer that starts a frame and then stalls for that long
        gets `PeerTimeout`: half a frame must not hold a slot forever."""
        while (payload := self._decoder.next_frame()) is None:
            if partial_timeout_s is not None and self._decoder.buffered:
                with trio.move_on_after(partial_timeout_s) as scope:
                    data = await self.stream.receive_some(READ_CHUNK)
                if scope.cancelled_caught:
                    raise PeerTimeout(
                        f"peer stalled inside a frame for {partial_timeout_s} s",
                        peer=self.remote_peer,
                        after_s=partial_timeout_s,
                    )
            else:
                data = await self.stream.receive_some(READ_CHUNK)
            if not data:
                if self._decoder.buffered:
                    raise RemoteProtocolError("stream ended inside a frame", peer=self.remote_peer)
                return None
            self._decoder.feed(data)
        return decode_body(payload, peer=self.remote_peer)

    async def receive_required(self) -> dict[str, Any]:
        body = await self.receive()
        if body is None:
            raise NetworkError("peer closed the stream before answering", peer=self.remote_peer)
        return body

    def may_receive(self) -> bool:
        return self.stream.may_receive()

    async def aclose(self) -> None:
        await self.stream.aclose()
