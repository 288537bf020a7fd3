"""The root of every error swarm-node raises on purpose.

`SwarmError` lives here, in the lowest layer, because `dag` and `experts` may not import
`node` or `protocols` (see shared/DESIGN.md) yet their errors must share one root. Other
packages add their own subclasses next to their code.
"""

from __future__ import annotations


class SwarmError(Exception):
    """Root of all swarm-node errors."""


class LocalProtocolError(SwarmError):
    """We were asked to do something the protocol forbids (a bug or misuse on our side)."""


class RemoteProtocolError(SwarmError):
    """Bytes or values from outside broke the protocol: malformed, oversized, badly signed.

    `peer` names the sender when it is known, so the caller can lower its score.
    """

    def __init__(self, message: str, *, peer: str | None = None) -> None:
        super().__init__(message)
        self.peer = peer


class InvalidSignature(RemoteProtocolError):
    """A signature did not verify, or names a scheme we do not accept."""


class DecodeError(RemoteProtocolError):
    """Bytes from outside are not a well-formed message: size, msgpack, a field's type or bound."""


class InvalidTransaction(RemoteProtocolError):
    """A well-formed transaction that breaks a rule: wrong chain, unknown kind, bad payload."""


class ReplayedNonce(InvalidTransaction):
    """A transaction for an (account, nonce) conflict set that is already decided here."""


class AlreadyClaimed(InvalidTransaction):
    """A transaction for an extra conflict set (say, a payment channel's end) that another
    accepted transaction already took."""


class InvalidVertex(RemoteProtocolError):
    """A well-formed vertex that breaks a rule: parents, limits, timestamp, duplicates."""
