"""Messages of `/swarm/dag/query/1.0.0`, `/swarm/dag/sync/1.0.0` and `/swarm/dag/push/1.0.0`,
and their limits.

query:  {"t": "query", "ids": [vertex id, ...]}      ->  {"t": "votes", "yes": [bool, ...]}
sync:   {"t": "frontier"}                           ->  {"t": "frontier", "ids": [...]}
        {"t": "get", "ids": [vertex id, ...]}        ->  {"t": "vertices", "items": [bytes]}
push:   {"t": "vertices", "items": [bytes]}, ...    (no answer)
either: {"t": "error", "reason": str}

A query stream carries many request/answer pairs in turn, and a push stream many frames, so
neither costs a new stream per message. Every vertex in `vertices` is checked by the DAG
engine, never trusted: these types only bound sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dag.errors import RemoteProtocolError
from protocols.framing import field

VERSION = 1
ID_BYTES = 32
MAX_QUERY_IDS = 256
MAX_GET_IDS = 64
MAX_FRONTIER = 256
# One vertex is at most 2 MiB (dag.vertex); a sync answer is cut to fit this frame.
MAX_SYNC_FRAME = 8 << 20
MAX_QUERY_FRAME = 64 << 10


def _ids(body: dict[str, Any], limit: int, peer: str) -> tuple[bytes, ...]:
    ids = field(body, "ids", list, peer=peer, max_len=limit)
    if not all(isinstance(i, bytes) and len(i) == ID_BYTES for i in ids):
        raise RemoteProtocolError(f"{body['t']}: ids must be {ID_BYTES}-byte vertex ids", peer=peer)
    return tuple(ids)


@dataclass(frozen=True, slots=True)
class Query:
    ids: tuple[bytes, ...]

    def encode(self) -> dict[str, Any]:
        return {"t": "query", "v": VERSION, "ids": list(self.ids)}


@dataclass(frozen=True, slots=True)
class Votes:
    yes: tuple[bool, ...]

    def encode(self) -> dict[str, Any]:
        return {"t": "votes", "v": VERSION, "yes": list(self.yes)}


@dataclass(frozen=True, slots=True)
class FrontierRequest:
    def encode(self) -> dict[str, Any]:
        return {"t": "frontier", "v": VERSION}


@dataclass(frozen=True, slots=True)
class Frontier:
    ids: tuple[bytes, ...]

    def encode(self) -> dict[str, Any]:
        return {"t": "frontier", "v": VERSION, "ids": list(self.ids)}


@dataclass(frozen=True, slots=True)
class GetVertices:
    ids: tuple[bytes, ...]

    def encode(self) -> dict[str, Any]:
        return {"t": "get", "v": VERSION, "ids": list(self.ids)}


@dataclass(frozen=True, slots=True)
class Vertices:
    items: tuple[bytes, ...]

    def encode(self) -> dict[str, Any]:
        return {"t": "vertices", "v": VERSION, "items": list(self.items)}


@dataclass(frozen=True, slots=True)
class Error:
    reason: str

    def encode(self) -> dict[str, Any]:
        return {"t": "error", "v": VERSION, "reason": self.reason[:500]}


Message = Query | Votes | FrontierRequest | Frontier | GetVertices | Vertices | Error


def decode(body: dict[str, Any], *, peer: str) -> Message:
    """Check a decoded frame body and return its typed message."""
    if body["v"] != VERSION:
        raise RemoteProtocolError(f"dag message version {body['v']} is not {VERSION}", peer=peer)
    kind = body["t"]
    if kind == "query":
        return Query(_ids(body, MAX_QUERY_IDS, peer))
    if kind == "votes":
        yes = field(body, "yes", list, peer=peer, max_len=MAX_QUERY_IDS)
        if not all(isinstance(y, bool) for y in yes):
            raise RemoteProtocolError("votes: yes must list booleans", peer=peer)
        return Votes(tuple(yes))
    if kind == "frontier":
        if "ids" not in body:
            return FrontierRequest()
        return Frontier(_ids(body, MAX_FRONTIER, peer))
    if kind == "get":
        return GetVertices(_ids(body, MAX_GET_IDS, peer))
    if kind == "vertices":
        items = field(body, "items", list, peer=peer, max_len=MAX_GET_IDS)
        if not all(isinstance(i, bytes) for i in items):
            raise RemoteProtocolError("vertices: items must be bytes", peer=peer)
        return Vertices(tuple(items))
    if kind == "error":
        return Error(field(body, "reason", str, peer=peer, max_len=500))
    raise RemoteProtocolError(f"unknown dag message type {kind!r}", peer=peer)


def expect(message: Message, kind: type, peer: str) -> Any:
    """`message` if it is a `kind`; the peer's error, or a protocol error, otherwise."""
    if isinstance(message, kind):
        return message
    if isinstance(message, Error):
        raise RemoteProtocolError(f"peer answered with an error: {message.reason}", peer=peer)
    raise RemoteProtocolError(f"expected {kind.__name__}, got {type(message).__name__}", peer=peer)
