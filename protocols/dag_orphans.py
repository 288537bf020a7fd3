"""Vertices that arrived before their parents, indexed by the parents they wait for."""

from __future__ import annotations


class OrphanPool:
    """A pool bounded in count and bytes; a vertex leaves it once every parent it waited for
    has been added. Only vertices whose signatures verified are parked (see Engine)."""

    def __init__(self, limit: int, max_bytes: int = 64 << 20) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0
        self._parked: dict[bytes, tuple[bytes, str | None, set[bytes]]] = {}
        self._blocked_on: dict[bytes, set[bytes]] = {}

    def __len__(self) -> int:
        return len(self._parked)

    def park(
        self, vertex_id: bytes, data: bytes, peer: str | None, missing: tuple[bytes, ...]
    ) -> bool:
        """Keep a vertex until `missing` arrive; False if it is already here or the pool full."""
        if (
            vertex_id in self._parked
            or len(self._parked) >= self.limit
            or self.bytes + len(data) > self.max_bytes
        ):
            return False
        self._parked[vertex_id] = (data, peer, set(missing))
        self.bytes += len(data)
        for parent in missing:
            self._blocked_on.setdefault(parent, set()).add(vertex_id)
        return True

    def is_wanted(self, vertex_id: bytes) -> bool:
        """True if a parked vertex still waits for `vertex_id`."""
        return vertex_id in self._blocked_on

    def release(self, vertex_id: bytes) -> list[tuple[bytes, str | None]]:
        """`vertex_id` was added: the parked vertices that now lack nothing, to add next."""
        ready = []
        for child in self._blocked_on.pop(vertex_id, ()):
            data, peer, missing = self._parked[child]
            missing.discard(vertex_id)
            if not missing:
                del self._parked[child]
                self.bytes -= len(data)
                ready.append((data, peer))
        return ready
