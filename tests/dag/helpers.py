"""Factories for the dag tests: deterministic keys, a genesis, signed transfers."""

from __future__ import annotations

import hashlib
import random
from typing import Any

from dag.crypto import Scheme, SigningKey
from dag.engine import Engine
from dag.genesis import Genesis, GenesisAccount
from dag.kinds import default_registry, transfer_payload
from dag.params import Params
from dag.store import Store
from dag.tx import Transaction

REGISTRY = default_registry()
GENESIS_MS = 1_700_000_000_000


def key(index: int, scheme: Scheme = Scheme.ED25519) -> SigningKey:
    """The same key for the same index in every run."""
    return SigningKey(scheme, hashlib.blake2b(b"test-key-%d" % index, digest_size=32).digest())


def make_genesis(
    keys: list[SigningKey],
    *,
    balance: int = 1_000,
    stakes: list[int] | None = None,
    balances: list[int] | None = None,
) -> Genesis:
    """A genesis of `keys`: `balance` each unless `balances` says, stake 100 unless `stakes`."""
    stakes = stakes or [100] * len(keys)
    balances = balances or [balance] * len(keys)
    accounts = tuple(
        GenesisAccount(f"n{i}", k.account_id, k.public_key, b, stake)
        for i, (k, b, stake) in enumerate(zip(keys, balances, stakes, strict=True))
    )
    return Genesis("test-chain", GENESIS_MS, accounts)


def transfer(
    sender: SigningKey, genesis: Genesis, to: bytes, amount: int, nonce: int
) -> Transaction:
    return signed(sender, genesis, nonce, "transfer", transfer_payload(to, amount))


def open_engine(
    genesis: Genesis, me: SigningKey, path: str = ":memory:", params: Params | None = None
) -> Engine:
    store = Store.open(path, genesis.digest)
    return Engine.open(genesis, store, params or Params.fast(), me.account_id, random.Random(1))


def signed(
    sender: SigningKey, genesis: Genesis, nonce: int, kind: str, payload: tuple[Any, ...]
) -> Transaction:
    """A transaction of any kind, signed by `sender`."""
    return Transaction.create(
        sender, chain=genesis.digest, nonce=nonce, kind=kind, payload=payload, registry=REGISTRY
    )
