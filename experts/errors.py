"""Errors raised by the `experts` package.

Every error is an `ExpertError`, itself a `SwarmError`, so the network layer can turn any
of them into one clear error reply. Each carries the fields a caller needs to act: which
file or expert, and which limit was crossed.
"""

from __future__ import annotations

from dag.errors import SwarmError


class ExpertError(SwarmError):
    """Root of the errors of the experts package.

    `expert_id` names the expert when it is known (None before a file's hash is checked).
    """

    def __init__(self, message: str, *, expert_id: str | None = None) -> None:
        super().__init__(message)
        self.expert_id = expert_id


class ExpertFormatError(ExpertError):
    """An expert file is unreadable or untrustworthy: truncated, tampered (hash mismatch),
    pickled or object arrays, a bad manifest, wrong shapes or dtypes, or non-finite weights.

    Raised before anything is loaded or run; `path` names the file when there is one.
    """

    def __init__(
        self, message: str, *, path: str | None = None, expert_id: str | None = None
    ) -> None:
        super().__init__(message, expert_id=expert_id)
        self.path = path


class ExpertInputError(ExpertError):
    """A request to an expert is malformed or over a limit; nothing was run.

    `limit` is the bound that was crossed (None when the input is malformed rather than
    too large) and `got` the offending size, so a server can say exactly what it accepts.
    """

    def __init__(
        self,
        message: str,
        *,
        expert_id: str | None = None,
        limit: int | None = None,
        got: int | None = None,
    ) -> None:
        super().__init__(message, expert_id=expert_id)
        self.limit = limit
        self.got = got


class ExpertNotFound(ExpertError):
    """No shipped expert matches the requested domain or id."""
