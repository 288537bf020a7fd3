"""Read-only views of the DAG engine for the local API (run under the engine's lock)."""

from __future__ import annotations

from typing import Any

from dag.engine import Engine
from dag.vertex import Vertex


def balance_view(engine: Engine, account: bytes) -> dict[str, Any]:
    ledger = engine.ledger
    return {
        "account": account.hex(),
        "balance": ledger.balance(account),
        "next_nonce": ledger.next_nonce(account),
        "supply": engine.genesis.supply,
    }


def totals_view(engine: Engine) -> dict[str, int]:
    """Where the supply is: in accounts' balances, and locked (channel deposits)."""
    ledger = engine.ledger
    return {
        "in_accounts": ledger.total_balances,
        "locked": ledger.total_locked,
        "supply": engine.genesis.supply,
    }


def vertex_view(engine: Engine, vertex_id: bytes) -> dict[str, Any] | None:
    body = engine.vertex_bytes(vertex_id)
    if body is None:
        return None
    vertex = Vertex.from_bytes(body, engine.registry, chain=engine.chain)
    status = engine.store.vertex_status(vertex_id)
    return {
        "id": vertex.id.hex(),
        "status": status.name.lower() if status is not None else "processing",
        "author": vertex.author.hex(),
        "scheme": vertex.author_key.scheme.label,
        "timestamp_ms": vertex.timestamp_ms,
        "parents": [p.hex() for p in vertex.parents],
        "bytes": len(body),
        "txs": [
            {
                "id": tx.id.hex(),
                "account": tx.account.hex(),
                "nonce": tx.nonce,
                "kind": tx.kind,
                "payload": [v.hex() if isinstance(v, bytes) else v for v in tx.payload],
                "status": "processing" if status is None else tx_status_of(engine, tx.id),
            }
            for tx in vertex.txs
        ],
    }


def tx_status_of(engine: Engine, tx_id: bytes) -> str:
    """`applied`, `failed`, `waiting`, `rejected` from the store; `unknown` if not decided."""
    record = engine.store.tx_record(tx_id)
    return "unknown" if record is None else record.status.name.lower()
