"""A Python client of a running daemon's local API (what the CLI uses)."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from dag.errors import SwarmError
from node.datadir import read_runtime, read_token


class DaemonNotRunning(SwarmError):
    """No daemon answers for this data dir."""


class ApiCallError(SwarmError):
    """The daemon answered with an error; `status` is the HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


class Client:
    def __init__(self, data_dir: Path, *, timeout_s: float = 30.0) -> None:
        self.data_dir = data_dir
        self.timeout_s = timeout_s

    def _endpoint(self) -> tuple[int, str]:
        runtime = read_runtime(self.data_dir)
        if runtime is None or not isinstance(runtime.get("api_port"), int):
            raise DaemonNotRunning(
                f"no swarm-node daemon is running for {self.data_dir} "
                "(start one with `swarm-node start`)"
            )
        try:
            token = read_token(self.data_dir)
        except OSError as exc:
            raise DaemonNotRunning(f"cannot read the API token in {self.data_dir}: {exc}") from None
        return runtime["api_port"], token

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        port, token = self._endpoint()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s or self.timeout_s)
        headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
        try:
            conn.request(
                method, path, body=json.dumps(body) if body is not None else None, headers=headers
            )
            response = conn.getresponse()
            raw = response.read()
        except (ConnectionRefusedError, ConnectionResetError) as exc:
            raise DaemonNotRunning(
                f"the swarm-node daemon for {self.data_dir} does not answer on port {port} "
                f"({exc.strerror}); is it running?"
            ) from None
        except (TimeoutError, OSError) as exc:
            raise SwarmError(f"local API call {method} {path} failed: {exc}") from None
        finally:
            conn.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ApiCallError(
                response.status, f"daemon sent non-JSON ({response.status})"
            ) from None
        if response.status >= 400:
            raise ApiCallError(
                response.status, doc.get("error", raw.decode(errors="replace")), doc.get("kind", "")
            )
        return doc  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self.request("GET", "/v1/status")

    def peers(
        self, *, wait_members: int | None = None, timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        path = "/v1/peers"
        if wait_members is not None:
            path += "?" + urlencode({"wait_members": wait_members, "timeout": timeout_s})
        doc = self.request("GET", path, timeout_s=timeout_s + 10)
        return doc["peers"]  # type: ignore[no-any-return]

    def connect(self, addr: str) -> dict[str, Any]:
        return self.request("POST", "/v1/connect", {"addr": addr})

    def transfer(self, to: str, amount: int, *, wait_s: float = 0.0) -> dict[str, Any]:
        return self.request(
            "POST",
            "/v1/transfer",
            {"to": to, "amount": amount, "wait_s": wait_s},
            timeout_s=wait_s + 30,
        )

    def balance(self, account: str | None = None) -> dict[str, Any]:
        query = "?" + urlencode({"account": account}) if account else ""
        return self.request("GET", "/v1/balance" + query)

    def balances(self) -> list[dict[str, Any]]:
        return self.all_balances()["balances"]  # type: ignore[no-any-return]

    def all_balances(self) -> dict[str, Any]:
        """The genesis accounts' balances, and the ledger's totals (supply, locked)."""
        return self.request("GET", "/v1/balance?all=1")

    def dag_status(self, window_s: float | None = None) -> dict[str, Any]:
        query = f"?window_s={window_s}" if window_s else ""
        return self.request("GET", "/v1/dag/status" + query)

    def vertex(self, vertex_id: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/dag/vertex/{vertex_id}")

    def tx(self, tx_id: str, *, wait_s: float = 0.0) -> dict[str, Any]:
        """A transaction's status here; with `wait_s`, wait until it is decided."""
        query = "?" + urlencode({"wait_s": wait_s}) if wait_s else ""
        return self.request("GET", f"/v1/dag/tx/{tx_id}{query}", timeout_s=wait_s + 30)

    def submit(self, txs: list[bytes]) -> list[dict[str, Any]]:
        """Submit signed transactions (their canonical bytes); one result each."""
        doc = self.request("POST", "/v1/txs", {"txs": [t.hex() for t in txs]}, timeout_s=120)
        return doc["results"]  # type: ignore[no-any-return]

    def experts(self) -> dict[str, Any]:
        return self.request("GET", "/v1/experts")

    def infer(self, prompt: str, **options: Any) -> dict[str, Any]:
        """Peer-to-peer inference through the daemon; `options` as POST /v1/infer takes."""
        wait = float(options.get("deadline_s", 10.0)) + 30
        return self.request("POST", "/v1/infer", {"prompt": prompt, **options}, timeout_s=wait)

    def infer_tensor(
        self,
        expert_id: str,
        rows: list[list[float]],
        *,
        deadline_s: float = 5.0,
        max_price: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"expert": expert_id, "rows": rows, "deadline_s": deadline_s}
        if max_price is not None:
            body["max_price"] = max_price
        return self.request("POST", "/v1/infer/tensor", body, timeout_s=deadline_s + 30)

    def market(self, view: str, **query: Any) -> dict[str, Any]:
        """GET /v1/market/<view>: channels, receipts, providers or prices."""
        suffix = "?" + urlencode(query) if query else ""
        return self.request("GET", f"/v1/market/{view}{suffix}")

    def settle(self) -> dict[str, Any]:
        """Settle every channel we serve that has charges, now."""
        return self.request("POST", "/v1/market/settle", {}, timeout_s=60)

    def usage(self, days: int = 30) -> dict[str, Any]:
        return self.request("GET", "/v1/usage?" + urlencode({"days": days}))
