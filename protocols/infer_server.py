"""The provider side of `/swarm/infer/1.0.0`: the experts a node hosts, and how calls reach them.

Calls on one stream run concurrently and answer in any order. Calls to one tensor expert are
batched: while a forward pass runs, new calls queue, and the next pass takes them all. Every
queue is bounded and a full one answers "busy" at once; one peer may hold only so many calls
in flight, so a flood from one peer leaves the others served. numpy work that takes long
(generation, large batches) runs in worker threads; a small forward pass runs inline, where a
thread hop would cost more than the pass, and a lone one (nothing else read or waiting) is
answered by the task that read it, with no task spawned for it.

A node that serves for pay has a `PaymentGate`: each request is admitted (its IOU checked
against the channel and the call's largest cost) in the order it came off the stream, before
any work; the answer is charged (the charge stored) before it is sent; after it has gone,
the gate makes its receipt (`answered`). The receipts made within `RECEIPT_DELAY_S` go
together in one frame of their own, which the gate seals (`seal`: one signature for the
frame): sending them costs the calls nothing, and the frames are few (one per stream per
`RECEIPT_DELAY_S` at most).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
import trio

from dag.errors import RemoteProtocolError, SwarmError
from experts import GeneratorExpert, TensorExpert
from experts.errors import ExpertInputError
from protocols import infer_wire as wire
from protocols.errors import NetworkError, PeerTimeout
from protocols.libp2p_fast import QuickLock
from protocols.stream import FramedStream, Stream

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs shadow trio's own types for mypy.
    from trio_typing import TaskStatus

log = logging.getLogger("swarm.infer")

Expert = TensorExpert | GeneratorExpert
PARTIAL_FRAME_TIMEOUT_S = 5.0
INLINE_CELLS = 64 * 1024  # a forward pass over fewer input cells than this runs inline
# How long a receipt waits for others to go in one frame with. At 50 ms, not 20, a turn of
# paid calls had a p50 23 us lower, in the median of 10 runs of 24 turns of each inside one
# process (their pooled p50s, 4.5 us): a frame costs both sides a seal and a read.
RECEIPT_DELAY_S = 0.05


@dataclass(frozen=True, slots=True)
class ServeLimits:
    queue_per_expert: int = 256  # calls waiting for one expert; beyond: busy
    inflight_per_peer: int = 64  # calls one peer may have open; beyond: busy
    generator_threads: int = 2


class Busy(SwarmError):
    """The expert's queue is full, or the caller has too many calls open."""


class PaymentRefused(SwarmError):
    """A paid request the provider will not serve: no IOU, a bad one, or one too small."""

    code = "payment"


class ChannelRefused(PaymentRefused):
    """The IOU's channel cannot pay here (unknown, ended, near its expiry, another account's,
    or an IOU behind the provider's count): the client should open another channel."""

    code = "channel"


class PaymentGate(Protocol):
    """The market's hook into the call path (see `node.market_provider`)."""

    def admit(self, peer: str, request: wire.Request) -> object | None:
        """Check the request's payment; a ticket for `charge`, or None for a free call.
        Raises `PaymentRefused`."""
        ...

    def charge(self, ticket: object, request: wire.Request, result: wire.Result) -> None:
        """Charge an answered call, durably, before the answer is sent."""
        ...

    def answered(self, ticket: object, request: wire.Request, result: wire.Result) -> object:
        """A charged call's answer has gone out (or could not): its receipt, for `seal`, and
        any work that could wait."""
        ...

    def seal(self, receipts: list[object]) -> dict[str, Any]:
        """A frame's receipts, signed together: the frame's fields but "t" and "v"."""
        ...

    def release(self, ticket: object) -> None:
        """The admitted call failed: nothing is charged."""
        ...


