"""The py-libp2p workarounds and speed-ups, each on the behaviour it keeps or fixes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from libp2p.security.noise.io import NoiseTransportReadWriter
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from dag.crypto import Scheme
from protocols.libp2p_fast import (
    QuickLock,
    install_batched_yamux_window_updates,
    install_buffered_tcp_reads,
    install_direct_noise_writes,
    install_lean_secure_reads,
    install_lean_stream_reads,
    install_lean_yamux_frames,
    install_yamux_settings_read_once,
    stream_may_receive,
)
from protocols.libp2p_fixes import install_atomic_noise_writes, install_clean_dht_stream_ends
from protocols.stream import Stream
from tests.factory import swarm


class Wire:
    """Stands for the socket under Noise: it takes a checkpoint before it sends, as trio's
    SocketStream does."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def write_msg(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(data)


def noise_writer(wire: Wire) -> NoiseTransportReadWriter:
    writer = NoiseTransportReadWriter.__new__(NoiseTransportReadWriter)
    writer.read_writer = wire  # type: ignore[assignment]
    nonces = iter(range(1_000))
    # Each call uses up a nonce, as the real cipher does.
    writer.encrypt = lambda data: bytes([next(nonces)]) + data  # type: ignore[method-assign]
    return writer


async def test_a_cancelled_noise_write_still_sends_what_it_encrypted() -> None:
    install_atomic_noise_writes()
    wire = Wire()
    writer = noise_writer(wire)
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before the write even starts
            await writer.write_msg(b"first")
        await writer.write_msg(b"second")
    # the caller still sees its cancellation, and the peer gets every nonce in order
    assert scope.cancelled_caught
    assert wire.sent == [b"\x00first", b"\x01second"]


async def test_yamux_returns_window_in_batches_and_large_messages_still_flow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates: list[int] = []
    original = YamuxStream.send_window_update

    async def counted(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)
        await original(self, increment, skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)

    async def echo(stream: Stream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    async def round_trip(stream: Stream, message: bytes) -> None:
        got = b""
        async with trio.open_nursery() as nursery:  # send while the echo comes back
            nursery.start_soon(stream.send_all, message)
            while len(got) < len(message):
                got += await stream.receive_some()
        assert got == message

    with trio.fail_after(60):
        async with swarm(tmp_path, 2, scheme=Scheme.ED25519) as (a, b):
            a.p2p.set_handler("/swarm/test-echo/1.0.0", echo)
            stream = await b.p2p.open_stream(a.peer_id, "/swarm/test-echo/1.0.0")
            updates.clear()
            for i in range(50):  # small request/answer pairs: no update per message
                await round_trip(stream, b"%04d" % i * 100)
            assert len(updates) <= 2
            # Four windows' worth each way: updates keep it flowing, in half-window steps.
            await round_trip(stream, bytes(range(256)) * 4096)
            assert 4 <= len(updates) <= 64
            await stream.aclose()


def test_yamux_reads_its_settings_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from libp2p.stream_muxer.yamux import yamux

    expected = yamux._yamux_data_read_timeout()
    install_yamux_settings_read_once()
    install_yamux_settings_read_once()

    def no_lookups(*args: object) -> None:
        raise AssertionError("the environment was read on the frame path")

    monkeypatch.setattr(yamux.os, "getenv", no_lookups)  # type: ignore[attr-defined]
    assert yamux._yamux_data_read_timeout() == expected
    assert yamux._yamux_release_on_read() is True
    assert yamux._yamux_batch_threshold_divisor() == 2


async def test_a_free_quick_lock_is_taken_at_once_and_a_held_one_queues_in_order() -> None:
    lock = QuickLock()
    ran: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_note, "other task", ran)  # runs at our next trip to the scheduler
            async with lock:
                assert ran == [] and lock.locked() and lock.value == 0  # taken, no yield
                for name in ("first", "second", "third"):  # each queues before the next
                    nursery.start_soon(_take_and_note, lock, name, ran)
                    await trio.testing.wait_all_tasks_blocked()
                assert ran == ["other task"]  # the others wait while we hold it
        assert ran == ["other task", "first", "second", "third"]  # in the order they came
    assert not lock.locked() and lock.value == 1
    with pytest.raises(RuntimeError):
        lock.release()


