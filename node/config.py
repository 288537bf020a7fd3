"""Typed configuration, read from a data dir's `config.toml`.

Every defect names the file, the key and the problem, and raises `ConfigError` before
anything starts; the CLI turns it into exit status 2.
"""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import multiaddr

from dag.errors import SwarmError
from dag.params import Params

CONFIG_FILE = "config.toml"


class ConfigError(SwarmError):
    """A config file, or a setting given on the command line, that cannot be used."""

    def __init__(self, path: Path | str, key: str, problem: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)
        self.path = str(path)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    ping_interval_s: float = 5.0
    dial_backoff_max_s: float = 30.0


@dataclass(frozen=True, slots=True)
class ApiConfig:
    port: int = 0


EXPERT_CHOICES = ("reasoning", "coding", "language", "mathematics", "tool_use", "context", "ffn64")


@dataclass(frozen=True, slots=True)
class ExpertsConfig:
    host: tuple[str, ...] = ()  # zoo domains and/or "ffn64"; "all" in the file means all
    price_per_1k: int = 10
    precision: str = "int8"


@dataclass(frozen=True, slots=True)
class DagConfig:
    # Avalanche parameters: a named preset, each value overridable on its own.
    preset: str = "default"
    k: int | None = None
    alpha: int | None = None
    beta1: int | None = None
    beta2: int | None = None
    concurrent_polls: int | None = None
    query_timeout_s: float | None = None
    batch_window_ms: float = 50.0


@dataclass(frozen=True, slots=True)
class MarketConfig:
    """Serving for pay (the provider's terms) and paying (the client's channels)."""

    serve_paid: bool = False  # opt-in: without it our experts are free and announced at 0
    price_ceiling: int = 0  # the price rises with the queue from the floor up to this; 0: fixed
    max_tokens_per_request: int = 8_192
    client_tokens_per_day: int = 1_000_000  # per paying account, served by us
    tokens_per_day: int = 10_000_000  # served by us to everyone
    quote_valid_s: float = 30.0
    settle_margin_s: float = 120.0  # settle this long before a channel's expiry
    settle_idle_s: float = 0.0  # also settle a channel idle this long (0: only near expiry)
    deposit: int = 100  # credits a new channel locks (more if one call needs more)
    channel_lifetime_s: float = 3_600.0


