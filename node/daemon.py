"""The composition root: config in, a running node out. Nothing else builds components."""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio
from libp2p.peer.id import ID

from dag.crypto import Scheme, SigningKey
from dag.engine import Engine
from dag.genesis import Genesis
from dag.store import Store
from node import __version__
from node.api import build_app, serve_api
from node.config import NodeConfig, dag_params
from node.datadir import RUNTIME, Keys, load_genesis, load_keys, read_token, write_atomic
from node.hosting import load_hosted
from node.market import Market
from node.market_client import Purse
from node.market_payer import Payer
from node.market_provider import Till
from node.market_store import MarketStore
from protocols.dag_service import DagService, DagSettings
from protocols.expert_service import ExpertService, ExpertSettings
from protocols.hello import Binding, Hello
from protocols.infer_server import ExpertHost
from protocols.p2p import P2PService, P2PSettings
from protocols.peers import PeerTable

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs shadow trio's own types for mypy.
    from trio_typing import TaskStatus

log = logging.getLogger("swarm.node")
DAG_STORE = "dag.sqlite"
MARKET_STORE = "market.sqlite"


@dataclass
class Node:
    """A built node: its identity and services. `run` starts them under one nursery."""

    config: NodeConfig
    keys: Keys
    genesis: Genesis
    peers: PeerTable
    p2p: P2PService
    dag: DagService
    experts: ExpertService
    market: Market
    store: Store
    wall_clock: Callable[[], float] = time.time
    api_port: int = 0
    started_at: float = field(default=0.0)

    @property
    def peer_id(self) -> str:
        return self.p2p.peer_id

    def status(self) -> dict[str, Any]:
        members = self.peers.connected_members()
        return {
            "name": self.config.name,
            "version": __version__,
            "peer_id": self.peer_id,
            "account": self.keys.account.account_id.hex(),
            "scheme": self.keys.account.scheme.label,
            "chain_id": self.genesis.chain_id,
            "genesis": self.genesis.digest.hex(),
            "addrs": self.p2p.addrs(),
            "api_port": self.api_port,
            "pid": os.getpid(),
            "uptime_s": round(trio.current_time() - self.started_at, 3),
            "peers_connected": len(self.peers.connected_ids()),
            "members_connected": len(members),
        }

    async def run(self, *, task_status: TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at = trio.current_time()
        runtime = self.config.data_dir / RUNTIME
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.p2p.run)
                await nursery.start(self.dag.run)
                await nursery.start(self.experts.run)
                await nursery.start(self.market.run)
                app = build_app(self, read_token(self.config.data_dir))
                self.api_port = await nursery.start(serve_api, app, self.config.api.port)
                write_atomic(runtime, json.dumps(self.status()) + "\n")
                log.info(
                    "%s ready: peer %s, account %s, api 127.0.0.1:%d, listening on %s",
                    self.config.name,
                    self.peer_id,
                    self.keys.account.account_id.hex()[:16],
                    self.api_port,
                    " ".join(self.p2p.addrs()),
                )
                task_status.started(self)
        finally:
            runtime.unlink(missing_ok=True)
            # Engine calls run in worker threads that the nursery waited for: none is left.
            self.store.close()
            self.market.store.close()


def build_node(config: NodeConfig, *, wall_clock: Callable[[], float] = time.time) -> Node:
    """Read keys and genesis named by `config` and wire the services together."""
    keys = load_keys(config.data_dir)
    genesis = load_genesis(config.genesis_path)
    peer_id = ID.from_pubkey(keys.host.public_key).to_base58()
    hello = Hello(
        chain_id=genesis.chain_id,
        genesis=genesis.digest,
        version=__version__,
        name=config.name,
        binding=Binding.create(peer_id, keys.account, keys.host.private_key.sign),
    )
    peers = PeerTable(wall_clock)
    store = Store.open(config.data_dir / DAG_STORE, genesis.digest)
    engine = Engine.open(
        genesis, store, dag_params(config.dag), keys.account.account_id, random.Random()
    )
    net = config.network
    p2p = P2PService(
        key_pair=keys.host,
        hello=hello,
        settings=P2PSettings(
            listen=net.listen,
            bootstrap=net.bootstrap,
            mdns=net.mdns,
            ping_interval_s=net.ping_interval_s,
            dial_backoff_max_s=net.dial_backoff_max_s,
        ),
        peers=peers,
    )
    dag = DagService(
        engine=engine,
        p2p=p2p,
        key=keys.account,
        wall_clock=wall_clock,
        settings=DagSettings(
            dag_params(config.dag), batch_window_s=config.dag.batch_window_ms / 1000
        ),
    )
    host = ExpertHost(load_hosted(config.experts))
    market_store = MarketStore.open(
        config.data_dir / MARKET_STORE, now_ms=lambda: int(wall_clock() * 1000)
    )
    account_of = _account_of(peers)
    floor = config.experts.price_per_1k
    # The host key seals every frame of receipts: through libsodium directly, not libp2p's
    # wrapper.
    host_key = SigningKey(Scheme.ED25519, keys.host.private_key.to_bytes())
    assert host_key.public_key.raw == keys.host.public_key.to_bytes()

    def host_sign(message: bytes) -> bytes:
        return host_key.sign(message).value

    till = Till(
        policy=config.market,
        store=market_store,
        chain=genesis.digest,
        account_of=account_of,
        floor_price=lambda expert: floor if expert in host.experts else None,
        queue_depth=host.queue_depth,
        queue_cap=host.limits.queue_per_expert,
        host_sign=host_sign,
        now_ms=lambda: int(wall_clock() * 1000),
    )
    host.gate = till
    payer = Payer(
        config=config.market,
        store=market_store,
        purse=Purse(market_store, genesis.digest, _host_key_of),
        dag=dag,
        p2p=p2p,
        account_of=account_of,
        wall_clock=wall_clock,
    )
    market = Market(
        config=config.market,
        store=market_store,
        till=till,
        payer=payer,
        dag=dag,
        p2p=p2p,
        hosted=lambda: list(host.experts),
        account_of=account_of,
        wall_clock=wall_clock,
    )
    expert_service = ExpertService(
        host=host,
        p2p=p2p,
        account=keys.account,
        host_sign=host_sign,
        # A node that does not serve for pay announces its experts free.
        settings=ExpertSettings(price_per_1k=floor if config.market.serve_paid else 0),
        wall_clock=wall_clock,
        payer=payer,
    )
    payer.on_dispute = expert_service.directory.dispute
    return Node(
        config=config,
        keys=keys,
        genesis=genesis,
        peers=peers,
        p2p=p2p,
        dag=dag,
        experts=expert_service,
        market=market,
        store=store,
        wall_clock=wall_clock,
    )


def _account_of(peers: PeerTable) -> Callable[[str], bytes | None]:
    """The account a member peer proved in its hello, or None."""

    def account_of(peer: str) -> bytes | None:
        entry = peers.get(peer)
        if entry is None or not entry.member or not entry.account:
            return None
        return bytes.fromhex(entry.account)

    return account_of


@functools.lru_cache(maxsize=1024)
def _host_key_of(peer: str) -> bytes | None:
    """A peer's host key (Ed25519, raw), from its peer id: what seals its receipts."""
    try:
        key = ID.from_base58(peer).extract_public_key()
    except ValueError:
        return None
    return None if key is None else bytes(key.to_bytes())
