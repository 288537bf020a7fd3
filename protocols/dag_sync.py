"""The carriers of the DAG: votes (query), vertices on request (sync), new vertices (push).

All are small helpers over our `Stream`: `QueryChannel` and `PushChannel` keep one stream
per peer open for all its traffic (a new libp2p stream costs several times a reused one),
`Outbox` batches what waits for one peer into one message, and `serve_*` answer one stream
with callbacks into the DAG service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import trio

from dag.errors import RemoteProtocolError
from protocols import dag_wire as wire
from protocols.stream import FramedStream, Stream

OpenStream = Callable[[str, str], Awaitable[Stream]]
T = TypeVar("T")


class Outbox(Generic[T]):
    """Items for one peer, sent by one task in batches: what queues while a send is in
    flight goes out together in the next one, so a busy peer costs fewer, larger messages.

    `send` gets each batch and handles its own errors. At most `limit` items wait; more
    are dropped (and counted), since a peer that falls that far behind fetches instead.
    """

    def __init__(self, send: Callable[[list[T]], Awaitable[None]], *, batch: int, limit: int):
        if batch < 1 or limit < 1:
            raise ValueError("an outbox needs batch >= 1 and limit >= 1")
        self._send = send
        self.batch = batch
        self.limit = limit
        self.dropped = 0
        self._items: list[T] = []
        self._ready = trio.Event()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Queue `item`; False (and counted in `dropped`) if `limit` items already wait."""
        if len(self._items) >= self.limit:
            self.dropped += 1
            return False
        self._items.append(item)
        self._ready.set()
        return True

    async def run(self) -> None:
        """Send batches as items arrive, until cancelled."""
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            while self._items:
                batch, self._items = self._items[: self.batch], self._items[self.batch :]
                await self._send(batch)


class QueryChannel:
    """Polls sent to one peer, in turn, over one reused stream."""

    def __init__(self, peer: str, open_stream: OpenStream, protocol: str) -> None:
        self.peer = peer
        self._open = open_stream
        self._protocol = protocol
        self._framed: FramedStream | None = None
        self._lock = trio.Lock()

    async def ask(self, ids: Sequence[bytes]) -> tuple[bool, ...]:
        """The peer's votes on `ids`; a broken stream is dropped and reopened next time."""
        async with self._lock:
            try:
                if self._framed is None:
                    stream = await self._open(self.peer, self._protocol)
                    self._framed = FramedStream(stream, wire.MAX_QUERY_FRAME)
                await self._framed.send(wire.Query(tuple(ids)).encode())
                body = await self._framed.receive_required()
                votes: wire.Votes = wire.expect(
                    wire.decode(body, peer=self.peer), wire.Votes, self.peer
                )
            except BaseException:
                await self.close_unlocked()
                raise
        if len(votes.yes) != len(ids):
            raise RemoteProtocolError("votes do not match the query", peer=self.peer)
        return votes.yes

    async def close_unlocked(self) -> None:
        framed, self._framed = self._framed, None
        if framed is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await framed.aclose()


async def serve_query(
    stream: Stream, answer: Callable[[str, tuple[bytes, ...]], Awaitable[tuple[bool, ...]]]
) -> None:
    """Answer queries on one stream until the peer closes it."""
    framed = FramedStream(stream, wire.MAX_QUERY_FRAME)
    while (body := await framed.receive()) is not None:
        query = wire.expect(
            wire.decode(body, peer=stream.remote_peer), wire.Query, stream.remote_peer
        )
        await framed.send(wire.Votes(await answer(stream.remote_peer, query.ids)).encode())


class PushChannel:
    """New vertices sent to one peer over one reused stream; nothing comes back."""

    def __init__(self, peer: str, open_stream: OpenStream, protocol: str) -> None:
        self.peer = peer
        self._open = open_stream
        self._protocol = protocol
        self._framed: FramedStream | None = None

    async def push(self, items: Sequence[bytes]) -> None:
        """Send `items` (vertex bytes) as one frame; a broken stream is reopened next time."""
        try:
            if self._framed is None:
                stream = await self._open(self.peer, self._protocol)
                self._framed = FramedStream(stream, wire.MAX_SYNC_FRAME)
            await self._framed.send(wire.Vertices(tuple(items)).encode())
        except BaseException:
            framed, self._framed = self._framed, None
            if framed is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    await framed.aclose()
            raise


