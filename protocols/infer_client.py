"""The caller side of `/swarm/infer/1.0.0`: one reused stream per provider, calls multiplexed.

A new libp2p stream costs several times a reused one, so each provider gets one stream that
stays open; calls carry ids and may overlap. A broken stream fails the calls on it and is
reopened by the next call; so is one the provider closed while no call was waiting.

The receipts of paid answers come after them (see `protocols.infer_wire`): whichever call
reads the stream hands them to `on_receipts`; when receipts are owed and no call is waiting,
a task of the channel's reads them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from dag.errors import RemoteProtocolError, SwarmError
from protocols import ids
from protocols import infer_wire as wire
from protocols.errors import NetworkError
from protocols.libp2p_fast import QuickLock
from protocols.stream import FramedStream, Stream

log = logging.getLogger("swarm.infer")
OpenStream = Callable[[str, str], Awaitable[Stream]]
OnReceipts = Callable[[str, list[Any], bytes], None]  # (peer, receipts, their seal)
RECEIPT_WAIT_S = 0.05  # how often an idle stream that owes receipts is read for them
RECEIPT_TIMEOUT_S = 10.0  # receipts owed longer than this on an idle stream are given up


class CallFailed(SwarmError):
    """A provider answered a call with an error (`code` as on the wire: busy, deadline...)."""

    def __init__(self, code: str, reason: str, *, provider: str, expert: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.provider = provider
        self.expert = expert


class Payment(Protocol):
    """What pays for one call (the market's ticket for it)."""

    def pay(self) -> wire.Pay:
        """The call's number and IOU, made as its request goes on the wire."""

    def sent(self) -> None:
        """The request is on the wire: work that can be done while the answer comes."""


class _Pending:
    """One call waiting for its answer. `wake` is set when it is answered or failed, or when
    it is to take over reading the stream."""

    __slots__ = ("result", "error", "wake", "paid")

    def __init__(self, paid: bool) -> None:
        self.result: wire.Result | None = None
        self.error: Exception | None = None
        self.wake = trio.Event()
        self.paid = paid  # its answer is owed a receipt

    @property
    def settled(self) -> bool:
        return self.result is not None or self.error is not None


class _Line:
    """One stream to the provider and the calls waiting for answers on it."""

    __slots__ = ("framed", "pending", "reading", "owed", "draining")

    def __init__(self, framed: FramedStream) -> None:
        self.framed = framed
        self.pending: dict[int, _Pending] = {}
        self.reading = False  # one of the waiting calls (or `_drain`) is reading the stream
        self.owed = 0  # paid answers read whose receipts have not come yet
        self.draining = False  # `_drain` runs for this line

    def waiting(self) -> bool:
        return any(not p.settled for p in self.pending.values())


class InferChannel:
    """Calls to one provider over one stream. There is no reader task: one of the waiting
    callers at a time reads the stream, hands each answer to its caller, and passes the
    reading on when its own answer has come or it was cancelled (a cancelled read takes
    nothing from the stream). A call alone on the channel thus reads its own answer, with no
    task in between."""

    def __init__(
        self,
        peer: str,
        open_stream: OpenStream,
        nursery: trio.Nursery,
        on_receipts: OnReceipts | None = None,
    ) -> None:
        self.peer = peer
        self._open = open_stream
        self._nursery = nursery  # closes dropped streams, runs `_drain`
        self._on_receipts = on_receipts
        self._line: _Line | None = None
        self._open_lock = trio.Lock()
        self._send_lock = QuickLock()  # taken at once when free: once per call

    async def _stream(self) -> _Line:
        line = self._line
        if line is not None:
            if line.pending or line.framed.may_receive():
                return line  # the common case: no lock, no trip through the scheduler
            # Idle, and the provider closed or reset it meanwhile (nobody was reading to
            # see it): a new stream, not a call sent into a dead one.
            self._drop(line)
        async with self._open_lock:
            if self._line is None:
                self._line = _Line(
                    FramedStream(await self._open(self.peer, ids.INFER), wire.MAX_FRAME)
                )
            return self._line

    async def call(
        self, request: wire.Request, payment: Payment | None = None
    ) -> wire.TextResult | wire.ArrayResult:
        """Send `request` and wait for its answer; the caller bounds the wait. A paid call's
        `payment` makes what pays for it under the send lock (so paid calls go out in the
        order of their numbers), and is told once the request is on the wire."""
        line = await self._stream()
        pending = line.pending[request.id] = _Pending(payment is not None)
        try:
            async with self._send_lock:
                sent = False
                try:
                    body = request.encode()
                    if payment is not None:
                        payment.pay().add_to(body)
                    await line.framed.send(body)
                    sent = True
                finally:
                    if not sent:
                        # Cancelled or failed part-way through a frame: the stream's framing
                        # is broken for every later call, so it goes, with the calls on it.
                        self._fail(line, NetworkError("a call broke off mid-frame", peer=self.peer))
            if payment is not None:
                payment.sent()
            while not pending.settled:
                if line.reading:
                    await pending.wake.wait()
                    if not pending.settled:
                        pending.wake = trio.Event()  # woken to read next
                else:
                    await self._read(line, pending)
        except NetworkError:
            self._drop(line)
            raise
        finally:
            line.pending.pop(request.id, None)
        if pending.error is not None:
            raise pending.error
        result = pending.result
        if isinstance(result, wire.ErrorResult):
            raise CallFailed(result.code, result.reason, provider=self.peer, expert=request.expert)
        assert isinstance(result, wire.TextResult | wire.ArrayResult)
        if result.expert != request.expert:
            raise RemoteProtocolError("answer names another expert than the call", peer=self.peer)
        return result

    async def _read(self, line: _Line, mine: _Pending | None = None) -> None:
        """Read answers and receipts, giving each answer to its call, until `mine` is
        settled (for `_drain`, `mine` None: until no receipt is owed or a call waits); then
        (or when cancelled) pass the reading to another call still waiting, or, with
        receipts owed and none waiting, to `_drain`."""
        line.reading = True
        try:
            while not (mine.settled if mine is not None else not line.owed or line.waiting()):
                body = await line.framed.receive()
                if body is None:
                    raise NetworkError("provider closed the stream", peer=self.peer)
                sealed = wire.decode_receipts(body, peer=self.peer)
                if sealed is not None:
                    line.owed = max(0, line.owed - len(sealed[0]))
                    if self._on_receipts is not None:
                        self._on_receipts(self.peer, *sealed)
                    continue
                result = wire.decode_result(body, peer=self.peer)
                pending = line.pending.get(result.id)
                if pending is not None:  # (else a late answer to a call that gave up)
                    pending.result = result
                    pending.wake.set()
                    if pending.paid and not isinstance(result, wire.ErrorResult):
                        line.owed += 1
        except (NetworkError, RemoteProtocolError) as exc:
            self._fail(line, exc)
        finally:
            line.reading = False
            for pending in line.pending.values():
                if pending is not mine and not pending.settled:
                    pending.wake.set()  # the next reader
                    break
            else:
                if line.owed and not line.draining and self._line is line:
                    line.draining = True
                    self._nursery.start_soon(self._drain, line)

    async def _drain(self, line: _Line) -> None:
        """Read the receipts owed on a stream no call is reading (at the end of a burst of
        calls: during one, the calls read them)."""
        try:
            while line.owed and self._line is line:
                await trio.sleep(RECEIPT_WAIT_S)  # deliberate: a call may come to read them
                if line.reading or line.waiting() or not line.owed:
                    continue
                with trio.move_on_after(RECEIPT_TIMEOUT_S) as scope:
                    await self._read(line)
                if scope.cancelled_caught:
                    log.warning("%d receipts from %s did not come", line.owed, self.peer[-8:])
                    line.owed = 0
        finally:
            line.draining = False

    def _fail(self, line: _Line, error: Exception) -> None:
        """The line's stream is broken: it goes, and every call waiting on it gets `error`.
        (A call reading it sees its error once its read returns: the provider closes a stream
        whose framing broke.)"""
        self._drop(line)
        for pending in line.pending.values():
            if not pending.settled:
                pending.error = error
                pending.wake.set()

    def _drop(self, line: _Line) -> None:
        if self._line is line:
            self._line = None
            self._nursery.start_soon(_close_quietly, line.framed)

    async def aclose(self) -> None:
        if self._line is not None:
            line, self._line = self._line, None
            await _close_quietly(line.framed)


async def _close_quietly(framed: FramedStream) -> None:
    with trio.move_on_after(1), contextlib.suppress(NetworkError):
        await framed.aclose()