_MARKET_BOUNDS: dict[str, tuple[float, float]] = {
    "price_ceiling": (0, 10**9),
    "max_tokens_per_request": (1, 10**9),
    "client_tokens_per_day": (0, 10**15),
    "tokens_per_day": (0, 10**15),
    "quote_valid_s": (1, 3_600),
    "settle_margin_s": (0, 86_400),
    "settle_idle_s": (0, 86_400 * 30),
    "deposit": (1, 10**15),
    "channel_lifetime_s": (10, 86_400 * 30),
}


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: str = "text"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    name: str = "node"
    genesis: Path = Path("genesis.json")
    network: NetworkConfig = field(default_factory=NetworkConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    dag: DagConfig = field(default_factory=DagConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    market: MarketConfig = field(default_factory=MarketConfig)
    log: LogConfig = field(default_factory=LogConfig)

    @property
    def genesis_path(self) -> Path:
        return self.genesis if self.genesis.is_absolute() else self.data_dir / self.genesis


def render_config(
    name: str,
    listen: list[str],
    bootstrap: list[str],
    api_port: int,
    preset: str = "default",
    host: list[str] | None = None,
    serve_paid: bool = False,
) -> str:
    """The commented `config.toml` that `swarm-node init` writes."""

    host = host or []

    def arr(items: list[str]) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    return f"""\
# swarm-node configuration. Unknown keys are an error, so a typo never goes unnoticed.

[node]
# A name for people; peers see it in their peer tables.
name = "{name}"
# The genesis file of the chain this node belongs to (relative to this directory).
genesis = "genesis.json"

[network]
# Multiaddrs to listen on (TCP, secured by Noise, multiplexed by Yamux). Port 0 picks one.
listen = {arr(listen)}
# Peers to dial at start, each /ip4/.../tcp/.../p2p/<peer id>. Unreachable ones are retried
# with backoff and never stop the node.
bootstrap = {arr(bootstrap)}
# Find peers on the local network by mDNS.
mdns = false
# How often each connected peer is pinged to measure its round-trip time.
ping_interval_s = 5.0
# The longest wait between two dials of an unreachable bootstrap peer.
dial_backoff_max_s = 30.0

[api]
# The local HTTP API, on 127.0.0.1 only. Port 0 picks one and writes it to node.json.
port = {api_port}

[dag]
# Avalanche voting: a preset ("default", "fast", "high_security"); k, alpha, beta1, beta2,
# concurrent_polls and query_timeout_s may each be set here to override it.
preset = "{preset}"
# How long a transaction waits for others to share its vertex, in milliseconds.
batch_window_ms = 50.0

[experts]
# The micro-experts this node serves to its peers: zoo domains (reasoning, coding,
# language, mathematics, tool_use, context), "ffn64" (a built-in tensor expert), or "all".
host = {arr(host)}
# What a caller pays per 1,000 tokens, in credits.
price_per_1k = 10
# Which zoo files to load: "int8" (small) or "f32".
precision = "int8"

[market]
# Serve our experts for pay (opt-in). Without it they are free, and announced at price 0.
serve_paid = {"true" if serve_paid else "false"}
# The price follows our queue from price_per_1k (the floor) up to this; 0 keeps it fixed.
price_ceiling = 0
# Limits on what we serve for pay: tokens per request, per client per day, in all per day.
max_tokens_per_request = 8192
client_tokens_per_day = 1000000
tokens_per_day = 10000000
# How long a quote holds for the client that asked.
quote_valid_s = 30.0
# We settle a channel this long before it expires, and after it sat idle this long (0: not).
settle_margin_s = 120.0
settle_idle_s = 0.0
# When we pay: the credits a new channel locks, and how long it lasts.
deposit = 100
channel_lifetime_s = 3600.0

[log]
# "text" for people, "json" for machines.
format = "text"
# debug, info, warning or error.
level = "info"
"""


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "node": {"name": str, "genesis": str},
    "network": {
        "listen": list,
        "bootstrap": list,
        "mdns": bool,
        "ping_interval_s": (int, float),
        "dial_backoff_max_s": (int, float),
    },
    "api": {"port": int},
    "dag": {
        "preset": str,
        "k": int,
        "alpha": int,
        "beta1": int,
        "beta2": int,
        "concurrent_polls": int,
        "query_timeout_s": (int, float),
        "batch_window_ms": (int, float),
    },
    "experts": {"host": list, "price_per_1k": int, "precision": str},
    "market": {
        "serve_paid": bool,
        **{key: (int, float) if key.endswith("_s") else int for key in _MARKET_BOUNDS},
    },
    "log": {"format": str, "level": str},
}


def load_config(data_dir: Path) -> NodeConfig:
    path = data_dir / CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(path, "", "no config file; run `swarm-node init` first") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    return parse_config(doc, data_dir, path)


def parse_config(doc: dict[str, Any], data_dir: Path, path: Path | str) -> NodeConfig:
    for section, values in doc.items():
        if section not in _SCHEMA:
            raise ConfigError(path, section, f"unknown section; known: {', '.join(_SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(path, section, "must be a table")
        for key, value in values.items():
            kinds = _SCHEMA[section].get(key)
            if kinds is None:
                raise ConfigError(path, f"{section}.{key}", "unknown key")
            if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is not bool):
                raise ConfigError(path, f"{section}.{key}", f"must be {_kind_name(kinds)}")

    def get(section: str, key: str, default: Any) -> Any:
        return doc.get(section, {}).get(key, default)

    net_default = NetworkConfig()
    network = NetworkConfig(
        listen=tuple(
            _multiaddrs(
                path,
                "network.listen",
                get("network", "listen", ["/ip4/127.0.0.1/tcp/0"]),
                listen=True,
            )
        ),
        bootstrap=tuple(
            _multiaddrs(path, "network.bootstrap", get("network", "bootstrap", []), listen=False)
        ),
        mdns=get("network", "mdns", net_default.mdns),
        ping_interval_s=float(
            _positive(
                path,
                "network.ping_interval_s",
                get("network", "ping_interval_s", net_default.ping_interval_s),
            )
        ),
        dial_backoff_max_s=float(
            _positive(
                path,
                "network.dial_backoff_max_s",
                get("network", "dial_backoff_max_s", net_default.dial_backoff_max_s),
            )
        ),
    )
    port = get("api", "port", 0)
    if not 0 <= port <= 65535:
        raise ConfigError(path, "api.port", f"{port} is not a TCP port (0..65535)")
    log = LogConfig(format=get("log", "format", "text"), level=get("log", "level", "info"))
    if log.format not in ("text", "json"):
        raise ConfigError(path, "log.format", f"{log.format!r} is not one of 'text', 'json'")
    if log.level not in ("debug", "info", "warning", "error"):
        raise ConfigError(path, "log.level", f"{log.level!r} is not debug, info, warning or error")
    dag = DagConfig(**doc.get("dag", {}))
    try:
        dag_params(dag)
    except ValueError as exc:
        raise ConfigError(path, "dag", str(exc)) from None
    if not 0 <= dag.batch_window_ms <= 1000:
        raise ConfigError(path, "dag.batch_window_ms", "must be 0..1000")
    experts = _experts(path, doc.get("experts", {}))
    market = doc.get("market", {})
    for key, (low, high) in _MARKET_BOUNDS.items():
        if key in market and not low <= market[key] <= high:
            raise ConfigError(path, f"market.{key}", f"must be {low:g}..{high:g}")
    name = get("node", "name", "node")
    if not 1 <= len(name) <= 64:
        raise ConfigError(path, "node.name", "must be 1 to 64 characters")
    return NodeConfig(
        data_dir=data_dir,
        name=name,
        genesis=Path(get("node", "genesis", "genesis.json")),
        network=network,
        api=ApiConfig(port=port),
        dag=dag,
        experts=experts,
        market=MarketConfig(**market),
        log=log,
    )


def _experts(path: Path | str, doc: dict[str, Any]) -> ExpertsConfig:
    host = doc.get("host", [])
    if host == ["all"]:
        host = list(EXPERT_CHOICES)
    for i, name in enumerate(host):
        if name not in EXPERT_CHOICES:
            raise ConfigError(
                path,
                f"experts.host[{i}]",
                f"{name!r} is not one of {', '.join(EXPERT_CHOICES)} or 'all'",
            )
    price = doc.get("price_per_1k", 10)
    if not 0 <= price <= 10**9:
        raise ConfigError(path, "experts.price_per_1k", "must be 0..1000000000")
    precision = doc.get("precision", "int8")
    if precision not in ("int8", "f32"):
        raise ConfigError(path, "experts.precision", f"{precision!r} is not 'int8' or 'f32'")
    return ExpertsConfig(tuple(dict.fromkeys(host)), price, precision)


def dag_params(dag: DagConfig) -> Params:
    """The voting parameters: the preset with the values the config overrides."""
    params = Params.preset(dag.preset)
    overrides = {
        name: getattr(dag, name)
        for name in ("k", "alpha", "beta1", "beta2", "concurrent_polls", "query_timeout_s")
        if getattr(dag, name) is not None
    }
    return replace(params, **overrides) if overrides else params


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    names = {
        bool: "true or false",
        str: "a string",
        list: "an array",
        int: "an integer",
        float: "a number",
    }
    if isinstance(kinds, tuple):
        return "a number"
    return names.get(kinds, kinds.__name__)


def _positive(path: Path | str, key: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(path, key, "must be greater than 0")
    return value


def _multiaddrs(path: Path | str, key: str, values: list[Any], *, listen: bool) -> list[str]:
    out = []
    for i, value in enumerate(values):
        where = f"{key}[{i}]"
        if not isinstance(value, str):
            raise ConfigError(path, where, "must be a string")
        out.append(check_multiaddr(value, listen=listen, path=path, key=where))
    if listen and not out:
        raise ConfigError(path, key, "needs at least one address")
    return out


def check_multiaddr(
    text: str, *, listen: bool, path: Path | str = "--bootstrap", key: str = ""
) -> str:
    """Validate a TCP multiaddr; a dial address must also name the peer (`/p2p/...`)."""
    try:
        addr = multiaddr.Multiaddr(text)
        host = addr.value_for_protocol("ip4")
        port = addr.value_for_protocol("tcp")
    except Exception as exc:  # the multiaddr library raises several unrelated types
        raise ConfigError(path, key, f"bad multiaddr {text!r}: {exc}") from None
    if not host or port is None:
        raise ConfigError(path, key, f"bad multiaddr {text!r}: must be /ip4/<address>/tcp/<port>")
    if listen and "/p2p/" in text:
        raise ConfigError(path, key, f"listen address {text!r} must not name a peer")
    if not listen:
        try:
            peer = addr.value_for_protocol("p2p")
        except Exception:
            peer = None
        if not peer:
            raise ConfigError(path, key, f"bootstrap address {text!r} must end in /p2p/<peer id>")
    return text


def check_ports_free(config: NodeConfig) -> None:
    """Fail early, with exit status 2, when a fixed port is taken: nothing has started yet."""
    wanted = [("api.port", "127.0.0.1", config.api.port)]
    for i, text in enumerate(config.network.listen):
        addr = multiaddr.Multiaddr(text)
        wanted.append(
            (
                f"network.listen[{i}]",
                addr.value_for_protocol("ip4"),
                int(addr.value_for_protocol("tcp")),
            )
        )
    for key, host, port in wanted:
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                raise ConfigError(
                    config.data_dir / CONFIG_FILE,
                    key,
                    f"cannot listen on {host}:{port}: {exc.strerror}",
                ) from None
