"""The genesis file: chain id, and each founding account's balance and stake.

Every node of a mesh loads the same file. Its digest (BLAKE2b-256 over a canonical JSON
encoding) is what two nodes compare before they talk: another genesis is another chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from dag.crypto import ACCOUNT_ID_BYTES, PublicKey, Scheme
from dag.errors import SwarmError

MAX_ACCOUNTS = 1024
MAX_CREDITS = 10**15


class GenesisError(SwarmError):
    """A genesis file that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class GenesisAccount:
    name: str
    account: bytes
    public_key: PublicKey
    balance: int
    stake: int
    peer_id: str = ""


@dataclass(frozen=True, slots=True)
class Genesis:
    chain_id: str
    timestamp_ms: int
    accounts: tuple[GenesisAccount, ...]

    @property
    def supply(self) -> int:
        return sum(a.balance for a in self.accounts)

    @property
    def total_stake(self) -> int:
        return sum(a.stake for a in self.accounts)

    @property
    def digest(self) -> bytes:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.blake2b(canonical.encode(), digest_size=32).digest()

    def account(self, account_id: bytes) -> GenesisAccount | None:
        return next((a for a in self.accounts if a.account == account_id), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "timestamp_ms": self.timestamp_ms,
            "accounts": [
                {
                    "name": a.name,
                    "account": a.account.hex(),
                    "scheme": a.public_key.scheme.label,
                    "public_key": a.public_key.raw.hex(),
                    "peer_id": a.peer_id,
                    "balance": a.balance,
                    "stake": a.stake,
                }
                for a in self.accounts
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Genesis:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise GenesisError(f"genesis is not valid JSON: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: object) -> Genesis:
        if not isinstance(doc, dict):
            raise GenesisError("genesis must be a JSON object")
        chain_id = _field(doc, "chain_id", str)
        if not 1 <= len(chain_id) <= 64:
            raise GenesisError("genesis chain_id must be 1 to 64 characters")
        timestamp_ms = _field(doc, "timestamp_ms", int)
        raw_accounts = _field(doc, "accounts", list)
        if not 1 <= len(raw_accounts) <= MAX_ACCOUNTS:
            raise GenesisError(f"genesis must list 1 to {MAX_ACCOUNTS} accounts")
        accounts = tuple(_account(i, a) for i, a in enumerate(raw_accounts))
        if len({a.account for a in accounts}) != len(accounts):
            raise GenesisError("genesis lists an account twice")
        genesis = cls(chain_id, timestamp_ms, accounts)
        if genesis.supply > MAX_CREDITS:
            raise GenesisError(f"genesis supply exceeds {MAX_CREDITS}")
        return genesis


def _field(doc: dict[str, Any], key: str, kind: type, where: str = "genesis") -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise GenesisError(f"{where}: field {key!r} must be a {kind.__name__}")
    return value


def _account(index: int, doc: object) -> GenesisAccount:
    where = f"genesis accounts[{index}]"
    if not isinstance(doc, dict):
        raise GenesisError(f"{where} must be an object")
    try:
        scheme = Scheme.parse(_field(doc, "scheme", str, where))
        public_key = PublicKey.parse(scheme, bytes.fromhex(_field(doc, "public_key", str, where)))
        account = bytes.fromhex(_field(doc, "account", str, where))
    except ValueError as exc:
        raise GenesisError(f"{where}: {exc}") from None
    except SwarmError as exc:
        raise GenesisError(f"{where}: {exc}") from None
    if len(account) != ACCOUNT_ID_BYTES or account != public_key.account_id:
        raise GenesisError(f"{where}: account is not the hash of its public key")
    balance = _field(doc, "balance", int, where)
    stake = _field(doc, "stake", int, where)
    if not (0 <= balance <= MAX_CREDITS and 0 <= stake <= MAX_CREDITS):
        raise GenesisError(f"{where}: balance and stake must be 0..{MAX_CREDITS}")
    peer_id = doc.get("peer_id", "")
    if not isinstance(peer_id, str):
        raise GenesisError(f"{where}: field 'peer_id' must be a str")
    return GenesisAccount(
        _field(doc, "name", str, where), account, public_key, balance, stake, peer_id
    )
