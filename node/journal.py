"""An append-only file of records that survives kill -9 at the cost of one `write` each.

A record is on disk (in the kernel's page cache: durable against a crash of the process,
not against power loss, like SQLite's WAL with synchronous=NORMAL) once `append` returns. It
is framed as 4 bytes of length, 4 bytes of CRC-32, then the body. A crash can only tear the
last record, and `read` drops such a tail; a bad record followed by more is damage, and
`read` refuses the file with an error naming it.

The owner copies the records somewhere lasting in batches and then `clear`s the file; a crash
between the two replays records already copied, so copying must be idempotent.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from dag.errors import SwarmError

_HEADER = struct.Struct(">II")
MAX_RECORD = 1 << 20


class JournalError(SwarmError):
    """The journal file cannot be used; the message names it."""


class Journal:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from None
        self.torn = 0  # bytes of a torn last record dropped by `read`

    def read(self) -> list[bytes]:
        """Every whole record, oldest first; a torn last record is cut off the file."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise JournalError(f"cannot read journal {self.path}: {exc}") from None
        records, at = [], 0
        while at < len(data):
            end = at + _HEADER.size
            if end <= len(data):
                size, crc = _HEADER.unpack_from(data, at)
                if size > MAX_RECORD:
                    raise JournalError(f"journal {self.path} is damaged at byte {at}")
                body = data[end : end + size]
                if len(body) == size and zlib.crc32(body) == crc:
                    records.append(body)
                    at = end + size
                    continue
                if end + size < len(data):
                    raise JournalError(f"journal {self.path} is damaged at byte {at}")
            # The last record, cut short by a crash: its write never returned, so nothing
            # acknowledged depends on it.
            self.torn = len(data) - at
            os.ftruncate(self._fd, at)
            break
        return records

    def append(self, body: bytes) -> None:
        if len(body) > MAX_RECORD:
            raise JournalError(f"journal record of {len(body)} bytes is over {MAX_RECORD}")
        frame = _HEADER.pack(len(body), zlib.crc32(body)) + body
        try:
            written = os.write(self._fd, frame)
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc}") from None
        if written != len(frame):  # a full disk: cut the partial record off again
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise JournalError(f"journal {self.path}: short write ({written} of {len(frame)})")

    def clear(self) -> None:
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        os.close(self._fd)
