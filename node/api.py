"""The local API: HTTP + JSON on 127.0.0.1, bearer token, served by hypercorn's trio worker.

The app only translates HTTP to calls on the node and errors to status codes; what each
endpoint does lives in the node's services.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dag.errors import RemoteProtocolError, SwarmError
from dag.tx import Transaction
from node.api_market import market_routes
from protocols.errors import NetworkError, PeerRefused, PeerTimeout

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs shadow trio's own types for mypy.
    from trio_typing import TaskStatus

    from node.daemon import Node

log = logging.getLogger("swarm.api")
MAX_WAIT_S = 60.0


class ApiError(SwarmError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status_of(exc: SwarmError) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, PeerRefused):
        return 409
    if isinstance(exc, PeerTimeout):
        return 504
    if isinstance(exc, NetworkError | RemoteProtocolError):
        return 502
    return 400


Handler = Callable[[Request], Awaitable[Any]]


def build_app(node: Node, token: str) -> Starlette:
    expected = f"Bearer {token}".encode()

    def endpoint(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse(
                    {"error": "missing or wrong bearer token"},
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                )
            try:
                return JSONResponse(await fn(request))
            except SwarmError as exc:
                return JSONResponse(
                    {"error": str(exc), "kind": type(exc).__name__}, status_code=_status_of(exc)
                )

        return wrapped

    async def status(request: Request) -> Any:
        return node.status()

    async def peers(request: Request) -> Any:
        wait = request.query_params.get("wait_members")
        if wait is not None:
            count = _int_param(wait, "wait_members", 0, 10_000)
            timeout = _float_param(request.query_params.get("timeout", "10"), "timeout")
            with trio.move_on_after(timeout):
                await node.peers.wait_for_members(count)
        return {"peers": node.peers.snapshot()}

    async def connect(request: Request) -> Any:
        body = await _json_body(request)
        addr = body.get("addr")
        if not isinstance(addr, str):
            raise ApiError(400, 'body must be {"addr": "/ip4/.../tcp/.../p2p/..."}')
        entry = await node.p2p.connect(addr)
        return {"peer_id": entry.peer_id, "name": entry.name, "account": entry.account}

    def account_param(text: str | None) -> bytes:
        """An account given as hex id, or by its name in the genesis; ours when absent."""
        if not text:
            return node.keys.account.account_id
        named = [a.account for a in node.genesis.accounts if a.name == text]
        if named:
            return named[0]
        try:
            account = bytes.fromhex(text)
        except ValueError:
            account = b""
        if len(account) != 32:
            raise ApiError(400, f"{text!r} is neither a 64-hex-digit account id nor a genesis name")
        return account

    async def transfer(request: Request) -> Any:
        body = await _json_body(request)
        amount = body.get("amount")
        if type(amount) is not int or amount <= 0:
            raise ApiError(400, "amount must be a positive integer number of credits")
        to = account_param(body.get("to") if isinstance(body.get("to"), str) else None)
        wait_s = _float_param(str(body.get("wait_s", 0)), "wait_s")
        tx_id = await node.dag.transfer(to, amount)
        status = await node.dag.wait_decided(tx_id, wait_s) if wait_s else "submitted"
        return {"tx_id": tx_id.hex(), "to": to.hex(), "amount": amount, "status": status}

    async def submit(request: Request) -> Any:
        body = await _json_body(request, limit=16 << 20)
        raw = body.get("txs")
        if not isinstance(raw, list) or not 1 <= len(raw) <= 2000:
            raise ApiError(
                400,
                'body must be {"txs": [hex-encoded signed transaction, ...]} with 1 to 2000 items',
            )
        txs = []
        for i, item in enumerate(raw):
            try:
                txs.append(
                    Transaction.from_bytes(
                        bytes.fromhex(item), node.dag.engine.registry, chain=node.dag.engine.chain
                    )
                )
            except (ValueError, TypeError, SwarmError) as exc:
                raise ApiError(400, f"txs[{i}]: {exc}") from None
        verdicts = await node.dag.submit_many(txs)
        return {
            "results": [
                {"tx_id": tx.id.hex(), "status": v} for tx, v in zip(txs, verdicts, strict=True)
            ]
        }

    async def balance(request: Request) -> Any:
        if request.query_params.get("all"):
            return {"balances": await node.dag.balances(), "totals": await node.dag.totals()}
        return await node.dag.balance(account_param(request.query_params.get("account")))

    async def dag_status(request: Request) -> Any:
        window = request.query_params.get("window_s")
        if window is None:
            return await node.dag.status()
        return await node.dag.status(max(_float_param(window, "window_s"), 0.001))

    async def dag_vertex(request: Request) -> Any:
        try:
            vertex_id = bytes.fromhex(request.path_params["vertex_id"])
        except ValueError:
            raise ApiError(400, "a vertex id is 64 hex digits") from None
        info = await node.dag.vertex_info(vertex_id)
        if info is None:
            raise ApiError(404, f"no vertex {vertex_id.hex()} here")
        return info

    async def tx(request: Request) -> Any:
        try:
            tx_id = bytes.fromhex(request.path_params["tx_id"])
        except ValueError:
            raise ApiError(400, "a transaction id is 64 hex digits") from None
        wait_s = _float_param(request.query_params.get("wait_s", "0"), "wait_s")
        if wait_s:
            decided = ("applied", "failed", "rejected")
            with trio.move_on_after(wait_s):
                await node.dag.wait_for(lambda: _status_in(node, tx_id, decided))
        return {"tx_id": tx_id.hex(), "status": await node.dag.tx_status(tx_id)}

    async def experts_list(request: Request) -> Any:
        return node.experts.listing()

    async def infer(request: Request) -> Any:
        body = await _json_body(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ApiError(400, 'body needs a non-empty "prompt"')
        options = _infer_options(body)
        started = trio.current_time()
        answer = await node.experts.inference.generate(prompt, **options)
        return _answer_doc(node, answer, trio.current_time() - started)

    async def infer_tensor(request: Request) -> Any:
        body = await _json_body(request, limit=16 << 20)
        expert = body.get("expert")
        rows = body.get("rows")
        if not isinstance(expert, str) or not isinstance(rows, list) or not rows:
            raise ApiError(400, 'body needs "expert" and "rows" (a list of number lists)')
        try:
            array = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError):
            raise ApiError(400, "rows must be a rectangular list of numbers") from None
        if array.ndim != 2 or not np.isfinite(array).all():
            raise ApiError(400, "rows must be a list of equally long lists of finite numbers")
        started = trio.current_time()
        options = {k: v for k, v in _infer_options(body).items() if k in _TENSOR_OPTIONS}
        answer = await node.experts.inference.tensor(expert, array, **options)
        doc = _answer_doc(node, answer, trio.current_time() - started)
        doc["rows"] = answer.array.tolist() if answer.array is not None else None
        return doc

    routes = [
        Route("/v1/experts", endpoint(experts_list), methods=["GET"]),
        Route("/v1/infer", endpoint(infer), methods=["POST"]),
        Route("/v1/infer/tensor", endpoint(infer_tensor), methods=["POST"]),
        Route("/v1/transfer", endpoint(transfer), methods=["POST"]),
        Route("/v1/balance", endpoint(balance), methods=["GET"]),
        Route("/v1/txs", endpoint(submit), methods=["POST"]),
        Route("/v1/dag/status", endpoint(dag_status), methods=["GET"]),
        Route("/v1/dag/vertex/{vertex_id}", endpoint(dag_vertex), methods=["GET"]),
        Route("/v1/dag/tx/{tx_id}", endpoint(tx), methods=["GET"]),
        Route("/v1/status", endpoint(status), methods=["GET"]),
        Route("/v1/peers", endpoint(peers), methods=["GET"]),
        Route("/v1/connect", endpoint(connect), methods=["POST"]),
        *market_routes(node, endpoint),
    ]
    return Starlette(routes=routes)


_TENSOR_OPTIONS = ("max_price", "deadline_s", "hedge_after_s", "remote_only")


def _infer_options(body: dict[str, Any]) -> dict[str, Any]:
    """The optional fields of an inference request, checked."""
    options: dict[str, Any] = {}
    for key, kind in (
        ("domain", str),
        ("expert_id", str),
        ("max_tokens", int),
        ("seed", int),
        ("max_price", int),
        ("deadline_s", float),
        ("hedge_after_s", float),
        ("temperature", float),
        ("remote_only", bool),
    ):
        value = body.get(key)
        if value is None:
            continue
        if kind is float and type(value) is int:
            value = float(value)
        if type(value) is not kind:
            raise ApiError(400, f"{key} must be a {kind.__name__}")
        if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
            raise ApiError(400, f"{key} must be a finite number >= 0")
        if type(value) is int and not 0 <= value < 2**63:
            raise ApiError(400, f"{key} must be in 0..2**63-1")
        options[key] = value
    if "max_tokens" in options and not 1 <= options["max_tokens"] <= 4096:
        raise ApiError(400, "max_tokens must be 1..4096")
    if "deadline_s" in options:
        options["deadline_s"] = min(max(options["deadline_s"], 0.01), MAX_WAIT_S)
    return options


def _answer_doc(node: Node, answer: Any, elapsed_s: float) -> dict[str, Any]:
    entry = node.peers.get(answer.provider)
    return {
        "text": answer.text,
        "domain": answer.domain,
        "expert_id": answer.expert_id,
        "provider": answer.provider,
        "provider_name": "this node"
        if answer.provider == "local"
        else (entry.name if entry else ""),
        "tokens_in": answer.tokens_in,
        "tokens_out": answer.tokens_out,
        "price_per_1k": answer.price_per_1k,
        "cost": answer.cost_milli / 1000,
        "elapsed_ms": round(elapsed_s * 1000, 2),
        "attempts": [{"provider": p, "outcome": o} for p, o in answer.attempts],
        "consensus": answer.consensus,
    }


async def _status_in(node: Node, tx_id: bytes, wanted: tuple[str, ...]) -> bool:
    return await node.dag.tx_status(tx_id) in wanted


async def _json_body(request: Request, limit: int = 1 << 20) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():  # stop reading as soon as the limit is passed
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ApiError(400, f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def _int_param(text: str, name: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be in {low}..{high}")
    return value


def _float_param(text: str, name: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{name} must be a finite number")
    return min(max(value, 0.0), MAX_WAIT_S)


async def serve_api(
    app: Starlette, port: int, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve on 127.0.0.1:`port` (0 picks one); report the bound port when listening."""
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0

    async def started(task_status: TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, task_status=task_status)  # type: ignore[arg-type]

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(started)
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
