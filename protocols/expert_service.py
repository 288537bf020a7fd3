"""Experts on the network: serve ours, announce them, keep the directory of everyone's.

Our offers go out signed on `swarm/experts/1` at start, on a short refresh, and when they
change; each expires a few refreshes later, so a provider that stops announcing leaves every
directory quickly, and one whose connection drops leaves at once. We also register as a
Kademlia provider under each expert's key and each domain's key (see WIRE.md), so a node
outside the gossip mesh can find us: when its directory has no provider for a call, it looks
the key up in the DHT (`discover`), dials who it finds, and fetches their current
announcement over `/swarm/announce/1.0.0`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from dag.crypto import SigningKey
from dag.errors import LocalProtocolError, RemoteProtocolError, SwarmError
from experts.directory import Directory, Offer
from protocols import announce, ids
from protocols.announce import Announcement
from protocols.errors import NetworkError, map_libp2p_errors
from protocols.framing import field
from protocols.infer_client import InferChannel
from protocols.infer_server import ExpertHost
from protocols.inference import Inference, Payer
from protocols.p2p import P2PService
from protocols.stream import FramedStream, Stream

log = logging.getLogger("swarm.experts")
EXPIRE_EVERY_S = 2.0  # how often lapsed offers are swept out of the directory
# A provide round made at start, before any peer is known, reaches no one: we provide again
# after peers join, until a round has seen this many DHT peers (then at most every
# REPROVIDE_EVERY_S); joins that come within REPROVIDE_BATCH_S of each other make one round.
PROVIDE_REPLICAS = 3
REPROVIDE_EVERY_S = 600.0
REPROVIDE_BATCH_S = 0.5
PROVIDE_TIMEOUT_S = 10.0
LOOKUP_PROVIDERS = 8  # providers one DHT lookup dials, at most
FETCH_TIMEOUT_S = 5.0  # to dial one provider found in the DHT and fetch its announcement
ANNOUNCE_FRAME = announce.MAX_BYTES + 64


@dataclass(frozen=True, slots=True)
class ExpertSettings:
    price_per_1k: int = 10
    # A refresh every 5 s costs each of N nodes N-1 signature checks per period; a provider
    # that dies is dropped at once when its connection closes, so the expiry (three missed
    # refreshes) only matters for one that is cut off without a disconnect.
    announce_every_s: float = 5.0
    ttl_s: float = 15.0


def dht_key(kind: str, value: str) -> str:
    """The Kademlia key of an expert id or a domain: a sha2-256 multihash, as hex."""
    digest = hashlib.sha256(f"/swarm/{kind}/{value}".encode()).hexdigest()
    return "1220" + digest


class ExpertService:
    def __init__(
        self,
        *,
        host: ExpertHost,
        p2p: P2PService,
        account: SigningKey,
        host_sign: Callable[[bytes], bytes],
        settings: ExpertSettings,
        wall_clock: Callable[[], float],
        payer: Payer | None = None,
    ) -> None:
        self.host = host
        self.p2p = p2p
        self.account = account
        self._host_sign = host_sign
        self.settings = settings
        self._wall = wall_clock
        self.directory = Directory()
        self._channels: dict[str, InferChannel] = {}
        self._nursery: trio.Nursery | None = None
        self._republish = trio.Event()
        self._changed = trio.Event()
        self._joined = trio.Event()
        self._provided = trio.Event()
        self._current: Announcement | None = None
        self.inference = Inference(
            host=host,
            directory=self.directory,
            channel_for=self._channel_for,
            local_peer=p2p.peer_id,
            wall_ms=self._now_ms,
            directory_changed=self.directory_changed,
            lookup=self.discover,
            payer=payer,
        )

    def _now_ms(self) -> int:
        return int(self._wall() * 1000)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.p2p.set_handler(ids.INFER, self.host.serve)
        self.p2p.set_handler(ids.ANNOUNCE, self._serve_announcement)
        subscription = await self.p2p.subscribe(ids.TOPIC_EXPERTS)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.host.run)
            nursery.start_soon(self._reader, subscription)
            nursery.start_soon(self._announcer)
            if self.host.experts:
                nursery.start_soon(self._provider)
            with self.p2p.member_events(joined=self._on_joined, left=self._forget):
                task_status.started(self)
                await trio.sleep_forever()

    def _channel_for(self, peer: str) -> InferChannel:
        channel = self._channels.get(peer)
        if channel is None:
            assert self._nursery is not None
            payer = self.inference.payer
            channel = self._channels[peer] = InferChannel(
                peer,
                self.p2p.open_stream,
                self._nursery,
                on_receipts=payer.receipts if payer is not None else None,
            )
        return channel

    def _on_joined(self, peer: str) -> None:
        self._republish.set()
        self._joined.set()

    def _forget(self, peer: str) -> None:
        """A provider whose connection dropped leaves the directory at once."""
        if self.directory.forget(peer):
            log.info("provider %s left", peer[-8:])
        channel = self._channels.pop(peer, None)
        if channel is not None and self._nursery is not None:
            self._nursery.start_soon(channel.aclose)

    def offers(self) -> list[Offer]:
        return [
            Offer(
                expert_id=e.expert_id,
                domain=e.manifest.domain,
                kind=e.manifest.kind,
                price_per_1k=self.settings.price_per_1k,
                capacity=self.host.limits.queue_per_expert,
                queue_depth=self.host.queue_depth(e.expert_id),
                latency_us=int(self.host.latency_s.get(e.expert_id, 0.0) * 1e6),
            )
            for e in self.host.experts.values()
        ]

    async def _announcer(self) -> None:
        while True:
            if self.host.experts:
                await self._announce()
            with trio.move_on_after(self.settings.announce_every_s):
                await self._republish.wait()
            self._republish = trio.Event()

    async def _announce(self) -> None:
        now_ms = self._now_ms()
        try:
            announcement = Announcement.create(
                peer_id=self.p2p.peer_id,
                account=self.account,
                host_sign=self._host_sign,
                addrs=self.p2p.addrs()[:8],
                offers=self.offers(),
                seq=now_ms,
                issued_ms=now_ms,
                ttl_ms=int(self.settings.ttl_s * 1000),
            )
        except LocalProtocolError as exc:
            log.error("cannot announce our experts: %s", exc)
            return
        self._current = announcement
        try:
            await self.p2p.publish(ids.TOPIC_EXPERTS, announcement.encode())
        except NetworkError as exc:
            log.debug("announce failed: %s", exc)

    async def _reader(self, subscription: Any) -> None:
        from libp2p.peer.id import ID

        expire_at = trio.current_time() + EXPIRE_EVERY_S
        while True:
            with trio.move_on_at(expire_at):
                message = await subscription.get()
                # Strict signing: `from_id` is the peer that signed this message, whoever
                # relayed it, so a bad record is charged to its author.
                self._take(message.data, sender=ID(message.from_id).to_base58())
                continue
            self.directory.expire(self._now_ms())
            expire_at = trio.current_time() + EXPIRE_EVERY_S

    def _take(self, data: bytes, *, sender: str, author: str | None = None) -> bool:
        """Verify announcement bytes and put them in the directory; True if new there.
        `sender` handed them to us; `author`, if given, is who they must be of."""
        try:
            announcement = Announcement.decode(data, now_ms=self._now_ms(), peer=sender)
            if author is not None and announcement.peer_id != author:
                raise RemoteProtocolError(
                    f"asked for the announcement of {author}, got {announcement.peer_id}",
                    peer=sender,
                )
        except RemoteProtocolError as exc:
            log.info("dropped an announcement from %s: %s", sender, exc)
            self.p2p.peers.on_misbehaved(sender, str(exc))
            return False
        if announcement.peer_id == self.p2p.peer_id:
            return False
        if not announcement.apply_to(self.directory, self._now_ms()):
            return False
        self._changed.set()
        self._changed = trio.Event()
        return True

    async def directory_changed(self) -> None:
        """Return at the next change an announcement made to the directory."""
        await self._changed.wait()

    async def _provider(self) -> None:
        """Provide at start, and again after peers join while too few DHT peers hold our
        records (see PROVIDE_REPLICAS); py-libp2p itself republishes only every 22 h."""
        while True:
            reached = await self._provide()
            last = trio.current_time()
            while True:
                await self._joined.wait()
                self._joined = trio.Event()
                if reached < PROVIDE_REPLICAS or trio.current_time() - last >= REPROVIDE_EVERY_S:
                    break
            await trio.sleep(REPROVIDE_BATCH_S)

    async def _provide(self) -> int:
        """Register with the DHT as a provider of each expert and domain we serve; return
        the size of our routing table if some peer took a record, else 0."""
        assert self.p2p.dht is not None
        keys = {dht_key("expert", e.expert_id) for e in self.host.experts.values()}
        keys |= {dht_key("domain", e.manifest.domain) for e in self.host.experts.values()}
        reached = False
        for key in sorted(keys):
            try:
                with trio.move_on_after(PROVIDE_TIMEOUT_S), map_libp2p_errors():
                    reached |= await self.p2p.dht.provide(key)
            except NetworkError as exc:
                log.debug("DHT provide %s failed: %s", key, exc)
        if not reached:
            return 0
        self._provided.set()
        return self.p2p.dht.get_routing_table_size()

    async def wait_provided(self) -> None:
        """Return once another DHT node holds our provider records."""
        await self._provided.wait()

    async def discover(self, expert_id: str | None = None, domain: str | None = None) -> int:
        """Find providers of `expert_id` (else of `domain`) in the DHT, dial them and fetch
        their announcements into the directory; return how many were new there.

        For a call the directory has no provider for: a node outside the provider's gossip
        mesh learns of it this way. Network failures are logged, not raised."""
        if expert_id is not None:
            key = dht_key("expert", expert_id)
        elif domain is not None:
            key = dht_key("domain", domain)
        else:
            raise ValueError("discover needs an expert id or a domain")
        assert self.p2p.dht is not None
        try:
            with map_libp2p_errors():
                found = await self.p2p.dht.find_providers(key, LOOKUP_PROVIDERS)
        except NetworkError as exc:
            log.info("DHT lookup of %s failed: %s", expert_id or domain, exc)
            return 0
        known = {listing.provider for listing in self.directory.providers(now_ms=self._now_ms())}
        added = 0

        async def fetch(peer: str, addrs: list[str]) -> None:
            nonlocal added
            added += await self._fetch_announcement(peer, addrs)

        async with trio.open_nursery() as nursery:
            for info in found:
                peer = info.peer_id.to_base58()
                if peer != self.p2p.peer_id and peer not in known:
                    nursery.start_soon(fetch, peer, [str(a) for a in info.addrs])
        log.info("DHT lookup of %s: %d providers, %d new", expert_id or domain, len(found), added)
        return added

    async def _fetch_announcement(self, peer: str, addrs: list[str]) -> bool:
        """Dial a provider found in the DHT (unless it is a member already) and take its
        current announcement; True if that was new in the directory."""
        try:
            with trio.fail_after(FETCH_TIMEOUT_S):
                await self._reach(peer, addrs)
                raw = await self.p2p.open_stream(peer, ids.ANNOUNCE)
                stream = FramedStream(raw, ANNOUNCE_FRAME)
                try:
                    body = await stream.receive()
                finally:
                    await stream.aclose()
                if body is None:
                    return False  # it hosts nothing now
                if body["t"] != "announce" or body["v"] != 1:
                    raise RemoteProtocolError(f"unexpected message {body['t']!r}", peer=peer)
                data = field(body, "a", bytes, peer=peer, max_len=announce.MAX_BYTES)
        except RemoteProtocolError as exc:
            log.info("provider %s from the DHT broke the protocol: %s", peer[-8:], exc)
            self.p2p.peers.on_misbehaved(peer, str(exc))
            return False
        except (SwarmError, trio.TooSlowError) as exc:
            log.info("provider %s from the DHT: %s", peer[-8:], exc or "timed out")
            return False
        return self._take(data, sender=peer, author=peer)

    async def _reach(self, peer: str, addrs: list[str]) -> None:
        """Be connected to `peer` as a member: dial its addresses in turn until one works."""
        entry = self.p2p.peers.get(peer)
        if entry is not None and entry.member and entry.connected:
            return
        failure: SwarmError = NetworkError("the DHT gave no address", peer=peer)
        for addr in addrs:
            try:
                await self.p2p.connect(addr if "/p2p/" in addr else f"{addr}/p2p/{peer}")
                return
            except SwarmError as exc:
                failure = exc
        raise failure

    async def _serve_announcement(self, stream: Stream) -> None:
        """`/swarm/announce/1.0.0`: send our current announcement, or close at once if we
        serve nothing; the handler's adapter closes the stream."""
        current = self._current
        if current is not None and current.expires_ms > self._now_ms():
            await FramedStream(stream).send({"t": "announce", "v": 1, "a": current.encode()})

    def listing(self) -> dict[str, Any]:
        """Hosted and known experts, for `swarm-node experts`."""
        local = [
            {
                "expert_id": o.expert_id,
                "domain": o.domain,
                "kind": o.kind,
                "price_per_1k": o.price_per_1k,
                "queue_depth": o.queue_depth,
                "latency_ms": o.latency_us / 1000,
                "provider": "local",
            }
            for o in self.offers()
        ]
        remote = []
        for listing in self.directory.providers(now_ms=self._now_ms()):
            entry = self.p2p.peers.get(listing.provider)
            stats = listing.stats
            remote.append(
                {
                    "expert_id": listing.offer.expert_id,
                    "domain": listing.offer.domain,
                    "kind": listing.offer.kind,
                    "price_per_1k": listing.offer.price_per_1k,
                    "queue_depth": listing.offer.queue_depth,
                    "latency_ms": listing.offer.latency_us / 1000,
                    "provider": listing.provider,
                    "provider_name": entry.name if entry else "",
                    "measured_ms": (
                        round(stats.latency_s * 1000, 3)
                        if stats and stats.latency_s is not None
                        else None
                    ),
                    "success": round(stats.success_rate, 3) if stats else None,
                    "expires_ms": listing.expires_ms,
                }
            )
        return {"local": local, "remote": remote}
