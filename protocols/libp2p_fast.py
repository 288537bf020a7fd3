"""Speed-ups of py-libp2p 0.8's message path (TCP, Noise, Yamux), each in one place.

Each replaces a piece of the library with one that reads, writes and orders the same bytes
and raises the same errors, with fewer copies, locks and trips through trio's scheduler.
Each is installed by `P2PService` and explained where it is defined; drop one when the
library's own path is as fast.
"""

from __future__ import annotations

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
    """A trio lock (or one-slot semaphore) that takes no trip through the scheduler when free.

    `trio.Lock.acquire` yields even when nobody holds the lock, and py-libp2p takes four or
    five such locks per message (the stream's state, its window, the muxer's writer, the
    socket's): that is most of what one small message costs beyond the socket itself. Taken
    while free this lock is simply taken; held, the caller queues on the trio primitive
    inside, in the same FIFO order. The next real await delivers a pending cancellation.
    """

    __slots__ = ("_inner",)

    def __init__(self, inner: trio.Lock | trio.Semaphore | None = None) -> None:
        self._inner = inner if inner is not None else trio.Lock()

    @property
    def value(self) -> int:
        """Free slots (1 or 0); what `trio.Semaphore.value` says."""
        inner = self._inner
        return inner.value if isinstance(inner, trio.Semaphore) else int(not inner.locked())

    def locked(self) -> bool:
        return self.value == 0

    async def acquire(self) -> None:
        try:
            self._inner.acquire_nowait()
        except trio.WouldBlock:
            await self._inner.acquire()

    def acquire_nowait(self) -> None:
        self._inner.acquire_nowait()

    def release(self) -> None:
        self._inner.release()

    def statistics(self) -> Any:
        return self._inner.statistics()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._inner.release()


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
                setattr(self, semaphore, QuickLock(trio.Semaphore(1)))

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

    def take(ahead: bytearray, n: int | None) -> bytes:
        if n is None or n >= len(ahead):
            data = bytes(ahead)
            ahead.clear()
        else:
            data = bytes(ahead[:n])
            del ahead[:n]
        return data

    async def read(self: Any, n: int | None = None) -> bytes:
        ahead: bytearray = self.swarm_ahead
        if ahead:
            return take(ahead, n)
        if n == 0:
            return b""
        async with self.read_lock:
            if ahead:  # read for us while we waited
                return take(ahead, n)
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