async def test_a_cancelled_waiter_of_a_quick_lock_leaves_the_queue() -> None:
    lock = QuickLock()
    ran: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await lock.acquire()
            with pytest.raises(trio.WouldBlock):
                lock.acquire_nowait()
            with trio.CancelScope() as gave_up:
                nursery.start_soon(_take_and_note, lock, "later", ran)
                await trio.testing.wait_all_tasks_blocked()
                gave_up.cancel()
                await lock.acquire()  # parks behind "later", then is cancelled
            assert gave_up.cancelled_caught
            lock.release()  # to "later", the only waiter left
        assert ran == ["later"] and not lock.locked()


async def _note(name: str, ran: list[str]) -> None:
    ran.append(name)


async def _take_and_note(lock: QuickLock, name: str, ran: list[str]) -> None:
    async with lock:
        ran.append(name)


async def test_writers_of_one_stream_mixing_small_and_large_messages_lose_nothing(
    tmp_path: Path,
) -> None:
    # Single-frame writes take the fast path, larger ones the library's, which waits for
    # window updates: concurrent senders (each message whole under the caller's lock, as our
    # protocols send) must get every byte through, in order, with the window accounted.
    received = bytearray()
    done = trio.Event()
    messages = [bytes([i]) * size for i, size in enumerate([10, 70_000, 300, 200_000, 1] * 8)]
    expected = b"".join(messages)

    async def sink(stream: Stream) -> None:
        while data := await stream.receive_some():
            received.extend(data)
            if len(received) >= len(expected):
                done.set()

    with trio.fail_after(60):
        async with swarm(tmp_path, 2, scheme=Scheme.ED25519) as (a, b):
            a.p2p.set_handler("/swarm/test-sink/1.0.0", sink)
            stream = await b.p2p.open_stream(a.peer_id, "/swarm/test-sink/1.0.0")
            lock = trio.StrictFIFOLock()  # FIFO: the messages go out in the order started

            async def send(message: bytes) -> None:
                async with lock:
                    await stream.send_all(message)

            async with trio.open_nursery() as nursery:
                for message in messages:
                    nursery.start_soon(send, message)
                    await trio.testing.wait_all_tasks_blocked()
            await done.wait()
            await stream.aclose()
    assert bytes(received) == expected


async def test_tcp_reads_are_served_ahead_in_order_and_end_at_eof() -> None:
    from libp2p.io.trio import TrioTCPStream

    install_buffered_tcp_reads()
    ours, theirs = trio.testing.memory_stream_pair()
    reader = TrioTCPStream(theirs)  # type: ignore[arg-type]
    receives = 0
    original = theirs.receive_some

    async def counted(max_bytes: int | None = None) -> bytes:
        nonlocal receives
        receives += 1
        return await original(max_bytes)

    theirs.receive_some = counted  # type: ignore[method-assign]
    with trio.fail_after(5):
        # Three length-prefixed messages in one segment, as Noise sends them back to back.
        await ours.send_all(b"\x00\x03abc\x00\x02de\x00\x04fghi")
        got = []
        for _ in range(3):
            size = int.from_bytes(await reader.read(2), "big")
            got.append(await reader.read(size))
        assert got == [b"abc", b"de", b"fghi"] and receives == 1
        # Two readers (the library's lock lets one wait): each gets the next bytes in order.
        results: list[bytes] = []

        async def read_into(n: int) -> None:
            results.append(await reader.read(n))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into, 3)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(read_into, 3)
            await trio.testing.wait_all_tasks_blocked()
            await ours.send_all(b"123456")
        assert results == [b"123", b"456"]
        await ours.aclose()
        assert await reader.read(10) == b""


class DhtEnds(logging.Handler):
    """Notes how py-libp2p's Kademlia server ended its inbound streams."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.ends: list[str] = []
        self.ended = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(("Stream closed (EOF)", "Failed to read DHT message")):
            self.ends.append(message)
            self.ended.set()


async def test_a_dht_request_ends_its_stream_without_a_warning(tmp_path: Path) -> None:
    logger = logging.getLogger("libp2p.kad_dht.kad_dht")
    ends = DhtEnds()
    logger.addHandler(ends)
    level = logger.level
    logger.setLevel(logging.DEBUG)  # the library's clean end is a debug line
    try:
        with trio.fail_after(60):
            async with swarm(tmp_path, 2, scheme=Scheme.ED25519) as (a, b):
                assert b.p2p.dht is not None
                # b asks a, reads the answer and closes: a's handler reads the end.
                await b.p2p.dht.peer_routing.find_closest_peers_network(bytes(32))
                await ends.ended.wait()
    finally:
        logger.removeHandler(ends)
        logger.setLevel(level)
    assert ends.ends and all(end.startswith("Stream closed (EOF)") for end in ends.ends)


class EndingStream:
    """A stream that gives `data` a byte at a time, then ends as py-libp2p's do."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def read(self, n: int | None = None) -> bytes:
        from libp2p.network.stream.exceptions import StreamEOF

        if not self.data:
            raise StreamEOF()
        byte, self.data = self.data[:1], self.data[1:]
        return byte


