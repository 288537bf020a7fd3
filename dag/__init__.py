"""The consensus DAG, sans-IO: transactions, vertices, Avalanche voting, ledger and store.

`Engine` is what the network layer drives (see `dag.engine` for the driver loop).
"""

# The names are imported on first use (PEP 562), so that a light importer — the CLI, which
# needs only `dag.errors` — does not pay for the whole package.
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Avalanche": "dag.avalanche",
    "Bucket": "dag.kinds",
    "DecodeError": "dag.errors",
    "Engine": "dag.engine",
    "Event": "dag.engine",
    "Genesis": "dag.genesis",
    "GenesisAccount": "dag.genesis",
    "GenesisError": "dag.genesis",
    "InvalidSignature": "dag.errors",
    "InvalidTransaction": "dag.errors",
    "InvalidVertex": "dag.errors",
    "KindRegistry": "dag.kinds",
    "Ledger": "dag.ledger",
    "LedgerInvariantError": "dag.ledger",
    "LedgerView": "dag.kinds",
    "LocalProtocolError": "dag.errors",
    "Move": "dag.kinds",
    "Params": "dag.params",
    "PollRequest": "dag.avalanche",
    "PublicKey": "dag.crypto",
    "Received": "dag.engine",
    "RemoteProtocolError": "dag.errors",
    "ReplayedNonce": "dag.errors",
    "Scheme": "dag.crypto",
    "Signature": "dag.crypto",
    "SigningKey": "dag.crypto",
    "Store": "dag.store",
    "StoreCorrupt": "dag.store",
    "StoreError": "dag.store",
    "StoreMismatch": "dag.store",
    "SwarmError": "dag.errors",
    "Transaction": "dag.tx",
    "Transfer": "dag.kinds",
    "TxAccepted": "dag.engine",
    "TxApplied": "dag.engine",
    "TxFailed": "dag.kinds",
    "TxKind": "dag.kinds",
    "TxOutcome": "dag.ledger",
    "TxRejected": "dag.engine",
    "TxStatus": "dag.store",
    "Vertex": "dag.vertex",
    "VertexAccepted": "dag.avalanche",
    "VertexRejected": "dag.avalanche",
    "VertexStatus": "dag.store",
    "account_id_of": "dag.crypto",
    "default_registry": "dag.kinds",
    "genesis_vertex_id": "dag.vertex",
    "transfer_payload": "dag.kinds",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
