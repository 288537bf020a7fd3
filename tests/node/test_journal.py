"""node.journal: whole records back in order, a torn tail dropped, damage refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from node.journal import MAX_RECORD, Journal, JournalError


def reopened(path: Path) -> list[bytes]:
    """The records as the next process to open the journal finds them."""
    journal = Journal(path)
    try:
        return journal.read()
    finally:
        journal.close()


def test_records_come_back_in_order_and_clear_empties_the_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    bodies = [b"a", b"b" * 1000, b"c" * 100_000]  # (the last one grows the mapping)
    for body in bodies:
        journal.append(body)
    assert journal.read() == bodies
    journal.clear()
    journal.append(b"next")
    journal.close()
    assert reopened(tmp_path / "j") == [b"next"]


def test_a_journal_has_one_writer(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append(b"mine")
    with pytest.raises(JournalError, match="in use"):
        Journal(tmp_path / "j")
    journal.close()
    assert reopened(tmp_path / "j") == [b"mine"]


@pytest.mark.parametrize(("cut", "torn"), [(1, 11), (7, 5), (8, 4), (9, 0), (12, 0)])
def test_a_torn_last_record_is_dropped_and_zeroed(tmp_path: Path, cut: int, torn: int) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    journal.append(b"kept")
    journal.append(b"torn")
    journal.close()
    data = bytearray(path.read_bytes())
    data[24 - cut : 24] = bytes(cut)  # a crash part-way through the last copy: its end unwritten
    path.write_bytes(bytes(data))
    again = Journal(path)
    assert again.read() == [b"kept"]
    assert again.torn == torn  # (the bytes of it that differ from the zeros after it)
    again.append(b"after")  # appended where the torn record began
    again.close()
    assert reopened(path) == [b"kept", b"after"]


def test_a_file_of_written_records_reads_the_same_and_takes_appends(tmp_path: Path) -> None:
    path = tmp_path / "j"
    frames = [struct.pack(">II", len(b), zlib.crc32(b)) + b for b in (b"one", b"two")]
    path.write_bytes(b"".join(frames)[:-1])  # as `write`s left it, the last one torn
    journal = Journal(path)
    assert journal.read() == [b"one"] and journal.torn == 10
    journal.append(b"three")
    journal.close()
    assert reopened(path) == [b"one", b"three"]


def test_damage_before_the_last_record_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    for body in (b"one", b"two"):
        journal.append(body)
    journal.close()
    data = bytearray(path.read_bytes())
    data[9] ^= 1  # a bit of the first body
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged at byte 0"):
        reopened(path)
    data[9] ^= 1
    data[0:4] = (MAX_RECORD + 1).to_bytes(4, "big")  # a length no record has
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged at byte 0"):
        reopened(path)
    assert path.read_bytes() == bytes(data)


def test_an_oversized_or_empty_record_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    with pytest.raises(JournalError, match="over"):
        journal.append(b"x" * (MAX_RECORD + 1))
    with pytest.raises(JournalError, match="empty"):
        journal.append(b"")  # (a record of zeros would read as the end of the file)
    assert journal.read() == []