class _Outlet:
    """The sending side of one stream: answers, and the receipts that follow them."""

    def __init__(
        self, framed: FramedStream, nursery: trio.Nursery, gate: PaymentGate | None
    ) -> None:
        self._framed = framed
        self._nursery = nursery
        self._gate = gate
        self._lock = QuickLock()  # taken at once when free: once per frame
        self._receipts: list[object] = []  # not sent yet
        self._flushing = False

    async def answer(self, result: wire.Result) -> None:
        body = result.encode()
        async with self._lock:
            await self._framed.send(body)

    def receipt(self, receipt: object) -> None:
        """Send `receipt` with those made within `RECEIPT_DELAY_S` of the first still to
        send, in one sealed frame of their own: a frame, its seal and their checks cost both
        sides more than the rest of a receipt, and an answer that carried them would wait."""
        self._receipts.append(receipt)
        if not self._flushing:
            self._flushing = True
            self._nursery.start_soon(self._flush)

    async def _flush(self) -> None:
        try:
            await trio.sleep(RECEIPT_DELAY_S)  # deliberate: the receipts of what follows
            async with self._lock:
                while self._receipts:
                    receipts = self._receipts[: wire.MAX_RECEIPTS]
                    del self._receipts[: wire.MAX_RECEIPTS]
                    assert self._gate is not None  # (only a gate makes receipts)
                    sealed = self._gate.seal(receipts)
                    body = {"t": "receipts", "v": wire.RECEIPTS_VERSION, **sealed}
                    await self._framed.send(body)
        except (NetworkError, PeerTimeout) as exc:
            log.debug("could not send receipts: %s", exc)  # (each is stored: the provider's)
        finally:
            self._flushing = False


