"""node.journal: whole records back in order, a torn tail dropped, damage refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.journal import MAX_RECORD, Journal, JournalError


def test_records_come_back_in_order_and_clear_empties_the_file(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    bodies = [b"", b"a", b"b" * 1000]
    for body in bodies:
        journal.append(body)
    assert Journal(tmp_path / "j").read() == bodies
    journal.clear()
    journal.append(b"next")
    assert Journal(tmp_path / "j").read() == [b"next"]
    journal.close()


@pytest.mark.parametrize("cut", [1, 7, 8, 9, 12])
def test_a_torn_last_record_is_dropped_and_cut_off(tmp_path: Path, cut: int) -> None:
    journal = Journal(tmp_path / "j")
    journal.append(b"kept")
    journal.append(b"torn")
    path = tmp_path / "j"
    path.write_bytes(path.read_bytes()[:-cut])  # a crash part-way through the last write
    again = Journal(path)
    assert again.read() == [b"kept"]
    assert again.torn == 12 - cut
    again.append(b"after")  # appended where the torn record began
    assert Journal(path).read() == [b"kept", b"after"]


def test_damage_before_the_last_record_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "j"
    journal = Journal(path)
    for body in (b"one", b"two"):
        journal.append(body)
    data = bytearray(path.read_bytes())
    data[9] ^= 1  # a bit of the first body
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged at byte 0"):
        Journal(path).read()
    data[9] ^= 1
    data[0:4] = (MAX_RECORD + 1).to_bytes(4, "big")  # a length no record has
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="damaged at byte 0"):
        Journal(path).read()
    assert path.read_bytes() == bytes(data)


def test_an_oversized_record_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    with pytest.raises(JournalError, match="over"):
        journal.append(b"x" * (MAX_RECORD + 1))
    assert journal.read() == []
