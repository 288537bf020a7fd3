"""Speed-ups of py-libp2p 0.8's message path (TCP, Noise, Yamux), each in one place.

Each replaces a piece of the library with one that reads, writes and orders the same bytes
and raises the same errors, with fewer copies, locks and trips through trio's scheduler.
Each is installed by `P2PService` and explained where it is defined; drop one when the
library's own path is as fast.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import trio
from libp2p.io.abc import Reader

READ_AHEAD = 64 * 1024  # what one socket read asks for (trio's own default)


def install_batched_yamux_window_updates() -> None:
    """Let Yamux return receive window in batches, as go-yamux does, not after every read.

    py-libp2p 0.8 answers nearly every read of a stream with a WINDOW_UPDATE (its
    "release on read" and "partial slack" paths): one more encrypted frame, socket write and
    wakeup on the other side per message, so a request and its answer cost three or four
    frames instead of two. Here a stream sends an update only once the window it has used
    reaches half its target, with the library's own grow and auto-tune steps (its go-yamux
    path); a sender is never held up while it has half a window left. Installing twice is
    harmless.
    """
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    if getattr(YamuxStream._auto_tune_and_send_window_update, "swarm_batched", False):
        return

    async def release(self: Any, *, bytes_read: int = 0) -> None:
        async with self.window_lock:
            buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
            delta = self.target_recv_window - (self.recv_window + buffered)
            if delta <= 0 or delta < self._grow_threshold():
                return
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
        if increment > 0:
            await self.send_window_update(increment, skip_lock=True)

    release.swarm_batched = True  # type: ignore[attr-defined]
    YamuxStream._auto_tune_and_send_window_update = release  # type: ignore[method-assign]


def install_yamux_settings_read_once() -> None:
    """Read py-libp2p's PY_YAMUX_* tuning variables once, not on every frame.

    py-libp2p 0.8 looks its perf-harness settings up in the environment at call time:
    `os.getenv` for every DATA frame read (the read timeout) and every window check, 2-3% of
    a node's CPU under calls. The values cannot change while a node runs, so each is read
    once here and the module's lookups return it. Installing twice is harmless.
    """
    from libp2p.stream_muxer.yamux import yamux

    if getattr(yamux, "swarm_settings_read_once", False):
        return
    for name in (
        "_yamux_data_read_timeout",
        "_perf_yamux_debug_enabled",
        "_yamux_disable_hysteresis",
        "_yamux_release_on_read",
        "_yamux_batch_threshold_divisor",
    ):
        value = getattr(yamux, name)()
        setattr(yamux, name, lambda value=value: value)
    yamux.swarm_settings_read_once = True  # type: ignore[attr-defined]


class QuickLock:
    """A lock (or one-slot semaphore) that costs almost nothing while nobody else wants it.

    `trio.Lock.acquire` yields even when nobody holds the lock, and even its `acquire_nowait`
    and `release` do owner and parking-lot-breaker bookkeeping; py-libp2p takes four or five
    such locks per message (the stream's state, its window, the muxer's writer, the
    socket's), which is most of what one small message costs beyond the socket itself.
    Free, this lock is simply taken; held, the caller parks and the lock passes to the
    waiters in the order they came (FIFO, as trio's). It has no owner, so it serves as the
    one-slot semaphore of py-libp2p's read-write lock too. The next real await delivers a
    pending cancellation.
    """

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    @property
    def value(self) -> int:
        """Free slots (1 or 0); what `trio.Semaphore.value` says."""
        return 0 if self._held else 1

    def locked(self) -> bool:
        return self._held

    async def acquire(self) -> None:
        if self._held:
            await self._waiters.park()  # woken by `release`, which hands the lock over
        else:
            self._held = True

    def acquire_nowait(self) -> None:
        if self._held:
            raise trio.WouldBlock
        self._held = True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("release of a lock that is not held")
        if self._waiters:
            self._waiters.unpark()  # still held: by the first waiter now
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def install_quick_stream_locks() -> None:
    """Give py-libp2p's per-message locks (see `QuickLock`) to every new stream and muxed
    connection, and make the muxer's frame writer skip its unconditional debug formatting
    and the extra yield after each frame. Installing twice is harmless."""
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.stream.net_stream import NetStream
    from libp2p.stream_muxer.rw_lock import ReadWriteLock
    from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

    if getattr(Yamux._write_frame, "swarm_quick", False):
        return

    def after_init(cls: Any, *locks: str, semaphore: str = "") -> None:
        original = cls.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            for name in locks:
                setattr(self, name, QuickLock())
            if semaphore:
                setattr(self, semaphore, QuickLock())

        cls.__init__ = init

    after_init(NetStream, "_state_lock")
    after_init(YamuxStream, "window_lock")
    after_init(Yamux, "streams_lock", "_write_lock")
    after_init(TrioTCPStream, "read_lock", "write_lock")
    after_init(ReadWriteLock, "_readers_lock", semaphore="_writer_lock")

    async def write_frame(self: Any, data: bytes) -> None:
        async with self._write_lock:
            await self.secured_conn.write(data)

    write_frame.swarm_quick = True  # type: ignore[attr-defined]
    Yamux._write_frame = write_frame  # type: ignore[method-assign]


def install_fast_yamux_writes() -> None:
    """Send a Yamux DATA frame that fits the window without three needless trips through
    trio's scheduler.

    py-libp2p 0.8 writes every frame in a loop under the stream's writer semaphore and its
    window lock, through a generator-based context manager and a shielded release, with
    debug lines formatted whether or not debug logging is on. Here a write that needs one
    frame, that the send window covers and that no other writer of the stream is in the
    middle of, takes its window and goes straight to the connection's frame writer, which
    orders frames as before (the library, too, takes the window under its locks and then
    queues on the writer's lock); any other write takes the library's path. Installing
    twice is harmless.
    """
    import struct

    from libp2p.stream_muxer.exceptions import MuxedStreamError
    from libp2p.stream_muxer.yamux import yamux

    stream_cls = yamux.YamuxStream
    if getattr(stream_cls.write, "swarm_fast", False):
        return
    library_write = stream_cls.write
    largest = yamux.MAX_MESSAGE_SIZE - yamux.HEADER_SIZE
    header = struct.Struct(yamux.YAMUX_HEADER_FORMAT)

    async def write(self: Any, data: bytes) -> None:
        size = len(data)
        if (
            0 < size <= largest
            and size <= self.send_window
            and not self.send_closed
            and not self.closed
            and self.rw_lock._writer_lock.value == 1  # no write of this stream under way
            and not self.window_lock.locked()
        ):
            self.send_window -= size
            await self.conn._write_frame(
                header.pack(0, yamux.TYPE_DATA, 0, self.stream_id, size) + data
            )
            return
        if self.send_closed:
            raise MuxedStreamError("Stream is closed for sending")
        await library_write(self, data)

    write.swarm_fast = True  # type: ignore[attr-defined]
    stream_cls.write = write  # type: ignore[method-assign]


def install_buffered_tcp_reads() -> None:
    """Read a libp2p TCP connection ahead, as go and rust do, instead of per length prefix.

    py-libp2p 0.8 reads each Noise message with two socket reads (its 2-byte length, then
    the body), and each read that returns data still yields to the scheduler: two system
    calls and two trips per message received. Here a read asks the socket for up to
    `READ_AHEAD` bytes and keeps what it was not asked for; the next reads are served from
    that, at once, in order (a reader that waited for the lock looks there first). Errors
    are the library's. Installing twice is harmless.
    """
    from libp2p.io.exceptions import ConnectionClosedError
    from libp2p.io.trio import TrioTCPStream

    if getattr(TrioTCPStream.read, "swarm_buffered", False):
        return
    original_init = TrioTCPStream.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.swarm_ahead = bytearray()

    async def read(self: Any, n: int | None = None) -> bytes:
        ahead: bytearray = self.swarm_ahead
        if ahead:
            return _take(ahead, n)
        if n == 0:
            return b""
        async with self.read_lock:
            if ahead:  # read for us while we waited
                return _take(ahead, n)
            try:
                data = await self.stream.receive_some(
                    READ_AHEAD if n is None else max(n, READ_AHEAD)
                )
            except trio.BrokenResourceError as error:
                raise ConnectionClosedError(
                    f"TCP connection reset by remote peer: {error}", transport="tcp"
                ) from error
            except trio.ClosedResourceError:
                return b""  # closed here: EOF, as the library has it
        if n is not None and len(data) > n:
            ahead.extend(memoryview(data)[n:])
            return bytes(data[:n])
        return bytes(data)

    read.swarm_buffered = True  # type: ignore[attr-defined]
    TrioTCPStream.__init__ = init  # type: ignore[method-assign]
    TrioTCPStream.read = read  # type: ignore[method-assign]


def _take(buffer: bytearray, n: int | None) -> bytes:
    """The first `n` bytes of `buffer` (all of it if None), removed from it."""
    if n is None or n >= len(buffer):
        data = bytes(buffer)
        buffer.clear()
    else:
        data = bytes(buffer[:n])
        del buffer[:n]
    return data


async def _read_exactly(reader: Reader, n: int, retry_count: int = 100) -> bytes:
    """py-libp2p's `read_exactly` without its copy into a new buffer when one read is enough
    (the common case: the reader serves from what it has already)."""
    from libp2p.io.exceptions import IncompleteReadError

    data = await reader.read(n)
    if len(data) == n:
        return data
    buffer = bytearray(data)
    for _ in range(retry_count):
        if len(buffer) >= n:
            return bytes(buffer)
        buffer.extend(await reader.read(n - len(buffer)))
    if len(buffer) >= n:
        return bytes(buffer)
    raise IncompleteReadError(
        f"Connection closed during read operation: expected {n} bytes but "
        f"received {len(buffer)} bytes",
        expected_bytes=n,
        received_bytes=len(buffer),
    )


def install_lean_secure_reads() -> None:
    """Read Noise messages and the Yamux frames inside them with fewer layers and copies.

    py-libp2p 0.8 reads each Yamux header and body through `read_exactly` (a fresh buffer and
    a copy, even when one read returns it all), a session buffer kept in a `BytesIO` read
    through memoryviews, and a Noise reader that formats three debug lines per message and
    goes through two more message-reader layers for its 2-byte length. Here: one read when
    one is enough, a session buffer that is the decrypted message and an offset into it, and
    the Noise length and body read straight from the raw connection. What is read, in what
    order, and the errors raised are the library's. Installing twice is harmless.
    """
    from libp2p.io import msgio
    from libp2p.io.exceptions import ConnectionClosedError
    from libp2p.security.noise.io import NoiseTransportReadWriter
    from libp2p.security.secure_session import SecureSession
    from libp2p.stream_muxer.yamux import yamux

    if getattr(SecureSession.read, "swarm_lean", False):
        return
    if not getattr(yamux, "swarm_lean_frames", False):  # its header read calls ours
        yamux.read_exactly = _read_exactly  # type: ignore[attr-defined]
    msgio.read_exactly = _read_exactly  # type: ignore[attr-defined]

    library_read_msg = NoiseTransportReadWriter.read_msg

    async def read_msg(self: Any, prefix_encoded: bool = False) -> bytes:
        if prefix_encoded:
            return await library_read_msg(self, prefix_encoded)
        raw = self.read_writer.read_write_closer
        size = int.from_bytes(await _read_exactly(raw, 2), "big")
        return self.decrypt(await _read_exactly(raw, size))  # type: ignore[no-any-return]

    original_init = SecureSession.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.swarm_data = b""  # the decrypted message being read, from swarm_at on
        self.swarm_at = 0

    async def read(self: Any, n: int | None = None) -> bytes:
        data: bytes = self.swarm_data
        at: int = self.swarm_at
        have = len(data) - at
        if n is None:
            if have:
                self.swarm_data, self.swarm_at = b"", 0
                return data[at:] if at else data
            msg = await self.conn.read_msg()
            if msg == b"":
                raise ConnectionClosedError("Connection closed")
            return msg  # type: ignore[no-any-return]
        if n == 0:
            return b""
        if have >= n:
            self.swarm_at = at + n
            return data[at : at + n]
        parts = [data[at:]] if have else []
        self.swarm_data, self.swarm_at = b"", 0
        while have < n:
            msg = await self.conn.read_msg()
            if msg == b"":
                # Closed after a partial read: what was assembled, as the library returns.
                if parts:
                    return b"".join(parts)
                raise ConnectionClosedError("Connection closed")
            need = n - have
            if len(msg) > need:
                self.swarm_data, self.swarm_at = msg, need
                msg = msg[:need]
            parts.append(msg)
            have += len(msg)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    read.swarm_lean = True  # type: ignore[attr-defined]
    NoiseTransportReadWriter.read_msg = read_msg  # type: ignore[method-assign]
    SecureSession.__init__ = init  # type: ignore[method-assign]
    SecureSession.read = read  # type: ignore[method-assign]


def install_lean_yamux_frames() -> None:
    """Hand the common Yamux frames to their streams without the library's per-frame work.

    py-libp2p 0.8's receive loop formats five to seven debug lines for every DATA frame
    (most with the peer id in base58) whether or not debug logging is on, and builds a dict
    and a list of flag names for one more. Here the loop's header read handles on its own
    the frames nearly all traffic is made of: DATA (with a body) and WINDOW_UPDATE without
    flags, on a stream the connection holds. It delivers them as the library does (buffer,
    receive window, wakeup; send window under the stream's window lock), then reads the next
    header. Any other frame (a new stream, an ACK, FIN or RST, PING, GO_AWAY, an unknown
    stream, an oversized frame) is returned to the library's loop, which handles it as
    before; frames are delivered in the order they arrive. Installing twice is harmless.
    """
    import logging
    import struct
    import weakref

    from libp2p.io.exceptions import IncompleteReadError, IOException
    from libp2p.stream_muxer.yamux import yamux

    if getattr(yamux, "swarm_lean_frames", False):
        return
    log = logging.getLogger(yamux.__name__)
    header_size = yamux.HEADER_SIZE
    unpack = struct.Struct(yamux.YAMUX_HEADER_FORMAT).unpack
    data_type, window_type = yamux.TYPE_DATA, yamux.TYPE_WINDOW_UPDATE
    largest = yamux.MAX_WINDOW_SIZE
    original_init = yamux.Yamux.__init__

    def init(self: Any, secured_conn: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, secured_conn, *args, **kwargs)
        secured_conn.swarm_muxer = weakref.ref(self)

    async def read_data_body(self: Any, length: int) -> bytes:
        with trio.fail_after(yamux._yamux_data_read_timeout()):
            return await _read_exactly(self.secured_conn, length)

    async def read_header(reader: Reader, n: int, retry_count: int = 100) -> bytes:
        """The library's header read (its only use of `read_exactly` once `read_data_body`
        is in place): returns the first frame header the library must see itself."""
        ref = getattr(reader, "swarm_muxer", None)
        muxer = ref() if ref is not None else None
        if muxer is None or n != header_size:
            return await _read_exactly(reader, n, retry_count)
        streams = muxer.streams
        while True:
            header = await _read_exactly(reader, header_size, retry_count)
            _, typ, flags, stream_id, length = unpack(header)
            stream = streams.get(stream_id)
            if flags or stream is None:
                return header
            if typ == data_type and 0 < length <= largest:
                await _deliver(muxer, stream_id, length)
            elif typ == window_type:
                async with muxer.streams_lock:
                    async with stream.window_lock:
                        stream.send_window += length
                    if stream.closed:
                        muxer._finalize_stream_locked(stream, fully_closed=True)
            else:
                return header
            if muxer.event_shutting_down.is_set():
                # The library's loop would stop before its next header: make it stop now.
                raise IOException("Yamux connection is shutting down")

    async def _deliver(muxer: Any, stream_id: int, length: int) -> None:
        conn = muxer.secured_conn
        try:
            if len(getattr(conn, "swarm_data", b"")) - getattr(conn, "swarm_at", 0) >= length:
                # Already decrypted here (a frame travels in one Noise message): the read
                # cannot stall, so it needs no timeout and its cancel scope.
                data = await _read_exactly(conn, length)
            else:
                data = await muxer._read_data_body(length)
        except trio.TooSlowError:
            log.warning(
                "Yamux: timed out reading DATA frame body for peer %s; closing connection",
                muxer.peer_id,
            )
            raise
        except IncompleteReadError as exc:
            log.error("Incomplete read for data on stream %s: %s", stream_id, exc)
            async with muxer.streams_lock:
                stream = muxer.streams.get(stream_id)
                if stream is not None:
                    stream.recv_closed = stream.closed = True
                    if stream_id in muxer.stream_events:
                        muxer.stream_events[stream_id].set()
            return  # the next header read meets the end and closes the connection
        async with muxer.streams_lock:
            stream = muxer.streams.get(stream_id)
            if stream is None:
                return
            muxer.stream_buffers[stream_id].extend(data)
            stream.recv_window -= len(data)
            if stream.recv_window < 0:
                log.warning(
                    "Stream %s: peer exceeded receive window by %s bytes",
                    stream_id,
                    -stream.recv_window,
                )
                stream.recv_window = 0
            muxer.stream_events[stream_id].set()
            if stream.closed:
                muxer._finalize_stream_locked(stream, fully_closed=True)

    yamux.Yamux.__init__ = init  # type: ignore[method-assign]
    yamux.Yamux._read_data_body = read_data_body  # type: ignore[method-assign]
    yamux.read_exactly = read_header  # type: ignore[attr-defined]
    yamux.swarm_lean_frames = True  # type: ignore[attr-defined]


def install_direct_noise_writes() -> None:
    """Send an encrypted Noise message straight to the TCP socket when it takes it at once.

    py-libp2p 0.8 sends each message through five layers (the Noise writer, its packet
    writer, the raw connection, its TCP stream and that stream's lock, trio's SocketStream)
    and, for the atomic writes of `libp2p_fixes`, a shielded cancel scope with a deadline;
    trio then yields after the send. Here a transport message over plain TCP, while no
    other write of that socket is under way, is encrypted and handed to the non-blocking
    socket in one call: sent whole, it is done, with no await that a cancellation could
    interrupt between using the nonce and sending. What the socket does not take at once
    (its buffer is full, or it failed) goes on through the library's TCP write under the
    same shield, which waits for room or raises the library's error; other messages (the
    handshake, large ones, other transports) take the whole library path. Install after
    `install_atomic_noise_writes`. Installing twice is harmless.
    """
    from libp2p.io.trio import TrioTCPStream
    from libp2p.network.connection.exceptions import RawConnError
    from libp2p.security.noise.io import MAX_PLAINTEXT_LENGTH, NoiseTransportReadWriter

    from protocols.libp2p_fixes import NOISE_WRITE_TIMEOUT_S

    library_write = NoiseTransportReadWriter.write_msg  # the atomic one, once installed
    if getattr(library_write, "swarm_direct", False):
        return

    async def write_msg(self: Any, msg: bytes, prefix_encoded: bool = False) -> None:
        raw = getattr(self.read_writer, "read_write_closer", None)
        tcp = getattr(raw, "stream", None)
        if (
            prefix_encoded
            or len(msg) > MAX_PLAINTEXT_LENGTH
            or type(tcp) is not TrioTCPStream
            or tcp.write_lock.locked()
        ):
            await library_write(self, msg, prefix_encoded)
            return
        encrypted = self.encrypt(msg)  # the nonce is used from here on
        data = len(encrypted).to_bytes(2, "big") + encrypted
        try:
            sent = tcp.stream.socket._sock.send(data)  # type: ignore[attr-defined]
        except OSError:
            sent = 0  # full (EAGAIN) or failed: the library's write waits or raises
        if sent == len(data):
            return
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + NOISE_WRITE_TIMEOUT_S
            await tcp.write(data[sent:])
        if scope.cancelled_caught:
            with contextlib.suppress(Exception):
                await self.close()
            raise RawConnError(f"a Noise write took over {NOISE_WRITE_TIMEOUT_S} s")

    write_msg.swarm_direct = True  # type: ignore[attr-defined]
    NoiseTransportReadWriter.write_msg = write_msg  # type: ignore[method-assign]


def install_lean_stream_reads() -> None:
    """Read a stream from its Yamux buffer, and wait for data, without the library's four
    layers for it.

    py-libp2p 0.8 reads a stream through `NetStream.read` (its state lock), `YamuxStream.read`
    and `Yamux.read_stream` (the connection's stream lock, two to five debug lines formatted
    whether or not debug logging is on, with the peer id in each, before and again after each
    wait), then the window release. Here a read of an open stream, while none of those locks
    is held, takes what the buffer holds at once when no window update is due, and when the
    buffer is empty waits on the stream's event as the library does and looks again. Any other
    case (a stream closed, ending, reset or in error, a window update to send, a lock held,
    the connection shutting down, another transport) takes the library's path, which reads or
    raises as before. A cancelled read of an open stream takes nothing: the one library read
    that could take data and then be cancelled (sending the update) is shielded. Install after
    `install_batched_yamux_window_updates`, whose rule for when an update is due this follows.
    Installing twice is harmless.
    """
    from libp2p.network.stream.net_stream import NetStream, StreamState
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    library_read = NetStream.read
    if getattr(library_read, "swarm_lean", False):
        return
    if not getattr(YamuxStream._auto_tune_and_send_window_update, "swarm_batched", False):
        raise RuntimeError("install_batched_yamux_window_updates first")
    refused = (StreamState.ERROR, StreamState.RESET)

    async def read(self: Any, n: int | None = None) -> bytes:
        muxed = self.muxed_stream
        if n is None or n <= 0 or type(muxed) is not YamuxStream:
            return await library_read(self, n)
        conn, stream_id = muxed.conn, muxed.stream_id
        while (
            self._state not in refused
            and not muxed.closed
            and not muxed.reset_received
            and not conn.event_shutting_down.is_set()
            and conn.streams.get(stream_id) is muxed
        ):
            buffer = conn.stream_buffers.get(stream_id)
            if buffer:
                if (
                    self._state_lock.locked()
                    or conn.streams_lock.locked()
                    or muxed.window_lock.locked()
                ):
                    break
                left = max(len(buffer) - n, 0)
                due = muxed.target_recv_window - (muxed.recv_window + left)
                if due <= 0 or due < muxed._grow_threshold():  # no window update to send
                    return _take(buffer, n)
                # The library takes the data at once and then sends the update: shielded,
                # so that a cancel in between cannot lose bytes already taken.
                with trio.CancelScope(shield=True):
                    return await library_read(self, n)
            event = conn.stream_events.get(stream_id)
            if buffer is None or muxed.recv_closed or event is None:
                break
            await event.wait()
            if conn.stream_events.get(stream_id) is event:
                conn.stream_events[stream_id] = trio.Event()  # as the library, after a wait
        return await library_read(self, n)

    read.swarm_lean = True  # type: ignore[attr-defined]
    NetStream.read = read  # type: ignore[method-assign]


def stream_may_receive(stream: Any) -> bool:
    """False once a py-libp2p stream is known to have no more to give: closed, reset, its
    peer done sending, or its connection going down. True when the muxer is not Yamux (it
    cannot tell; the next read will)."""
    yamux_stream, refused = _stream_types()
    muxed: Any = getattr(stream, "muxed_stream", None)
    if type(muxed) is not yamux_stream:
        return True
    conn = muxed.conn
    return not (
        muxed.closed
        or muxed.recv_closed
        or muxed.reset_received
        or conn.event_shutting_down.is_set()
        or conn.streams.get(muxed.stream_id) is not muxed
        or stream._state in refused
    )


@functools.cache
def _stream_types() -> tuple[Any, tuple[Any, ...]]:
    """YamuxStream, and the stream states that refuse reads (imported once, when needed)."""
    from libp2p.network.stream.net_stream import StreamState
    from libp2p.stream_muxer.yamux.yamux import YamuxStream

    return YamuxStream, (StreamState.ERROR, StreamState.RESET)
