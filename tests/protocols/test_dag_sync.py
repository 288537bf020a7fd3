"""The DAG's carriers without sockets: the per-peer outbox, push over a fake stream, and the
sync rate limit."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dag.errors import RemoteProtocolError
from protocols import dag_wire as wire
from protocols.dag_sync import Outbox, PushChannel, RateLimit, serve_push
from protocols.stream import FramedStream, Stream, memory_stream_pair


async def test_what_queues_during_a_send_goes_out_in_the_next_batch() -> None:
    sent: list[list[int]] = []
    release = trio.Event()

    async def send(batch: list[int]) -> None:
        sent.append(batch)
        if len(sent) == 1:
            await release.wait()

    outbox: Outbox[int] = Outbox(send, batch=3, limit=100)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            outbox.put(0)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == [[0]]  # the first send is in flight
            for i in range(1, 6):
                outbox.put(i)
            release.set()
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert sent == [[0], [1, 2, 3], [4, 5]]
    assert len(outbox) == 0


async def test_an_outbox_past_its_limit_drops_and_counts() -> None:
    async def send(batch: list[int]) -> None:
        pass

    outbox: Outbox[int] = Outbox(send, batch=2, limit=2)
    assert outbox.put(1) and outbox.put(2)
    assert not outbox.put(3)
    assert (len(outbox), outbox.dropped) == (2, 1)
    with pytest.raises(ValueError, match="batch >= 1"):
        Outbox(send, batch=0, limit=1)


async def test_pushed_vertices_arrive_in_order_on_one_stream() -> None:
    ours, theirs = memory_stream_pair("a", "b")
    opened: list[str] = []

    async def open_stream(peer: str, protocol: str) -> Stream:
        opened.append(peer)
        return ours

    got: list[tuple[bytes, str]] = []

    async def ingest(item: bytes, peer: str) -> None:
        got.append((item, peer))

    channel = PushChannel("b", open_stream, "/test/push")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_push, theirs, ingest)
            await channel.push([b"v1", b"v2"])
            await channel.push([b"v3"])
            await ours.aclose()  # serve_push returns at the end of the stream
    assert got == [(b"v1", "a"), (b"v2", "a"), (b"v3", "a")]
    assert opened == ["b"]  # one stream for every push


async def test_a_push_stream_refuses_anything_but_vertices() -> None:
    ours, theirs = memory_stream_pair("a", "b")

    async def ingest(item: bytes, peer: str) -> None:
        raise AssertionError("nothing may be ingested")

    with trio.fail_after(5):
        await FramedStream(ours).send(wire.Query((b"x" * 32,)).encode())
        with pytest.raises(RemoteProtocolError, match="expected Vertices"):
            await serve_push(theirs, ingest)


def test_the_rate_limit_forgets_peers_once_their_bucket_has_refilled() -> None:
    limit = RateLimit(rate=10.0, burst=20.0)
    for i in range(1000):  # a stream of peers, one a second, each asking once
        assert limit.take(f"p{i}", 5, float(i))
    assert len(limit) <= RateLimit.SWEEP_MIN + 1  # not one bucket per peer ever seen
    # A peer that drained its bucket is held until it refills, however many others ask.
    now = 1000.0
    assert limit.take("greedy", 20, now)
    for i in range(1000):
        assert limit.take(f"q{i}", 5, now)
    assert not limit.take("greedy", 1, now)
    assert limit.take("greedy", 10, now + 1.0)  # refilled at its rate, no faster
    assert not limit.take("greedy", 1, now + 1.0)
