"""An append-only file of records that survives kill -9, at the cost of a copy each.

The file is mapped into memory (shared): `append` copies the record into the mapping, and
once it returns the record is in the kernel's page cache, durable against a crash of the
process (not against power loss, like SQLite's WAL with synchronous=NORMAL), with no system
call (a `write` cost 7 us in a busy daemon, near half of what a paid call's charge cost).
The file gets its blocks before they are mapped (`posix_fallocate`), so a full disk is an
error when it grows, never a fault in a copy.

A record is framed as 4 bytes of length, 4 bytes of CRC-32, then the body (never empty), and
zeros follow the last one: a file written by `write`s, as this module once did, reads the
same. A crash can only tear the last record, part-way through its copy, and `read` drops
such a tail; a bad record followed by more is damage, and `read` refuses the file with an
error naming it.

One process writes the file (it holds a lock on it). It copies the records somewhere lasting
in batches and then `clear`s the file; a crash between the two replays records already
copied, so copying must be idempotent.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import struct
import zlib
from pathlib import Path

from dag.errors import SwarmError

_HEADER = struct.Struct(">II")
MAX_RECORD = 1 << 20
_GROWTH = 64 << 10  # the mapping grows in steps of at least this much
_KEEP = 1 << 20  # `clear` gives back what a burst grew the file beyond this


class JournalError(SwarmError):
    """The journal file cannot be used; the message names it."""


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None
        try:
            # One writer: two would copy records over each other's (and a file cut short
            # under a mapping faults it). Held until closed, or the process dies.
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._fd)
            raise JournalError(f"journal {self.path} is in use by another process") from None
        self.torn = 0  # bytes of a torn last record dropped by `read`
        self._map: mmap.mmap | None = None  # mapped by the first `append`
        self._end = -1  # where the next record goes (-1: not read yet)

    def read(self) -> list[bytes]:
        """Every whole record, oldest first; a torn last record is zeroed out of the file."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise JournalError(f"cannot read journal {self.path}: {exc}") from None
        used = len(data.rstrip(b"\0"))  # past this, nothing was ever written
        records, at = [], 0
        while at < used:
            end = at + _HEADER.size
            if end <= len(data):
                size, crc = _HEADER.unpack_from(data, at)
                if size > MAX_RECORD:
                    raise JournalError(f"journal {self.path} is damaged at byte {at}")
                body = data[end : end + size]
                if size and len(body) == size and zlib.crc32(body) == crc:
                    records.append(body)
                    at = end + size
                    continue
                if end + size < used:
                    raise JournalError(f"journal {self.path} is damaged at byte {at}")
            # The last record, cut short by a crash: its append never returned, so nothing
            # acknowledged depends on it. Zeroed, so that the next record ends the file.
            self.torn = used - at
            try:
                os.pwrite(self._fd, bytes(self.torn), at)
            except OSError as exc:
                raise JournalError(f"cannot write journal {self.path}: {exc}") from None
            break
        self._end = at
        return records

    def append(self, body: bytes) -> None:
        if not body:
            raise JournalError("a journal record cannot be empty")
        if len(body) > MAX_RECORD:
            raise JournalError(f"journal record of {len(body)} bytes is over {MAX_RECORD}")
        frame = _HEADER.size + len(body)
        if self._map is None or self._end + frame > len(self._map):
            self._grow(frame)
        journal, at = self._map, self._end
        assert journal is not None
        # The header, then the body: a copy cut short leaves a record whose CRC fails.
        _HEADER.pack_into(journal, at, len(body), zlib.crc32(body))
        journal[at + _HEADER.size : at + frame] = body
        self._end = at + frame

    def _grow(self, frame: int) -> None:
        """Map the file, with blocks for the next `frame` bytes."""
        if self._end < 0:
            self.read()  # (a journal appended to before it was read: after its last record)
        try:
            # (First the whole file; then twice the mapping, so that a burst maps few times.)
            at_least = os.fstat(self._fd).st_size if self._map is None else 2 * len(self._map)
            size = max(self._end + frame, _GROWTH, at_least)
            _allocate(self._fd, size)
            if self._map is None:
                self._map = mmap.mmap(self._fd, size)
            else:
                self._map.resize(size)
        except OSError as exc:
            raise JournalError(f"cannot grow journal {self.path}: {exc}") from None

    def clear(self) -> None:
        try:
            if self._map is None:
                os.ftruncate(self._fd, 0)
                self._end = 0
                return
            self._map[: self._end] = bytes(self._end)
            self._end = 0
            if len(self._map) > _KEEP:
                self._map.resize(_GROWTH)
        except OSError as exc:
            raise JournalError(f"cannot clear journal {self.path}: {exc}") from None

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        os.close(self._fd)


def _allocate(fd: int, size: int) -> None:
    """Give the file blocks for its first `size` bytes (it never shrinks here)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        # A file system that cannot: the size only, its blocks come as pages are touched.
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))
