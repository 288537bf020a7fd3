"""Messages of `/swarm/infer/1.0.0`.

One stream to a provider carries many calls at once: every request has an id, and answers
may come back in any order.

    {"t": "gen", "id": n, "expert": hex, "deadline_ms": n, "prompt": str, "max_tokens": n,
     "temperature": float, "top_k": n, "seed": n}
    {"t": "tensor", "id": n, "expert": hex, "deadline_ms": n, "rows": n, "cols": n,
     "data": bytes (float32, little-endian, row-major)}
 -> {"t": "text", "id": n, "expert": hex, "text": str, "tokens_in": n, "tokens_out": n,
     "compute_us": n}
 -> {"t": "array", "id": n, "expert": hex, "rows": n, "cols": n, "data": bytes,
     "tokens_in": n, "tokens_out": n, "compute_us": n}
 -> {"t": "error", "id": n, "code": "unknown_expert" | "bad_input" | "busy" | "deadline"
     | "internal" | "payment" | "channel", "reason": str}

`deadline_ms` is the time the caller still gives the call, relative, so no clocks need to
agree. For a tensor call the billable tokens are the rows in and the rows out.

A paid call adds `"pay": bytes` (the client's IOU) and `"pay_seq": n` (the call's own
number on the channel, above every earlier call's) to the request, or is refused with the
error code "payment" (this call cannot be paid: no IOU, a bad or short one, a limit) or
"channel" (the IOU's channel cannot pay here at all: the client opens another). The IOU is
the client's newest on the channel: one signed for this call when the amount owed must
rise to pay for it, else the newest again (see `node.market_client`). The
receipt of a paid answer follows it (see `protocols.market_wire`): the provider sends the
receipts made within `RECEIPT_DELAY_S` of `protocols.infer_server` together, on their own,
under one signature:

 -> {"t": "receipts", "v": 2, "receipts": [receipt, ...], "seal": bytes}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from dag.errors import RemoteProtocolError
from protocols.framing import field

VERSION = 1
MAX_FRAME = 4 << 20
MAX_PROMPT_CHARS = 16_384
MAX_TENSOR_CELLS = 1 << 20
ERROR_CODES = (
    "unknown_expert",
    "bad_input",
    "busy",
    "deadline",
    "internal",
    "payment",
    "channel",
)
MAX_PAY_BYTES = 256
MAX_RECEIPTS = 4096  # receipts in one frame
MAX_SEAL_BYTES = 4096  # (the market checks the seal's size: an Ed25519 seal has 64)
RECEIPTS_VERSION = 2  # of a "receipts" frame: 1 had a signature on each receipt, no seal


class Pay(NamedTuple):
    """What pays for a call: the client's IOU (its canonical bytes) and the call's number on
    the channel (`seq`: a call with a number not above the last one's is a replay). (A named
    tuple: made on every paid call's path, where a frozen dataclass costs several times as
    much to make.)"""

    iou: bytes
    seq: int

    def add_to(self, body: dict[str, Any]) -> dict[str, Any]:
        body["pay"] = self.iou
        body["pay_seq"] = self.seq
        return body


def _paid(body: dict[str, Any], pay: Pay | None) -> dict[str, Any]:
    return body if pay is None else pay.add_to(body)


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    id: int
    expert: str
    deadline_ms: int
    prompt: str
    max_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    pay: Pay | None = None

    def encode(self) -> dict[str, Any]:
        return _paid(
            {
                "t": "gen",
                "v": VERSION,
                "id": self.id,
                "expert": self.expert,
                "deadline_ms": self.deadline_ms,
                "prompt": self.prompt,
                "max_tokens": self.max_tokens,
                "temperature": float(self.temperature),
                "top_k": self.top_k,
                "seed": self.seed,
            },
            self.pay,
        )


@dataclass(frozen=True, slots=True)
class TensorRequest:
    id: int
    expert: str
    deadline_ms: int
    rows: int
    cols: int
    data: bytes
    pay: Pay | None = None

    @classmethod
    def of(cls, id: int, expert: str, deadline_ms: int, array: npt.ArrayLike) -> TensorRequest:
        arr = np.ascontiguousarray(array, dtype="<f4")
        if arr.ndim == 1:
            arr = arr[None, :]
        return cls(id, expert, deadline_ms, arr.shape[0], arr.shape[1], arr.tobytes())

    def array(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.rows, self.cols)

    def encode(self) -> dict[str, Any]:
        return _paid(
            {
                "t": "tensor",
                "v": VERSION,
                "id": self.id,
                "expert": self.expert,
                "deadline_ms": self.deadline_ms,
                "rows": self.rows,
                "cols": self.cols,
                "data": self.data,
            },
            self.pay,
        )


@dataclass(frozen=True, slots=True)
class TextResult:
    id: int
    expert: str
    text: str
    tokens_in: int
    tokens_out: int
    compute_us: int

    def encode(self) -> dict[str, Any]:
        return {
            "t": "text",
            "v": VERSION,
            "id": self.id,
            "expert": self.expert,
            "text": self.text,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "compute_us": self.compute_us,
        }


@dataclass(frozen=True, slots=True)
class ArrayResult:
    id: int
    expert: str
    rows: int
    cols: int
    data: bytes
    tokens_in: int
    tokens_out: int
    compute_us: int

    def array(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.rows, self.cols)

    def encode(self) -> dict[str, Any]:
        return {
            "t": "array",
            "v": VERSION,
            "id": self.id,
            "expert": self.expert,
            "rows": self.rows,
            "cols": self.cols,
            "data": self.data,
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "compute_us": self.compute_us,
        }


@dataclass(frozen=True, slots=True)
class ErrorResult:
    id: int
    code: str
    reason: str

    def encode(self) -> dict[str, Any]:
        return {
            "t": "error",
            "v": VERSION,
            "id": self.id,
            "code": self.code,
            "reason": self.reason[:500],
        }


Request = GenerateRequest | TensorRequest
Result = TextResult | ArrayResult | ErrorResult


def _count(body: dict[str, Any], key: str, peer: str, high: int) -> int:
    value = body.get(key)
    if type(value) is int and 0 <= value <= high:
        return value  # the common case, without the generic checks
    checked: int = field(body, key, int, peer=peer)
    if not 0 <= checked <= high:
        raise RemoteProtocolError(f"{body['t']}: {key} must be 0..{high}", peer=peer)
    return checked


_HEX_DIGITS = frozenset("0123456789abcdef")


def _expert(body: dict[str, Any], peer: str) -> str:
    expert: str = field(body, "expert", str, peer=peer, max_len=64)
    if len(expert) != 64 or not _HEX_DIGITS.issuperset(expert):
        raise RemoteProtocolError(f"{body['t']}: expert must be a 64-hex-digit id", peer=peer)
    return expert


def _tensor_shape(body: dict[str, Any], peer: str) -> tuple[int, int, bytes]:
    rows, cols = _count(body, "rows", peer, MAX_TENSOR_CELLS), _count(body, "cols", peer, 65536)
    if rows * cols > MAX_TENSOR_CELLS:
        raise RemoteProtocolError(f"{body['t']}: over {MAX_TENSOR_CELLS} cells", peer=peer)
    data: bytes = field(body, "data", bytes, peer=peer)
    if len(data) != rows * cols * 4:
        raise RemoteProtocolError(f"{body['t']}: data is not rows x cols float32", peer=peer)
    return rows, cols, data


def _pay(body: dict[str, Any], peer: str) -> Pay | None:
    iou = body.get("pay")
    if iou is None:
        return None
    if not (isinstance(iou, bytes) and len(iou) <= MAX_PAY_BYTES):
        raise RemoteProtocolError(f"{body['t']}: pay must be at most {MAX_PAY_BYTES} bytes")
    return Pay(iou, _count(body, "pay_seq", peer, 2**63 - 1))


def decode_request(body: dict[str, Any], *, peer: str) -> Request:
    if body["v"] != VERSION:
        raise RemoteProtocolError(f"infer version {body['v']} is not {VERSION}", peer=peer)
    request_id = _count(body, "id", peer, 2**63)
    expert = _expert(body, peer)
    deadline = _count(body, "deadline_ms", peer, 600_000)
    pay = _pay(body, peer)
    if body["t"] == "gen":
        temperature = field(body, "temperature", (int, float), peer=peer)
        if not 0.0 <= float(temperature) <= 10.0:
            raise RemoteProtocolError("gen: temperature must be 0..10", peer=peer)
        return GenerateRequest(
            request_id,
            expert,
            deadline,
            prompt=field(body, "prompt", str, peer=peer, max_len=MAX_PROMPT_CHARS),
            max_tokens=_count(body, "max_tokens", peer, 4096),
            temperature=float(temperature),
            top_k=_count(body, "top_k", peer, 1 << 16),
            seed=_count(body, "seed", peer, 2**63),
            pay=pay,
        )
    if body["t"] == "tensor":
        rows, cols, data = _tensor_shape(body, peer)
        return TensorRequest(request_id, expert, deadline, rows, cols, data, pay)
    raise RemoteProtocolError(f"unknown infer request type {body['t']!r}", peer=peer)


def decode_result(body: dict[str, Any], *, peer: str) -> Result:
    if body["v"] != VERSION:
        raise RemoteProtocolError(f"infer version {body['v']} is not {VERSION}", peer=peer)
    request_id = _count(body, "id", peer, 2**63)
    if body["t"] == "error":
        code = field(body, "code", str, peer=peer, max_len=32)
        if code not in ERROR_CODES:
            raise RemoteProtocolError(f"unknown infer error code {code!r}", peer=peer)
        return ErrorResult(request_id, code, field(body, "reason", str, peer=peer, max_len=500))
    expert = _expert(body, peer)
    tokens_in = _count(body, "tokens_in", peer, 1 << 30)
    tokens_out = _count(body, "tokens_out", peer, 1 << 30)
    compute_us = _count(body, "compute_us", peer, 1 << 40)
    if body["t"] == "text":
        text = field(body, "text", str, peer=peer, max_len=1 << 20)
        return TextResult(request_id, expert, text, tokens_in, tokens_out, compute_us)
    if body["t"] == "array":
        rows, cols, data = _tensor_shape(body, peer)
        return ArrayResult(request_id, expert, rows, cols, data, tokens_in, tokens_out, compute_us)
    raise RemoteProtocolError(f"unknown infer result type {body['t']!r}", peer=peer)


def decode_receipts(body: dict[str, Any], *, peer: str) -> tuple[list[Any], bytes] | None:
    """A "receipts" frame's receipts and seal, still to be checked
    (`protocols.market_wire.open_receipts`); None for any other frame."""
    if body["t"] != "receipts":
        return None
    if body["v"] != RECEIPTS_VERSION:
        raise RemoteProtocolError(
            f"receipts version {body['v']} is not {RECEIPTS_VERSION}: "
            "the provider runs another version of swarm-node",
            peer=peer,
        )
    receipts = body.get("receipts")
    if not isinstance(receipts, list) or not 0 < len(receipts) <= MAX_RECEIPTS:
        raise RemoteProtocolError(f"receipts must be an array of 1..{MAX_RECEIPTS}", peer=peer)
    seal = field(body, "seal", bytes, peer=peer, max_len=MAX_SEAL_BYTES)
    return receipts, seal
