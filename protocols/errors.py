"""Errors of the wire layer, and the one place where py-libp2p's errors are translated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from dag.errors import RemoteProtocolError, SwarmError


class NetworkError(SwarmError):
    """A peer could not be reached, or the connection broke under us."""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class PeerTimeout(SwarmError):
    """A peer did not answer within the time we gave it."""

    def __init__(self, message: str, *, peer: str | None = None, after_s: float = 0.0) -> None:
        super().__init__(message)
        self.peer = peer
        self.after_s = after_s


class FrameTooLarge(RemoteProtocolError):
    """A frame's length prefix is over the protocol's limit; the body is never read."""

    def __init__(self, size: int, limit: int, *, peer: str | None = None) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit}", peer=peer)
        self.size = size
        self.limit = limit


class PeerRefused(SwarmError):
    """A peer turned us away (or we it) with a reason, e.g. another genesis."""

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer


@contextmanager
def map_libp2p_errors(peer: str | None = None) -> Iterator[None]:
    """Translate py-libp2p's stream and dial errors into ours, once, where they enter."""
    # Imported here so that modules which only need the error types stay light.
    from libp2p.exceptions import BaseLibp2pError

    try:
        yield
    except BaseLibp2pError as exc:
        raise NetworkError(f"{type(exc).__name__}: {exc}".rstrip(": "), peer=peer) from exc
    except OSError as exc:
        raise NetworkError(f"{type(exc).__name__}: {exc}", peer=peer) from exc