class CallError(SwarmError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class _Waiting:
    rows: npt.NDArray[np.float32]
    done: trio.Event = field(default_factory=trio.Event)
    out: npt.NDArray[np.float32] | None = None
    error: Exception | None = None


class TensorBatcher:
    """One runner per tensor expert: calls queue while a pass runs, the next takes them all.

    A call that comes alone (no other call to this expert read and waiting) to an idle
    runner is computed at once in the caller's task (`now`), when small: the hand-over to the
    runner and back costs two or three trips through trio's scheduler, more than a small
    pass."""

    def __init__(self, expert: TensorExpert, limits: ServeLimits) -> None:
        self.expert = expert
        self.limits = limits
        self._queue: list[_Waiting] = []
        self._wake = trio.Event()
        self._running = False
        self.batches = 0
        self.rows = 0

    @property
    def idle(self) -> bool:
        """No pass runs and no call waits for one."""
        return not self._running and not self._queue

    def takes_inline(self, rows: int, cols: int) -> bool:
        """Whether a lone call of this size would be computed at once (see `now`)."""
        return self.idle and rows * cols <= INLINE_CELLS

    def now(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Compute a lone call at once, in the caller's task, when `takes_inline`."""
        out = self.expert.forward(rows)
        self.batches += 1
        self.rows += len(rows)
        return out

    async def call(self, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Queue `rows` for the next pass and wait for their output."""
        if len(self._queue) >= self.limits.queue_per_expert:
            raise Busy(f"expert {self.expert.expert_id[:12]} has {len(self._queue)} calls queued")
        waiting = _Waiting(rows)
        self._queue.append(waiting)
        self._wake.set()
        await waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.out is not None
        return waiting.out

    async def run(self) -> None:
        max_rows = self.expert.manifest.limits.max_batch
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            # Let every call that is already on its way join this pass: one pass over n rows
            # costs little more than a pass over one.
            await trio.lowlevel.checkpoint()
            self._running = True
            while self._queue:
                batch: list[_Waiting] = []
                rows = 0
                while self._queue and (not batch or rows + len(self._queue[0].rows) <= max_rows):
                    item = self._queue.pop(0)
                    batch.append(item)
                    rows += len(item.rows)
                await self._run_batch(batch)
            self._running = False

    async def _run_batch(self, batch: list[_Waiting]) -> None:
        stacked = batch[0].rows if len(batch) == 1 else np.concatenate([w.rows for w in batch])
        try:
            if stacked.size <= INLINE_CELLS:
                out = self.expert.forward(stacked)
            else:
                out = await trio.to_thread.run_sync(self.expert.forward, stacked)
        except (ExpertInputError, ValueError) as exc:
            for w in batch:
                w.error = exc
                w.done.set()
            return
        self.batches += 1
        self.rows += len(stacked)
        start = 0
        for w in batch:
            w.out = out[start : start + len(w.rows)]
            start += len(w.rows)
            w.done.set()


class ExpertHost:
    """The experts this node serves, by id, and the call path to each."""

    def __init__(
        self,
        experts: list[Expert],
        limits: ServeLimits | None = None,
        gate: PaymentGate | None = None,
    ) -> None:
        self.limits = limits or ServeLimits()
        self.gate = gate
        self.experts = {e.expert_id: e for e in experts}
        self._batchers = {
            e.expert_id: TensorBatcher(e, self.limits)
            for e in experts
            if isinstance(e, TensorExpert)
        }
        self._generators = trio.CapacityLimiter(self.limits.generator_threads)
        self._gen_waiting: Counter[str] = Counter()
        self._inflight: Counter[str] = Counter()
        self._arrived: Counter[str] = Counter()  # calls read and not yet started, per expert
        self.calls = 0
        self.latency_s: dict[str, float] = {}  # recent compute latency per expert (EWMA)

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for batcher in self._batchers.values():
                nursery.start_soon(batcher.run)
            task_status.started()

    def queue_depth(self, expert_id: str) -> int:
        batcher = self._batchers.get(expert_id)
        return len(batcher._queue) if batcher is not None else self._gen_waiting[expert_id]

    async def serve(self, stream: Stream) -> None:
        """Answer calls on one stream until the peer closes it."""
        framed = FramedStream(stream, wire.MAX_FRAME)
        peer = stream.remote_peer
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            outlet = _Outlet(framed, nursery, self.gate)
            while True:
                try:
                    body = await framed.receive(partial_timeout_s=PARTIAL_FRAME_TIMEOUT_S)
                except (RemoteProtocolError, PeerTimeout, NetworkError) as exc:
                    failure = exc  # the stream is unusable: drop the calls still on it
                    nursery.cancel_scope.cancel()
                    break
                if body is None:
                    break
                refusal: wire.ErrorResult | None = None
                ticket: object | None = None
                try:
                    request = wire.decode_request(body, peer=peer)
                except RemoteProtocolError as exc:
                    raw_id = body.get("id")
                    request_id = raw_id if isinstance(raw_id, int) and raw_id >= 0 else 0
                    refusal = wire.ErrorResult(request_id, "bad_input", str(exc))
                else:
                    if self._inflight[peer] >= self.limits.inflight_per_peer:
                        refusal = wire.ErrorResult(
                            request.id, "busy", "too many calls open from this peer"
                        )
                    elif self.gate is not None:
                        try:
                            ticket = self.gate.admit(peer, request)
                        except PaymentRefused as exc:
                            refusal = wire.ErrorResult(request.id, exc.code, str(exc))
                if refusal is not None:
                    try:
                        await outlet.answer(refusal)
                    except (NetworkError, PeerTimeout) as exc:
                        failure = exc  # the peer is gone: stop reading
                        nursery.cancel_scope.cancel()
                        break
                    continue
                self._inflight[peer] += 1
                self._arrived[request.expert] += 1
                if not framed.buffered and self._runs_inline(request):
                    # Nothing else has come in, and the pass is small: answering here costs
                    # no task and no trip through the scheduler (a spawn costs about as much
                    # as the pass), and reading on would find nothing to read.
                    await self._handle(peer, request, outlet, ticket)
                else:
                    nursery.start_soon(self._handle, peer, request, outlet, ticket)
        if failure is not None:
            raise failure

    def _runs_inline(self, request: wire.Request) -> bool:
        """Whether `request` is a tensor call its expert's batcher would compute at once
        (see `TensorBatcher`): no other call to that expert waits or runs."""
        if not isinstance(request, wire.TensorRequest) or self._arrived[request.expert] != 1:
            return False
        batcher = self._batchers.get(request.expert)
        return batcher is not None and batcher.takes_inline(request.rows, request.cols)

    async def _handle(
        self,
        peer: str,
        request: wire.Request,
        outlet: _Outlet,
        ticket: object | None = None,
    ) -> None:
        charged = False
        alone = self._arrived[request.expert] == 1
        self._arrived[request.expert] -= 1
        if not self._arrived[request.expert]:
            del self._arrived[request.expert]
        try:
            result = await self.call(request, alone=alone)
            if ticket is not None:
                assert self.gate is not None and not isinstance(result, wire.ErrorResult)
                self.gate.charge(ticket, request, result)
                charged = True
        except Busy as exc:
            result = wire.ErrorResult(request.id, "busy", str(exc))
        except CallError as exc:
            result = wire.ErrorResult(request.id, exc.code, str(exc))
        except ExpertInputError as exc:
            result = wire.ErrorResult(request.id, "bad_input", str(exc))
        except SwarmError as exc:
            log.warning("call to %s failed: %s", request.expert[:12], exc)
            result = wire.ErrorResult(request.id, "internal", str(exc))
        finally:
            if ticket is not None and not charged:
                assert self.gate is not None
                self.gate.release(ticket)
            self._inflight[peer] -= 1
            if self._inflight[peer] <= 0:
                del self._inflight[peer]  # one key per peer with calls open, not per peer ever
        try:
            await outlet.answer(result)
        except (NetworkError, PeerTimeout) as exc:
            log.debug("could not answer %s: %s", peer, exc)
        if charged:
            assert self.gate is not None
            outlet.receipt(self.gate.answered(ticket, request, result))

    async def call(self, request: wire.Request, *, alone: bool = False) -> wire.Result:
        """Run one request against a hosted expert (also used for local calls); `alone`:
        no other call to the expert is waiting to start (see `TensorBatcher`)."""
        expert = self.experts.get(request.expert)
        if expert is None:
            raise CallError("unknown_expert", f"this node hosts no expert {request.expert[:16]}")
        deadline = trio.current_time() + request.deadline_ms / 1000
        started = time.perf_counter()
        if isinstance(request, wire.TensorRequest):
            if not isinstance(expert, TensorExpert):
                raise CallError("bad_input", "a tensor call to a generator expert")
            if request.cols != expert.manifest.input_dim:
                raise CallError(
                    "bad_input",
                    f"rows must have {expert.manifest.input_dim} columns, not {request.cols}",
                )
            rows = request.array()
            if not np.isfinite(rows).all():
                # Checked per call, so one caller's NaN cannot fail a batch it shares.
                raise CallError("bad_input", "input holds NaN or inf")
            if request.rows > expert.manifest.limits.max_batch:
                raise CallError(
                    "bad_input", f"at most {expert.manifest.limits.max_batch} rows per call"
                )
            batcher = self._batchers[expert.expert_id]
            if alone and batcher.takes_inline(*rows.shape):
                out = batcher.now(rows)  # nothing to wait for: no deadline to watch
            else:
                with trio.move_on_at(deadline) as scope:
                    out = await batcher.call(rows)
                if scope.cancelled_caught:
                    raise CallError("deadline", "the deadline passed in the queue")
            result: wire.Result = wire.ArrayResult(
                request.id,
                expert.expert_id,
                out.shape[0],
                out.shape[1],
                np.ascontiguousarray(out, dtype="<f4").tobytes(),
                request.rows,
                out.shape[0],
                int((time.perf_counter() - started) * 1e6),
            )
        else:
            if not isinstance(expert, GeneratorExpert):
                raise CallError("bad_input", "a text call to a tensor expert")
            result = await self._generate(expert, request, deadline, started)
        self.calls += 1
        elapsed = time.perf_counter() - started
        old = self.latency_s.get(expert.expert_id, elapsed)
        self.latency_s[expert.expert_id] = 0.8 * old + 0.2 * elapsed
        return result

    async def _generate(
        self,
        expert: GeneratorExpert,
        request: wire.GenerateRequest,
        deadline: float,
        started: float,
    ) -> wire.Result:
        if self._gen_waiting[expert.expert_id] >= self.limits.queue_per_expert:
            raise Busy(f"expert {expert.expert_id[:12]} has too many calls queued")
        self._gen_waiting[expert.expert_id] += 1
        try:
            with trio.move_on_at(deadline) as scope:
                async with self._generators:
                    generation = await trio.to_thread.run_sync(
                        lambda: expert.generate(
                            request.prompt,
                            max_tokens=request.max_tokens,
                            temperature=request.temperature,
                            top_k=request.top_k,
                            seed=request.seed,
                        )
                    )
        finally:
            self._gen_waiting[expert.expert_id] -= 1
        if scope.cancelled_caught:
            raise CallError("deadline", "the deadline passed before the expert could run")
        return wire.TextResult(
            request.id,
            expert.expert_id,
            generation.text,
            generation.tokens_in,
            generation.tokens_out,
            int((time.perf_counter() - started) * 1e6),
        )
