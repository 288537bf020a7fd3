"""The consensus DAG, sans-IO: transactions, vertices, Avalanche voting, ledger and store.

`Engine` is what the network layer drives (see `dag.engine` for the driver loop).
"""

from dag.avalanche import Avalanche, PollRequest, VertexAccepted, VertexRejected
from dag.crypto import PublicKey, Scheme, Signature, SigningKey, account_id_of
from dag.engine import Engine, Event, Received, TxAccepted, TxApplied, TxRejected
from dag.errors import (
    DecodeError,
    InvalidSignature,
    InvalidTransaction,
    InvalidVertex,
    LocalProtocolError,
    RemoteProtocolError,
    ReplayedNonce,
    SwarmError,
)
from dag.genesis import Genesis, GenesisAccount, GenesisError
from dag.kinds import (
    Bucket,
    KindRegistry,
    LedgerView,
    Move,
    Transfer,
    TxFailed,
    TxKind,
    default_registry,
    transfer_payload,
)
from dag.ledger import Ledger, LedgerInvariantError, TxOutcome
from dag.params import Params
from dag.store import Store, StoreCorrupt, StoreError, StoreMismatch, TxStatus, VertexStatus
from dag.tx import Transaction
from dag.vertex import Vertex, genesis_vertex_id

__all__ = [
    "Avalanche",
    "Bucket",
    "DecodeError",
    "Engine",
    "Event",
    "Genesis",
    "GenesisAccount",
    "GenesisError",
    "InvalidSignature",
    "InvalidTransaction",
    "InvalidVertex",
    "KindRegistry",
    "Ledger",
    "LedgerInvariantError",
    "LedgerView",
    "LocalProtocolError",
    "Move",
    "Params",
    "PollRequest",
    "PublicKey",
    "Received",
    "RemoteProtocolError",
    "ReplayedNonce",
    "Scheme",
    "Signature",
    "SigningKey",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreMismatch",
    "SwarmError",
    "Transaction",
    "Transfer",
    "TxAccepted",
    "TxApplied",
    "TxFailed",
    "TxKind",
    "TxOutcome",
    "TxRejected",
    "TxStatus",
    "Vertex",
    "VertexAccepted",
    "VertexRejected",
    "VertexStatus",
    "account_id_of",
    "default_registry",
    "genesis_vertex_id",
    "transfer_payload",
]
