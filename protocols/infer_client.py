"""The caller side of `/swarm/infer/1.0.0`: one reused stream per provider, calls multiplexed.

A new libp2p stream costs several times a reused one, so each provider gets one stream that
stays open; calls carry ids and may overlap. A broken stream fails the calls on it and is
reopened by the next call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from dag.errors import RemoteProtocolError, SwarmError
from protocols import ids
from protocols import infer_wire as wire
from protocols.errors import NetworkError
from protocols.libp2p_fast import QuickLock
from protocols.stream import FramedStream, Stream

log = logging.getLogger("swarm.infer")
OpenStream = Callable[[str, str], Awaitable[Stream]]


class CallFailed(SwarmError):
    """A provider answered a call with an error (`code` as on the wire: busy, deadline...)."""

    def __init__(self, code: str, reason: str, *, provider: str, expert: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.provider = provider
        self.expert = expert


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    result: wire.Result | None = None
    error: Exception | None = None


class InferChannel:
    """Calls to one provider over one stream; the reader task runs in `nursery`."""

    def __init__(self, peer: str, open_stream: OpenStream, nursery: trio.Nursery) -> None:
        self.peer = peer
        self._open = open_stream
        self._nursery = nursery
        self._framed: FramedStream | None = None
        self._open_lock = trio.Lock()
        self._send_lock = QuickLock()  # taken at once when free: once per call
        self._pending: dict[int, _Pending] = {}

    async def _stream(self) -> FramedStream:
        if self._framed is not None:
            return self._framed  # the common case: no lock, no trip through the scheduler
        async with self._open_lock:
            if self._framed is None:
                framed = FramedStream(await self._open(self.peer, ids.INFER), wire.MAX_FRAME)
                self._framed = framed
                self._nursery.start_soon(self._reader, framed)
            return self._framed

    async def call(
        self,
        request: wire.Request,
        pay: Callable[[], bytes] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> wire.TextResult | wire.ArrayResult:
        """Send `request` and wait for its answer; the caller bounds the wait. `pay` makes the
        call's IOU; it runs under the send lock, so IOUs go out in the order they are made.
        `on_sent` runs once the request is on the wire: work to do while the answer comes."""
        framed = await self._stream()
        pending = self._pending[request.id] = _Pending()
        try:
            async with self._send_lock:
                sent = False
                try:
                    body = request.encode()
                    if pay is not None:
                        body["pay"] = pay()
                    await framed.send(body)
                    sent = True
                finally:
                    if not sent:
                        # Cancelled or failed part-way through a frame: the stream's framing
                        # is broken for every later call, so it goes.
                        self._drop(framed)
            if on_sent is not None:
                on_sent()
            await pending.done.wait()
        except NetworkError:
            self._drop(framed)
            raise
        finally:
            self._pending.pop(request.id, None)
        if pending.error is not None:
            raise pending.error
        result = pending.result
        if isinstance(result, wire.ErrorResult):
            raise CallFailed(result.code, result.reason, provider=self.peer, expert=request.expert)
        assert isinstance(result, wire.TextResult | wire.ArrayResult)
        if result.expert != request.expert:
            raise RemoteProtocolError("answer names another expert than the call", peer=self.peer)
        return result

    async def _reader(self, framed: FramedStream) -> None:
        error: Exception = NetworkError("provider closed the stream", peer=self.peer)
        try:
            while (body := await framed.receive()) is not None:
                result = wire.decode_result(body, peer=self.peer)
                pending = self._pending.get(result.id)
                if pending is not None:
                    pending.result = result
                    pending.done.set()
        except (NetworkError, RemoteProtocolError) as exc:
            error = exc
        self._drop(framed)
        for pending in list(self._pending.values()):
            if not pending.done.is_set():
                pending.error = error
                pending.done.set()

    def _drop(self, framed: FramedStream) -> None:
        if self._framed is framed:
            self._framed = None
            self._nursery.start_soon(_close_quietly, framed)

    async def aclose(self) -> None:
        if self._framed is not None:
            framed, self._framed = self._framed, None
            await _close_quietly(framed)


async def _close_quietly(framed: FramedStream) -> None:
    with trio.move_on_after(1), contextlib.suppress(NetworkError):
        await framed.aclose()
