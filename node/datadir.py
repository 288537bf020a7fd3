"""The data dir: where a node keeps its keys, config, genesis and API token.

Key files are created mode 0600 with O_EXCL, so an existing key is never overwritten; a key
file that cannot be read or parsed is reported and left exactly as it is.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dag.crypto import Scheme, SigningKey
from dag.errors import SwarmError
from dag.genesis import Genesis, GenesisAccount
from node.config import CONFIG_FILE, render_config

if TYPE_CHECKING:
    from libp2p.crypto.keys import KeyPair

# libp2p is imported inside the functions that need it: the CLI's client commands read
# this module and should start in milliseconds, not in the half second libp2p takes.

HOST_KEY = "host.key"
ACCOUNT_KEY = "account.key"
GENESIS = "genesis.json"
API_TOKEN = "api.token"
RUNTIME = "node.json"
SOLO_BALANCE = 1_000_000


class KeyFileError(SwarmError):
    """A key file that is missing, unreadable or corrupt. It is never replaced."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)


class NodeExists(SwarmError):
    """`init` was asked to create a node where one already is."""


def default_data_dir(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    home = env.get("SWARM_NODE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".swarm-node"


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file so that a reader (or a crash) sees the old or the new text, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True, slots=True)
class Keys:
    host: KeyPair
    account: SigningKey


def host_key_text(seed: bytes) -> str:
    return json.dumps({"type": "ed25519", "seed": seed.hex()}) + "\n"


def load_keys(data_dir: Path) -> Keys:
    return Keys(
        host=load_host_key(data_dir / HOST_KEY), account=load_account_key(data_dir / ACCOUNT_KEY)
    )


def _read_key_file(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        raise KeyFileError(path, "missing; run `swarm-node init`") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(path, f"unreadable: {exc}") from None


def load_host_key(path: Path) -> KeyPair:
    from libp2p.crypto.ed25519 import Ed25519PrivateKey
    from libp2p.crypto.keys import KeyPair

    text = _read_key_file(path)
    try:
        doc = json.loads(text)
        if doc["type"] != "ed25519":
            raise ValueError(f"unsupported host key type {doc['type']!r}")
        seed = bytes.fromhex(doc["seed"])
        if len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        private = Ed25519PrivateKey.from_bytes(seed)
    except (ValueError, KeyError, TypeError) as exc:
        raise KeyFileError(path, f"corrupt host key: {exc}") from None
    return KeyPair(private, private.get_public_key())


def load_account_key(path: Path) -> SigningKey:
    text = _read_key_file(path)
    try:
        return SigningKey.from_json(text)
    except SwarmError as exc:
        raise KeyFileError(path, str(exc)) from None


def solo_genesis(name: str, account: SigningKey, peer_id: str) -> Genesis:
    """A one-account chain for a node started on its own; other nodes may join it."""
    return Genesis(
        chain_id=f"solo-{account.account_id.hex()[:12]}",
        timestamp_ms=int(time.time() * 1000),
        accounts=(
            GenesisAccount(name, account.account_id, account.public_key, SOLO_BALANCE, 1, peer_id),
        ),
    )


def load_genesis(path: Path) -> Genesis:
    try:
        return Genesis.from_json(path.read_text())
    except OSError as exc:
        raise SwarmError(f"{path}: cannot read genesis: {exc.strerror}") from None
    except SwarmError as exc:
        raise SwarmError(f"{path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Identity:
    """Keys made for a new node, before any file is written."""

    host_seed: bytes
    account: SigningKey

    @classmethod
    def generate(cls, scheme: Scheme = Scheme.ML_DSA_65) -> Identity:
        from libp2p.crypto.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.new().to_bytes(), SigningKey.generate(scheme))

    @property
    def peer_id(self) -> str:
        from libp2p.crypto.ed25519 import Ed25519PrivateKey
        from libp2p.peer.id import ID

        return ID.from_pubkey(
            Ed25519PrivateKey.from_bytes(self.host_seed).get_public_key()
        ).to_base58()


def write_node(
    data_dir: Path,
    identity: Identity,
    *,
    name: str,
    genesis: Genesis,
    listen: list[str] | None = None,
    bootstrap: list[str] | None = None,
    api_port: int = 0,
    preset: str = "default",
    host: list[str] | None = None,
    serve_paid: bool = False,
) -> dict[str, Any]:
    """Write a new node's files: keys (0600, never over an existing one), config, genesis, token."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    existing = [n for n in (CONFIG_FILE, HOST_KEY, ACCOUNT_KEY) if (data_dir / n).exists()]
    if existing:
        raise NodeExists(
            f"a node already exists in {data_dir} ({', '.join(existing)}); nothing was changed"
        )
    _write_private(data_dir / HOST_KEY, host_key_text(identity.host_seed))
    _write_private(data_dir / ACCOUNT_KEY, identity.account.to_json())
    _write_private(data_dir / API_TOKEN, secrets.token_urlsafe(32) + "\n")
    write_atomic(data_dir / GENESIS, genesis.to_json())
    write_atomic(
        data_dir / CONFIG_FILE,
        render_config(
            name,
            listen or ["/ip4/127.0.0.1/tcp/0"],
            bootstrap or [],
            api_port,
            preset,
            host,
            serve_paid=serve_paid,
        ),
    )
    return {
        "data_dir": str(data_dir),
        "name": name,
        "peer_id": identity.peer_id,
        "account": identity.account.account_id.hex(),
        "scheme": identity.account.scheme.label,
        "chain_id": genesis.chain_id,
    }


def init_data_dir(
    data_dir: Path,
    *,
    name: str,
    scheme: Scheme = Scheme.ML_DSA_65,
    genesis: Genesis | None = None,
    listen: list[str] | None = None,
    bootstrap: list[str] | None = None,
    api_port: int = 0,
) -> dict[str, Any]:
    """`swarm-node init`: a new identity on the given chain, or on a new solo chain."""
    identity = Identity.generate(scheme)
    genesis = genesis or solo_genesis(name, identity.account, identity.peer_id)
    return write_node(
        data_dir,
        identity,
        name=name,
        genesis=genesis,
        listen=listen,
        bootstrap=bootstrap,
        api_port=api_port,
    )


def read_token(data_dir: Path) -> str:
    return (data_dir / API_TOKEN).read_text().strip()


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    """The running daemon's `node.json` (pid, peer id, addrs, API port), if there is one."""
    try:
        doc = json.loads((data_dir / RUNTIME).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