async def test_a_dht_stream_that_ends_inside_a_message_is_still_an_error() -> None:
    from libp2p.io.exceptions import IncompleteReadError
    from libp2p.kad_dht import kad_dht
    from libp2p.network.stream.exceptions import StreamEOF

    install_clean_dht_stream_ends()
    install_clean_dht_stream_ends()  # a second install must not wrap the wrapper
    read = kad_dht.read_varint_prefixed_bytes_limited  # type: ignore[attr-defined]
    with trio.fail_after(5):
        assert await read(EndingStream(b"\x02hi"), 100) == b"hi"  # type: ignore[arg-type]
        with pytest.raises(IncompleteReadError) as clean:
            await read(EndingStream(b""), 100)  # type: ignore[arg-type]
        assert clean.value.received_bytes == 0  # the library's clean end: close, no warning
        for cut in (b"\x85", b"\x05ab"):  # inside the length prefix, inside the body
            with pytest.raises(StreamEOF):
                await read(EndingStream(cut), 100)  # type: ignore[arg-type]


class Messages:
    """Stands for the Noise reader under a secure session: one decrypted message a read."""

    def __init__(self, *messages: bytes) -> None:
        self.messages = list(messages)

    async def read_msg(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.messages.pop(0) if self.messages else b""


async def test_secure_session_reads_cross_messages_in_order_and_end_as_the_library_does() -> None:
    from libp2p.io.exceptions import ConnectionClosedError
    from libp2p.security.secure_session import SecureSession

    install_lean_secure_reads()
    session = SecureSession.__new__(SecureSession)
    session.swarm_data, session.swarm_at = b"", 0  # type: ignore[attr-defined]
    # Yamux frames as they come: several in one message, one split across two.
    session.conn = Messages(b"HEADERbodyHEAD", b"ER2b", b"ody2tail")  # type: ignore[assignment]
    with trio.fail_after(5):
        got = [await session.read(n) for n in (6, 4, 7, 5)]
        assert got == [b"HEADER", b"body", b"HEADER2", b"body2"]
        assert await session.read() == b"tail"  # n=None: what is buffered, at once
        # the peer closes after part of a read: the part, then the library's error
        session.conn = Messages(b"ab")  # type: ignore[assignment]
        assert await session.read(5) == b"ab"
        with pytest.raises(ConnectionClosedError):
            await session.read(1)
        with pytest.raises(ConnectionClosedError):
            await session.read()


class Frames:
    """Noise messages for a Yamux muxer to read; once they are read, it waits."""

    def __init__(self, *messages: bytes) -> None:
        self.messages = list(messages)
        self.read_all = trio.Event()

    async def read_msg(self) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.messages:
            self.read_all.set()
            await trio.sleep_forever()
        return self.messages.pop(0)


def frame(typ: int, flags: int, stream_id: int, body: bytes = b"", length: int = -1) -> bytes:
    import struct

    from libp2p.stream_muxer.yamux import yamux

    size = len(body) if length < 0 else length
    return struct.pack(yamux.YAMUX_HEADER_FORMAT, 0, typ, flags, stream_id, size) + body


async def test_yamux_delivers_common_frames_itself_and_others_through_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.peer.id import ID
    from libp2p.security.secure_session import SecureSession
    from libp2p.stream_muxer.yamux import yamux

    install_lean_secure_reads()
    install_lean_yamux_frames()
    data, window, ping = yamux.TYPE_DATA, yamux.TYPE_WINDOW_UPDATE, yamux.TYPE_PING
    syn, fin = yamux.FLAG_SYN, yamux.FLAG_FIN
    wire = Frames(
        frame(data, 0, 1, b"ab") + frame(window, 0, 1, length=100),  # two in one message
        frame(data, 0, 1, b"cd")[:13],  # a body split across messages: read with a timeout
        frame(data, 0, 1, b"cd")[13:],
        frame(data, syn, 2, b"new"),  # a stream the peer opens: the library's
        frame(data, 0, 9, b"lost"),  # an unknown stream: the library drops it
        frame(data, fin, 1, b"ef"),  # the last data with FIN: the library's
        frame(ping, syn, 0, length=7),  # answered by the library
    )
    session = SecureSession.__new__(SecureSession)
    session.swarm_data, session.swarm_at = b"", 0  # type: ignore[attr-defined]
    session.conn = wire  # type: ignore[assignment]
    session.is_initiator = True
    sent: list[bytes] = []

    async def write(data: bytes) -> None:
        sent.append(data)

    session.write = write  # type: ignore[method-assign]
    peer = ID(b"\x00\x04test")
    muxer = yamux.Yamux(session, peer, is_initiator=True)
    stream = yamux.YamuxStream(1, muxer, True)
    muxer.streams[1], muxer.stream_buffers[1] = stream, bytearray()
    muxer.stream_events[1] = trio.Event()
    window_before, send_before = stream.recv_window, stream.send_window
    formatted = []
    monkeypatch.setattr(yamux.logger, "debug", lambda *args, **kw: formatted.append(args))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(muxer.handle_incoming)
            await wire.read_all.wait()
            await trio.testing.wait_all_tasks_blocked()
            opened = muxer.new_stream_receive_channel.receive_nowait()
            nursery.cancel_scope.cancel()
    assert bytes(muxer.stream_buffers[1]) == b"abcdef"
    assert stream.recv_window == window_before - 6
    assert stream.send_window == send_before + 100
    assert stream.recv_closed and not muxer.event_shutting_down.is_set()
    assert opened.stream_id == 2 and bytes(muxer.stream_buffers[2]) == b"new"
    assert 9 not in muxer.streams
    ack, pong = (frame(window, yamux.FLAG_ACK, 2), frame(ping, yamux.FLAG_ACK, 0, length=7))
    assert sent == [ack, pong]
    # The library formats its lines for the frames it handled; the common ones cost none.
    assert formatted
    formatted.clear()
    wire.messages = [frame(data, 0, 1, b"gh"), frame(window, 0, 1, length=5)] * 20
    wire.read_all = trio.Event()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(muxer.handle_incoming)
            await wire.read_all.wait()
            nursery.cancel_scope.cancel()
    assert bytes(muxer.stream_buffers[1]) == b"abcdef" + b"gh" * 20
    assert stream.send_window == send_before + 200
    # only the loop's start and its one header read: nothing per frame
    assert len(formatted) == 2, formatted


async def test_stream_reads_take_buffered_data_at_once_and_leave_the_rest_to_the_library(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.network.stream.exceptions import StreamReset
    from libp2p.network.stream.net_stream import NetStream
    from libp2p.peer.id import ID
    from libp2p.stream_muxer.yamux import yamux

    install_batched_yamux_window_updates()
    install_lean_stream_reads()
    install_lean_stream_reads()  # a second install must not wrap the wrapper
    updates: list[int] = []

    async def window_update(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
        updates.append(increment)

    monkeypatch.setattr(YamuxStream, "send_window_update", window_update)
    muxer = yamux.Yamux(Frames(), ID(b"\x00\x04test"), is_initiator=True)  # type: ignore[arg-type]
    muxed = yamux.YamuxStream(1, muxer, True)
    muxer.streams[1], muxer.stream_buffers[1] = muxed, bytearray()
    muxer.stream_events[1] = trio.Event()
    stream = NetStream(muxed, None, None)
    formatted = []
    monkeypatch.setattr(yamux.logger, "debug", lambda *args, **kw: formatted.append(args))

    def deliver(data: bytes) -> None:  # as the muxer's reader does
        muxer.stream_buffers[1].extend(data)
        muxed.recv_window -= len(data)
        muxer.stream_events[1].set()

    with trio.fail_after(5):
        deliver(b"abcdef")
        assert [await stream.read(4), await stream.read(100)] == [b"abcd", b"ef"]
        assert not formatted and not updates  # no lines formatted, no update due
        got: list[bytes] = []

        async def reader() -> None:
            got.append(await stream.read(100))

        async with trio.open_nursery() as nursery:  # an empty buffer: the read waits
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert not got
            deliver(b"gh")
        assert got == [b"gh"] and not formatted
        # A read that uses up half the window sends its update: the library's path.
        half = b"x" * (muxed.target_recv_window // 2 + 1)  # (the update may grow the target)
        deliver(half)
        assert await stream.read(1 << 20) == half
        assert updates and formatted
        # A reset stream with data left: the library's error, as before...
        deliver(b"lost")
        muxed.reset_received = True
        with pytest.raises(StreamReset):
            await stream.read(100)
        # ...and a reset that comes while a read waits ends it with that error too.
        muxer.stream_buffers[1].clear()
        muxed.reset_received = False
        stream._state = type(stream._state).OPEN
        reset: list[BaseException] = []

        async def reset_reader() -> None:
            with pytest.raises(StreamReset) as caught:
                await stream.read(100)
            reset.append(caught.value)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reset_reader)
            await trio.testing.wait_all_tasks_blocked()
            muxed.reset_received = True
            muxer.stream_events[1].set()
        assert len(reset) == 1


async def test_a_read_cancelled_while_it_sends_the_window_update_keeps_its_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from libp2p.network.stream.net_stream import NetStream
    from libp2p.peer.id import ID
    from libp2p.stream_muxer.yamux import yamux

    install_batched_yamux_window_updates()
    install_lean_stream_reads()
    muxer = yamux.Yamux(Frames(), ID(b"\x00\x04test"), is_initiator=True)  # type: ignore[arg-type]
    muxed = yamux.YamuxStream(1, muxer, True)
    muxer.streams[1], muxer.stream_buffers[1] = muxed, bytearray()
    muxer.stream_events[1] = trio.Event()
    stream = NetStream(muxed, None, None)
    half = b"x" * (muxed.target_recv_window // 2 + 1)  # enough to make an update due
    muxer.stream_buffers[1].extend(half)
    muxed.recv_window -= len(half)
    updates: list[int] = []
    got = b""
    with trio.fail_after(5), trio.CancelScope() as scope:

        async def window_update(self: YamuxStream, increment: int, skip_lock: bool = False) -> None:
            scope.cancel()  # the caller's deadline passes while the update goes out
            await trio.lowlevel.checkpoint()
            updates.append(increment)

        monkeypatch.setattr(YamuxStream, "send_window_update", window_update)
        got = await stream.read(1 << 20)
    # The bytes the read took came back to it (they are gone from the buffer).
    assert got == half and updates and not muxer.stream_buffers[1]
    # Whether more may come is known without a read: not once the peer has ended its side.
    assert stream_may_receive(stream)
    muxed.recv_closed = True
    assert not stream_may_receive(stream)
    muxed.recv_closed = False
    muxer.event_shutting_down.set()
    assert not stream_may_receive(stream)


async def test_noise_messages_go_straight_to_the_socket_whole_and_in_order() -> None:
    import socket

    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.raw_connection import RawConnection

    install_atomic_noise_writes()
    install_direct_noise_writes()
    ours, theirs = trio.socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    tcp = TrioTCPStream(trio.SocketStream(ours))
    writer = NoiseTransportReadWriter(RawConnection(tcp, True), None)
    nonces = iter(range(1_000))
    writer.encrypt = lambda data: bytes([next(nonces)]) + data  # type: ignore[method-assign]
    peer = trio.SocketStream(theirs)
    ran: list[str] = []

    async def read_messages(count: int) -> list[bytes]:
        got: list[bytes] = []
        buffer = b""
        while len(got) < count:
            buffer += await peer.receive_some(1 << 16)
            while len(buffer) >= 2 and len(buffer) >= 2 + (size := int.from_bytes(buffer[:2])):
                got.append(buffer[2 : 2 + size])
                buffer = buffer[2 + size :]
        return got

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_note, "other task", ran)
            await writer.write_msg(b"small")  # the socket takes it at once: no wait
            assert ran == []
        assert await read_messages(1) == [b"\x00small"]
        # Messages larger than the socket takes at once, from two tasks, one cancelled
        # mid-write: each arrives whole, in the order the nonces were used.
        big = [bytes([65 + i]) * 60_000 for i in range(3)]
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as scope:
                nursery.start_soon(writer.write_msg, big[0])
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(writer.write_msg, big[1])
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
            nursery.start_soon(writer.write_msg, big[2])
            got = await read_messages(3)
        assert got == [bytes([1 + i]) + m for i, m in enumerate(big)]