async def serve_push(stream: Stream, ingest: Callable[[bytes, str], Awaitable[object]]) -> None:
    """Take the vertices a peer pushes on one stream, in order, until it closes the stream."""
    framed = FramedStream(stream, wire.MAX_SYNC_FRAME)
    peer = stream.remote_peer
    while (body := await framed.receive()) is not None:
        pushed: wire.Vertices = wire.expect(wire.decode(body, peer=peer), wire.Vertices, peer)
        for item in pushed.items:
            await ingest(item, peer)


class RateLimit:
    """A token bucket per peer: how many vertices one peer may ask of us per second.

    Only peers whose bucket is still refilling are held: a full bucket is what a peer never
    seen gets, so forgetting it changes no answer (and, unlike forgetting a peer when it
    disconnects, gives no fresh bucket to one that reconnects). Full buckets are swept when
    the map has doubled since the last sweep, so it stays within twice the peers that asked
    in the last `burst / rate` seconds (or `SWEEP_MIN`).
    """

    SWEEP_MIN = 64

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._sweep_at = self.SWEEP_MIN

    def __len__(self) -> int:
        """How many peers a bucket is held for."""
        return len(self._buckets)

    def take(self, peer: str, amount: float, now: float) -> bool:
        tokens, last = self._buckets.get(peer, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= amount
        self._buckets[peer] = (tokens - amount if ok else tokens, now)
        if len(self._buckets) > self._sweep_at:
            self._forget_full(now)
        return ok

    def _forget_full(self, now: float) -> None:
        self._buckets = {
            peer: (tokens, last)
            for peer, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate < self.burst
        }
        self._sweep_at = max(self.SWEEP_MIN, 2 * len(self._buckets))


async def serve_sync(
    stream: Stream,
    frontier: Callable[[], Awaitable[list[bytes]]],
    bodies: Callable[[tuple[bytes, ...]], Awaitable[list[bytes]]],
    limit: RateLimit,
) -> None:
    """Answer one sync request: our frontier, or the vertices asked for (within limits)."""
    framed = FramedStream(stream, wire.MAX_QUERY_FRAME)
    peer = stream.remote_peer
    body = await framed.receive_required()
    request = wire.decode(body, peer=peer)
    if isinstance(request, wire.FrontierRequest):
        ids = await frontier()
        await framed.send(wire.Frontier(tuple(ids[: wire.MAX_FRONTIER])).encode())
    elif isinstance(request, wire.GetVertices):
        if not limit.take(peer, len(request.ids), trio.current_time()):
            await framed.send(wire.Error("rate limit: too many vertices asked for").encode())
            return
        items, size = [], 0
        for item in await bodies(request.ids):
            size += len(item) + 16
            if size > wire.MAX_SYNC_FRAME - 1024:
                break  # the asker fetches the rest in a later request
            items.append(item)
        await framed.send(wire.Vertices(tuple(items)).encode())
    else:
        raise RemoteProtocolError(f"unexpected {type(request).__name__} on sync", peer=peer)


async def _request(
    open_stream: OpenStream,
    protocol: str,
    peer: str,
    request: wire.FrontierRequest | wire.GetVertices,
) -> wire.Message:
    stream = await open_stream(peer, protocol)
    framed = FramedStream(stream, wire.MAX_SYNC_FRAME)
    try:
        await framed.send(request.encode())
        return wire.decode(await framed.receive_required(), peer=peer)
    finally:
        await framed.aclose()


async def fetch_frontier(open_stream: OpenStream, protocol: str, peer: str) -> wire.Frontier:
    """`peer`'s newest vertex ids; raises `NetworkError`/`RemoteProtocolError` on failure."""
    message = await _request(open_stream, protocol, peer, wire.FrontierRequest())
    frontier: wire.Frontier = wire.expect(message, wire.Frontier, peer)
    return frontier


async def fetch_vertices(
    open_stream: OpenStream, protocol: str, peer: str, vertex_ids: tuple[bytes, ...]
) -> wire.Vertices:
    """The bodies of `vertex_ids` that `peer` holds (it may send fewer than asked for)."""
    message = await _request(open_stream, protocol, peer, wire.GetVertices(vertex_ids))
    vertices: wire.Vertices = wire.expect(message, wire.Vertices, peer)
    return vertices
