"""The inference protocol over in-memory streams: no sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

import experts
from dag.errors import RemoteProtocolError
from protocols import infer_wire as wire
from protocols.errors import PeerTimeout
from protocols.framing import HEADER, encode_frame
from protocols.infer_client import CallFailed, InferChannel
from protocols.infer_server import ExpertHost, ServeLimits
from protocols.stream import FramedStream, MemoryStream, Stream, memory_stream_pair

FFN = experts.build_ffn(64, seed=1)


@asynccontextmanager
async def provider(
    host: ExpertHost, caller: str = "caller"
) -> AsyncIterator[tuple[InferChannel, list[Stream]]]:
    """A channel whose streams are served by `host`, each over an in-memory pair."""
    served: list[Stream] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)

        async def open_stream(peer: str, protocol: str) -> Stream:
            ours, theirs = memory_stream_pair(caller, peer)
            served.append(theirs)
            nursery.start_soon(host.serve, theirs)
            return ours

        yield InferChannel("provider", open_stream, nursery), served
        nursery.cancel_scope.cancel()


def tensor(request_id: int, rows: np.ndarray, expert: str = FFN.expert_id) -> wire.TensorRequest:
    return wire.TensorRequest.of(request_id, expert, 5000, rows)


async def test_tensor_calls_share_one_stream_and_are_batched() -> None:
    host = ExpertHost([FFN])
    rows = np.random.default_rng(0).standard_normal((40, 64)).astype(np.float32)
    with trio.fail_after(10):
        async with provider(host) as (channel, served):
            results: dict[int, np.ndarray] = {}

            async def one(i: int) -> None:
                result = await channel.call(tensor(i, rows[i]))
                assert isinstance(result, wire.ArrayResult)
                results[i] = result.array()
                assert (result.tokens_in, result.tokens_out) == (1, 1)

            async with trio.open_nursery() as nursery:
                for i in range(40):
                    nursery.start_soon(one, i)
    assert len(served) == 1  # every call rode the same stream
    np.testing.assert_allclose(
        np.vstack([results[i] for i in range(40)]), FFN.forward(rows), rtol=1e-5, atol=1e-5
    )


async def test_calls_that_arrive_together_share_one_forward_pass() -> None:
    host = ExpertHost([FFN])
    ours, theirs = memory_stream_pair()
    rows = np.random.default_rng(1).standard_normal((30, 64)).astype(np.float32)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            nursery.start_soon(host.serve, theirs)
            # 30 calls in one write, as a busy caller's frames arrive in one TCP read
            await ours.send_all(
                b"".join(encode_frame(tensor(i, rows[i]).encode()) for i in range(30))
            )
            framed = FramedStream(ours)
            got: dict[int, np.ndarray] = {}
            while len(got) < 30:
                body = await framed.receive_required()
                result = wire.decode_result(body, peer="p")
                assert isinstance(result, wire.ArrayResult)
                got[result.id] = result.array()
            nursery.cancel_scope.cancel()
    np.testing.assert_allclose(
        np.vstack([got[i] for i in range(30)]), FFN.forward(rows), rtol=1e-5, atol=1e-5
    )
    batcher = host._batchers[FFN.expert_id]
    assert batcher.rows == 30 and batcher.batches <= 3


async def test_a_lone_call_is_computed_at_once_without_the_batch_runner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = ExpertHost([FFN])  # host.run (the batch runner) is never started here
    ours, theirs = memory_stream_pair()
    handled_in, handle = [], ExpertHost._handle

    async def recorded(self: ExpertHost, *args: Any) -> None:
        handled_in.append(trio.lowlevel.current_task())
        await handle(self, *args)

    monkeypatch.setattr(ExpertHost, "_handle", recorded)
    row = np.random.default_rng(2).standard_normal(64).astype(np.float32)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.serve, theirs)
            framed = FramedStream(ours)
            for i in range(3):  # one after another, as a sequential caller sends them
                await framed.send(tensor(i, row).encode())
                result = wire.decode_result(await framed.receive_required(), peer="p")
                assert isinstance(result, wire.ArrayResult) and result.id == i
                np.testing.assert_allclose(result.array(), FFN.forward(row[None]), rtol=1e-5)
            nursery.cancel_scope.cancel()
    assert host._batchers[FFN.expert_id].batches == 3
    # ...and answered by the task that read it: no task spawned per call
    assert len(handled_in) == 3 and len(set(handled_in)) == 1
    assert handled_in[0].name.endswith("serve")


async def test_generation_counts_tokens_as_the_expert_does() -> None:
    math = experts.load_generator("mathematics")
    with trio.fail_after(10):
        async with provider(ExpertHost([math])) as (channel, _):
            result = await channel.call(
                wire.GenerateRequest(1, math.expert_id, 5000, "457+268=", max_tokens=8)
            )
    local = math.generate("457+268=", max_tokens=8)
    assert isinstance(result, wire.TextResult)
    assert (result.text, result.tokens_in, result.tokens_out) == (
        local.text,
        local.tokens_in,
        local.tokens_out,
    )


@pytest.mark.parametrize(
    ("request_for", "code"),
    [
        (lambda: tensor(1, np.zeros((1, 64)), expert="ab" * 32), "unknown_expert"),
        (lambda: tensor(2, np.zeros((1, 63))), "bad_input"),
        (lambda: wire.GenerateRequest(3, FFN.expert_id, 5000, "hi"), "bad_input"),
    ],
)
async def test_bad_calls_get_typed_errors(
    request_for: Callable[[], wire.Request], code: str
) -> None:
    with trio.fail_after(10):
        async with provider(ExpertHost([FFN])) as (channel, _):
            with pytest.raises(CallFailed) as info:
                await channel.call(request_for())
            assert info.value.code == code
            # the stream still serves after an error
            ok = await channel.call(tensor(9, np.zeros((1, 64))))
            assert isinstance(ok, wire.ArrayResult)


@pytest.mark.parametrize(
    ("key", "value"),
    [("id", True), ("id", -1), ("deadline_ms", 600_001), ("rows", 1.0), ("cols", None)],
)
def test_counts_out_of_range_or_of_another_type_are_refused_by_name(key: str, value: Any) -> None:
    body = tensor(1, np.zeros(64, dtype=np.float32)).encode()
    assert isinstance(wire.decode_request(dict(body), peer="p"), wire.TensorRequest)
    body[key] = value
    with pytest.raises(RemoteProtocolError, match=key):
        wire.decode_request(body, peer="p")


@pytest.mark.parametrize("value", [None, -1, 2**63, "1", 1.0])
def test_a_paid_request_carries_its_iou_and_its_own_number(value: Any) -> None:
    pay = wire.Pay(b"iou bytes", 7)
    request = replace(tensor(1, np.zeros(64, dtype=np.float32)), pay=pay)
    body = request.encode()
    assert (body["pay"], body["pay_seq"]) == (b"iou bytes", 7)
    assert wire.decode_request(dict(body), peer="p") == request
    if value is None:
        del body["pay_seq"]  # an IOU with no number: a replay could not be told
    else:
        body["pay_seq"] = value
    with pytest.raises(RemoteProtocolError, match="pay_seq"):
        wire.decode_request(body, peer="p")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("receipts", None),
        ("receipts", []),
        ("receipts", "receipt"),
        ("receipts", {"a": 1}),
        ("receipts", [["r"]] * (wire.MAX_RECEIPTS + 1)),
        ("seal", None),
        ("seal", "s"),
        ("seal", b"s" * (wire.MAX_SEAL_BYTES + 1)),
        ("v", 1),  # (receipts signed one by one, as swarm-node sent them before seals)
    ],
)
def test_a_frame_of_receipts_with_none_too_many_or_no_seal_is_refused(key: str, value: Any) -> None:
    body: dict[str, Any] = {
        "t": "receipts",
        "v": wire.RECEIPTS_VERSION,
        "receipts": [["r"]],
        "seal": b"s",
    }
    assert wire.decode_receipts(body, peer="p") == ([["r"]], b"s")
    if value is None:
        del body[key]
    else:
        body[key] = value
    with pytest.raises(RemoteProtocolError, match=key if key != "v" else "version 1 is not 2"):
        wire.decode_receipts(body, peer="p")


async def test_a_malformed_receipts_frame_fails_the_calls_on_the_stream() -> None:
    ours, theirs = memory_stream_pair("caller", "provider")

    async def open_stream(peer: str, protocol: str) -> Stream:
        return ours

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            got: list[Any] = []
            channel = InferChannel(
                "provider", open_stream, nursery, on_receipts=lambda *frame: got.append(frame)
            )
            provider_side = FramedStream(theirs, wire.MAX_FRAME)

            async def answer() -> None:
                body = await provider_side.receive_required()
                receipts = {
                    "t": "receipts",
                    "v": wire.RECEIPTS_VERSION,
                    "receipts": [["r1"]],
                    "seal": b"s",
                }
                await provider_side.send(receipts)  # (read by the call, and handed on)
                result = wire.ArrayResult(body["id"], FFN.expert_id, 1, 1, bytes(4), 1, 1, 1)
                await provider_side.send(result.encode())
                await provider_side.receive_required()
                await provider_side.send({**receipts, "receipts": "no"})

            nursery.start_soon(answer)
            await channel.call(tensor(1, np.zeros((1, 64))))
            assert got == [("provider", [["r1"]], b"s")]  # a frame's receipts go to the market
            with pytest.raises(RemoteProtocolError, match="receipts must be an array"):
                await channel.call(tensor(2, np.zeros((1, 64))))
            nursery.cancel_scope.cancel()


async def test_a_flooding_peer_is_told_busy_and_others_are_served() -> None:
    math = experts.load_generator("mathematics")
    host = ExpertHost([math], ServeLimits(inflight_per_peer=2, generator_threads=1))
    outcomes: list[str] = []
    # The generator's one thread is ours until every call of the flood has been read: how
    # many are told busy does not hang on how fast this machine generates.
    await host._generators.acquire()
    with trio.fail_after(20):
        async with provider(host, "flood") as (flood, _), provider(host, "calm") as (calm, _):

            async def flood_one(i: int) -> None:
                request = wire.GenerateRequest(i, math.expert_id, 10_000, "1+1=", max_tokens=64)
                try:
                    await flood.call(request)
                    outcomes.append("ok")
                except CallFailed as exc:
                    outcomes.append(exc.code)

            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(flood_one, i)
                await trio.testing.wait_all_tasks_blocked()
                assert outcomes == ["busy"] * 18  # two are open, the rest told at once
                host._generators.release()
                result = await calm.call(
                    wire.GenerateRequest(100, math.expert_id, 10_000, "2+2=", max_tokens=4)
                )
                assert isinstance(result, wire.TextResult)
    assert sorted(outcomes) == ["busy"] * 18 + ["ok"] * 2


async def test_half_a_frame_then_silence_times_out(autojump_clock: trio.testing.MockClock) -> None:
    host = ExpertHost([FFN])
    ours, theirs = memory_stream_pair()
    with trio.fail_after(60):
        await ours.send_all(HEADER.pack(100) + b"only part")
        with pytest.raises(PeerTimeout, match="stalled inside a frame"):
            await host.serve(theirs)


async def test_oversized_frame_is_refused_unread() -> None:
    host = ExpertHost([FFN])
    ours, theirs = memory_stream_pair()
    await ours.send_all(HEADER.pack(wire.MAX_FRAME + 1))
    with trio.fail_after(5), pytest.raises(Exception, match="exceeds the limit"):
        await host.serve(theirs)


async def test_truncated_stream_fails_pending_calls() -> None:
    ours, theirs = memory_stream_pair()

    async def open_stream(peer: str, protocol: str) -> Stream:
        return ours

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            channel = InferChannel("p", open_stream, nursery)

            async def provider_dies() -> None:
                framed = FramedStream(theirs)
                await framed.receive()
                await theirs.send_all(HEADER.pack(50) + b"cut")
                await theirs.aclose()

            nursery.start_soon(provider_dies)
            with pytest.raises(Exception, match="inside a frame|closed"):
                await channel.call(tensor(1, np.zeros((1, 64))))


def answer(request_id: int, value: float) -> dict[str, Any]:
    data = np.full((1, 64), value, dtype="<f4").tobytes()
    return wire.ArrayResult(request_id, FFN.expert_id, 1, 64, data, 1, 1, 0).encode()


async def test_waiting_calls_read_their_answers_and_pass_the_reading_on() -> None:
    # A scripted provider takes four calls and answers them last first. The call that reads
    # the stream is cancelled before any answer comes; the others still get their own
    # answers, one of them takes over the reading, and the stream stays in step.
    ours, theirs = memory_stream_pair()
    opened: list[Stream] = []

    async def open_stream(peer: str, protocol: str) -> Stream:
        opened.append(ours)
        return ours

    row = np.zeros(64, dtype=np.float32)
    got: dict[int, float] = {}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            channel = InferChannel("p", open_stream, nursery)
            framed = FramedStream(theirs)
            scopes = {i: trio.CancelScope() for i in (0, 1, 2, 3, 7)}

            async def one(i: int) -> None:
                with scopes[i]:
                    result = await channel.call(tensor(i, row))
                    assert isinstance(result, wire.ArrayResult)
                    got[i] = float(result.array()[0, 0])

            async with trio.open_nursery() as calls:
                for i in range(4):
                    calls.start_soon(one, i)
                    await trio.testing.wait_all_tasks_blocked()
                ids = [(await framed.receive_required())["id"] for _ in range(4)]
                assert ids == [0, 1, 2, 3]
                line = channel._line
                assert line is not None and line.reading  # a waiting call reads...
                scopes[0].cancel()  # ...and that one gives up: another takes over
                await trio.testing.wait_all_tasks_blocked()
                assert line.reading and 0 not in line.pending
                for i in (3, 0, 2, 1):  # the answer to the call that gave up comes too
                    await framed.send(answer(i, 10.0 + i))
            assert got == {1: 11.0, 2: 12.0, 3: 13.0}
            assert not line.reading and not line.pending
            # A lone call afterwards reads its own answer on the same stream.
            async with trio.open_nursery() as calls:
                calls.start_soon(one, 7)
                assert (await framed.receive_required())["id"] == 7
                await framed.send(answer(7, 17.0))
            assert got[7] == 17.0 and len(opened) == 1
            nursery.cancel_scope.cancel()


class Closing:
    """A memory stream that knows, as a libp2p one does, when its peer has closed it."""

    def __init__(self, stream: MemoryStream) -> None:
        self.inner, self.remote_peer, self.closed = stream, stream.remote_peer, False

    async def receive_some(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes) -> None:
        await self.inner.send_all(data)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def may_receive(self) -> bool:
        return not self.closed


async def test_a_stream_the_provider_closed_between_calls_is_replaced() -> None:
    streams: list[Closing] = []

    async def provider(theirs: Stream, mine: Closing) -> None:
        # answers one call, then closes its end (a provider that restarts, say)
        framed = FramedStream(theirs)
        body = await framed.receive_required()
        await framed.send(answer(body["id"], float(len(streams))))
        await theirs.aclose()
        mine.closed = True

    async def open_stream(peer: str, protocol: str) -> Stream:
        ours, theirs = memory_stream_pair()
        streams.append(Closing(ours))
        nursery.start_soon(provider, theirs, streams[-1])
        return streams[-1]

    row = np.zeros(64, dtype=np.float32)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            channel = InferChannel("p", open_stream, nursery)
            await channel.call(tensor(1, row))
            await trio.testing.wait_all_tasks_blocked()
            assert streams[0].closed  # while no call waited: nobody has read its end
            result = await channel.call(tensor(2, row))
            assert isinstance(result, wire.ArrayResult) and result.id == 2
            assert float(result.array()[0, 0]) == 2.0
            assert len(streams) == 2


async def test_one_callers_nan_does_not_fail_the_calls_batched_with_it() -> None:
    host = ExpertHost([FFN])
    ours, theirs = memory_stream_pair()
    bad = np.full((1, 64), np.nan, dtype=np.float32)
    good = np.ones((1, 64), dtype=np.float32)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            nursery.start_soon(host.serve, theirs)
            await ours.send_all(
                encode_frame(tensor(1, bad).encode()) + encode_frame(tensor(2, good).encode())
            )
            framed = FramedStream(ours)
            got: dict[int, wire.Result] = {}
            while len(got) < 2:
                result = wire.decode_result(await framed.receive_required(), peer="p")
                got[result.id] = result
            nursery.cancel_scope.cancel()
    assert isinstance(got[1], wire.ErrorResult) and got[1].code == "bad_input"
    assert isinstance(got[2], wire.ArrayResult)
