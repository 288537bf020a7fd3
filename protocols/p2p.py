"""The libp2p side of a node: host, gossipsub, Kademlia, hello, ping, bootstrap and dials.

py-libp2p gives the transport (TCP, Noise, Yamux), identify, ping, gossipsub and the DHT;
this service wires them, runs our hello on every new connection, keeps the peer table, and
redials bootstrap peers with backoff. It is built by the composition root from plain values.
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from dag.errors import RemoteProtocolError, SwarmError
from protocols import ids
from protocols.errors import NetworkError, PeerRefused, PeerTimeout, map_libp2p_errors
from protocols.hello import MAX_KNOWN, Hello, initiate_hello, serve_hello
from protocols.libp2p_fast import (
    install_batched_yamux_window_updates,
    install_buffered_tcp_reads,
    install_direct_noise_writes,
    install_fast_yamux_writes,
    install_lean_secure_reads,
    install_lean_stream_reads,
    install_lean_yamux_frames,
    install_quick_stream_locks,
    install_yamux_settings_read_once,
)
from protocols.libp2p_fixes import (
    guard_pubsub_streams,
    install_atomic_noise_writes,
    install_clean_dht_stream_ends,
    install_signed_record_cache,
)
from protocols.peers import PeerEntry, PeerTable
from protocols.stream import Libp2pStream, Stream

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs shadow trio's own types for mypy.
    from trio_typing import TaskStatus

log = logging.getLogger("swarm.p2p")

HELLO_TIMEOUT_S = 10.0
DIAL_TIMEOUT_S = 10.0
PING_TIMEOUT_S = 5.0
PING_BYTES = 32
CLOSE_TIMEOUT_S = 2.0
# The largest pubsub RPC we read: a vertex is kept under 256 KiB, and an RPC may batch a few.
MAX_PUBSUB_RPC = 4 << 20


@dataclass(frozen=True, slots=True)
class P2PSettings:
    listen: tuple[str, ...]
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    ping_interval_s: float = 5.0
    dial_backoff_max_s: float = 30.0
    # A live mesh needs a heartbeat of about a second; py-libp2p's default is 120 s.
    gossip_heartbeat_s: int = 1


StreamHandler = Callable[[Stream], Awaitable[None]]


class _Notifee(INotifee):
    """Forwards connection events from py-libp2p's swarm into our task."""

    def __init__(self, send: trio.MemorySendChannel[tuple[str, str]]) -> None:
        self._send = send

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._send.send_nowait(("up", conn.muxed_conn.peer_id.to_base58()))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        # Only a peer's last connection going away makes it disconnected.
        if not network.get_connections(peer):
            self._send.send_nowait(("down", peer.to_base58()))

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


class P2PService:
    """Owns the libp2p host and everything that runs on it."""

    def __init__(
        self, *, key_pair: KeyPair, hello: Hello, settings: P2PSettings, peers: PeerTable
    ) -> None:
        self._key_pair = key_pair
        self._hello = hello
        self.settings = settings
        self.peers = peers
        self.peer_id = ID.from_pubkey(key_pair.public_key).to_base58()
        self.host: IHost | None = None
        self.pubsub: Pubsub | None = None
        self.dht: KadDHT | None = None
        self._nursery: trio.Nursery | None = None
        self._hello_inflight: dict[str, trio.Event] = {}
        # Called with a peer id when a peer first passes hello (e.g. to sync the DAG from it).
        self.on_member_joined: list[Callable[[str], None]] = []
        # Called with a peer id when a member's last connection closes.
        self.on_member_left: list[Callable[[str], None]] = []

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[P2PService] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the host until cancelled; then close every connection before stopping it.

        Cancelling py-libp2p's tasks leaves their sockets open, so peers would think us
        alive until the process exits. The stack therefore runs in a shielded scope that
        outside cancellation cannot reach: on cancellation we first disconnect every peer
        (peers see us leave at once), then cancel the stack ourselves.
        """
        stack_scope = trio.CancelScope(shield=True)
        stopped = trio.Event()

        async def stack(task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with stack_scope:
                    await self._run_stack(task_status)
            finally:
                stopped.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(stack)
            task_status.started(self)
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await self._disconnect_all()
                    stack_scope.cancel()
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await stopped.wait()

    async def _disconnect_all(self) -> None:
        if self.host is None:
            return
        for peer in list(self.host.get_network().connections):
            with contextlib.suppress(Exception):
                await self.host.disconnect(peer)

    async def _run_stack(self, task_status: TaskStatus[None]) -> None:
        listen = [multiaddr.Multiaddr(a) for a in self.settings.listen]
        # Who we stay connected to is decided here (bootstrap loops, peer exchange);
        # py-libp2p's auto-connector would otherwise redial every known peer every 30 s.
        connections = ConnectionConfig(min_connections=0, low_watermark=0)
        install_atomic_noise_writes()
        install_batched_yamux_window_updates()
        install_yamux_settings_read_once()
        install_quick_stream_locks()
        install_fast_yamux_writes()
        install_buffered_tcp_reads()
        install_lean_secure_reads()
        install_lean_yamux_frames()
        install_lean_stream_reads()
        install_direct_noise_writes()
        install_clean_dht_stream_ends()
        host = new_host(
            key_pair=self._key_pair,
            listen_addrs=listen,
            enable_mDNS=self.settings.mdns,
            connection_config=connections,
        )
        events_send, events_recv = trio.open_memory_channel[tuple[str, str]](1024)
        async with AsyncExitStack() as stack:
            try:
                with map_libp2p_errors():
                    await stack.enter_async_context(host.run(listen))
            except NetworkError as exc:
                raise SwarmError(
                    f"cannot listen on {', '.join(self.settings.listen)}: {exc}"
                ) from exc
            self.host = host
            install_signed_record_cache()
            router = GossipSub(
                # meshsub 1.2 makes every receiver send IDONTWANT to its whole mesh for
                # every message: more control traffic than our vertices save on loopback.
                protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
                degree=3,
                degree_low=2,
                degree_high=4,
                heartbeat_interval=self.settings.gossip_heartbeat_s,
            )
            self.pubsub = Pubsub(
                host, router, strict_signing=True, max_inbound_rpc_size=MAX_PUBSUB_RPC
            )
            guard_pubsub_streams(host, self.pubsub, router.protocols)
            await stack.enter_async_context(background_trio_service(self.pubsub))
            await self.pubsub.wait_until_ready()
            self.dht = KadDHT(host, DHTMode.SERVER)
            await stack.enter_async_context(background_trio_service(self.dht))
            host.set_stream_handler(TProtocol(ids.HELLO), self._on_hello_stream)
            host.get_network().register_notifee(_Notifee(events_send))
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._connection_events, events_recv)
                nursery.start_soon(self._ping_loop)
                for addr in self.settings.bootstrap:
                    nursery.start_soon(self._bootstrap_loop, addr)
                task_status.started()
                await trio.sleep_forever()

    @contextlib.contextmanager
    def member_events(
        self,
        *,
        joined: Callable[[str], None] | None = None,
        left: Callable[[str], None] | None = None,
    ) -> Iterator[None]:
        """Call `joined(peer)` / `left(peer)` as members come and go, while the block runs
        (a service that has stopped must not be called from the host that outlives it)."""
        pairs = [(self.on_member_joined, joined), (self.on_member_left, left)]
        for callbacks, callback in pairs:
            if callback is not None:
                callbacks.append(callback)
        try:
            yield
        finally:
            for callbacks, callback in pairs:
                if callback is not None:
                    callbacks.remove(callback)

    def addrs(self) -> list[str]:
        assert self.host is not None
        return [str(a) for a in self.host.get_addrs()]

    def set_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve `protocol` with `handler`, which sees only our `Stream` interface."""
        assert self.host is not None

        async def adapter(stream: INetStream) -> None:
            peer = stream.muxed_conn.peer_id.to_base58()
            try:
                await handler(Libp2pStream(stream, peer))
            except (SwarmError, trio.TooSlowError) as exc:
                log.info("%s from %s: %s", protocol, peer[-8:], exc)
            except Exception as exc:  # noqa: BLE001 - one stream must not end the node
                # py-libp2p ends the process on anything a handler lets escape; a bug in one
                # of ours is logged loudly instead (with its traceback) and the stream closed.
                log.exception("%s handler failed for %s: %s", protocol, peer[-8:], exc)
            finally:
                await Libp2pStream(stream, peer).aclose()

        self.host.set_stream_handler(TProtocol(protocol), adapter)

    async def open_stream(self, peer_id: str, protocol: str) -> Libp2pStream:
        assert self.host is not None
        with map_libp2p_errors(peer_id):
            raw = await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        return Libp2pStream(raw, peer_id)

    # -- dialing and hello ------------------------------------------------------------------

    async def connect(self, addr: str) -> PeerEntry:
        """Dial `addr` (a /p2p/ multiaddr), say hello, and return the peer's entry.

        Raises `PeerRefused` when the peer is on another chain, `NetworkError` or
        `PeerTimeout` when it cannot be reached.
        """
        assert self.host is not None
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        except Exception as exc:  # multiaddr raises several unrelated types
            raise SwarmError(f"bad multiaddr {addr!r}: {exc}") from None
        peer = info.peer_id.to_base58()
        if peer == self.peer_id:
            raise SwarmError(f"{addr} is this node itself")
        # py-libp2p refuses, for 60 s, to redial a peer whose addresses all failed once; our
        # callers (bootstrap backoff, the API) decide when to retry, so lift that block.
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(info.peer_id)
        try:
            with trio.fail_after(DIAL_TIMEOUT_S), map_libp2p_errors(peer):
                await self.host.connect(info)
        except trio.TooSlowError:
            raise PeerTimeout(f"dial {addr} timed out", peer=peer, after_s=DIAL_TIMEOUT_S) from None
        await self.ensure_hello(peer)
        entry = self.peers.get(peer)
        if entry is None or not entry.member:
            reason = entry.refused if entry else ""
            raise PeerRefused(reason or f"peer {peer} did not complete hello", peer=peer)
        return entry

    async def ensure_hello(self, peer: str) -> None:
        """Run hello with a connected peer once; concurrent callers wait for the same run."""
        entry = self.peers.get(peer)
        if entry is not None and entry.member:
            return
        inflight = self._hello_inflight.get(peer)
        if inflight is not None:
            await inflight.wait()
            return
        done = self._hello_inflight[peer] = trio.Event()
        try:
            await self._say_hello(peer)
        finally:
            del self._hello_inflight[peer]
            done.set()

    def _current_hello(self) -> Hello:
        known = [a for e in self.peers.connected_members() for a in e.addrs[:1]]
        random.shuffle(known)
        return replace(self._hello, addrs=tuple(self.addrs()), known=tuple(known[:MAX_KNOWN]))

    async def _say_hello(self, peer: str) -> None:
        try:
            with trio.fail_after(HELLO_TIMEOUT_S):
                stream = await self.open_stream(peer, ids.HELLO)
                try:
                    theirs = await initiate_hello(stream, self._current_hello())
                finally:
                    await stream.aclose()
        except PeerRefused as exc:
            await self._refuse(peer, str(exc))
        except (NetworkError, RemoteProtocolError, trio.TooSlowError) as exc:
            # Not a swarm node (a plain libp2p peer), or it went away: stays a non-member.
            log.debug("hello with %s failed: %s", peer, exc)
        else:
            await self._admit(peer, theirs)

    async def _on_hello_stream(self, raw: INetStream) -> None:
        peer = raw.muxed_conn.peer_id.to_base58()
        stream = Libp2pStream(raw, peer)
        try:
            with trio.fail_after(HELLO_TIMEOUT_S):
                theirs = await serve_hello(stream, self._current_hello())
        except PeerRefused as exc:
            await self._refuse(peer, str(exc))
        except (NetworkError, RemoteProtocolError, trio.TooSlowError) as exc:
            log.info("bad hello from %s: %s", peer, exc)
        else:
            await self._admit(peer, theirs)
        finally:
            await stream.aclose()

    async def _admit(self, peer: str, theirs: Hello) -> None:
        first = not (self.peers.get(peer) or PeerEntry(peer)).member
        self.peers.on_member(
            peer,
            name=theirs.name,
            account=theirs.binding.account_key.account_id.hex(),
            addrs=[a for a in theirs.addrs if a.endswith(peer)],
        )
        if first:
            log.info("peer %s (%s) joined", theirs.name, peer)
            for callback in self.on_member_joined:
                callback(peer)
            if self._nursery is not None:
                self._nursery.start_soon(self._ping, peer)  # an RTT from the first moment
        if self.dht is not None:
            await self.dht.add_peer(ID.from_base58(peer))
        for addr in theirs.known:
            self._dial_soon(addr)

    async def _refuse(self, peer: str, reason: str) -> None:
        log.warning("refused peer %s: %s", peer, reason)
        self.peers.on_refused(peer, reason)
        assert self.host is not None
        with trio.move_on_after(2):
            try:
                with map_libp2p_errors(peer):
                    await self.host.disconnect(ID.from_base58(peer))
            except NetworkError:
                pass

    def _dial_soon(self, addr: str) -> None:
        """Dial a peer learned by exchange, unless it is us or already connected."""
        peer = addr.rsplit("/p2p/", 1)[-1]
        entry = self.peers.get(peer)
        if peer == self.peer_id or (entry is not None and (entry.connected or entry.refused)):
            return
        if self._nursery is not None:
            self._nursery.start_soon(self._dial_quietly, addr)

    async def _dial_quietly(self, addr: str) -> None:
        try:
            await self.connect(addr)
        except SwarmError as exc:
            log.debug("dial %s failed: %s", addr, exc)

    # -- background loops -------------------------------------------------------------------

    async def _connection_events(self, events: trio.MemoryReceiveChannel[tuple[str, str]]) -> None:
        assert self._nursery is not None
        async for kind, peer in events:
            if kind == "up":
                self.peers.on_connected(peer)
                self._nursery.start_soon(self.ensure_hello, peer)
            else:
                self.peers.on_disconnected(peer)
                entry = self.peers.get(peer)
                if entry is not None and entry.member:
                    log.info("peer %s (%s) disconnected", entry.name, peer)
                    for callback in self.on_member_left:
                        callback(peer)

    async def _bootstrap_loop(self, addr: str) -> None:
        """Keep a bootstrap peer connected; an unreachable one is retried with backoff."""
        delay = 0.25
        peer = addr.rsplit("/p2p/", 1)[-1]
        while True:
            try:
                await self.connect(addr)
            except PeerRefused as exc:
                log.warning("bootstrap %s refused: %s", addr, exc)
                delay = self.settings.dial_backoff_max_s
            except SwarmError as exc:
                log.debug("bootstrap %s unreachable (%s); retrying in %.1f s", addr, exc, delay)
            else:
                delay = 0.25
                await self.peers.wait_disconnected(peer)
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.settings.dial_backoff_max_s)

    async def _ping_loop(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for peer in self.peers.connected_ids():
                    nursery.start_soon(self._ping, peer)
            await trio.sleep(self.settings.ping_interval_s)

    async def _ping(self, peer: str) -> None:
        """One round of the standard /ipfs/ping/1.0.0 protocol, timed with trio's clock."""
        payload = secrets.token_bytes(PING_BYTES)
        try:
            with trio.fail_after(PING_TIMEOUT_S):
                stream = await self.open_stream(peer, str(PING_ID))
                try:
                    start = trio.current_time()
                    await stream.send_all(payload)
                    echoed = b""
                    while len(echoed) < PING_BYTES:
                        chunk = await stream.receive_some(PING_BYTES - len(echoed))
                        if not chunk:
                            break
                        echoed += chunk
                    rtt_ms = (trio.current_time() - start) * 1000
                finally:
                    await stream.aclose()
        except (NetworkError, trio.TooSlowError) as exc:
            log.debug("ping %s failed: %s", peer, exc)
            return
        if echoed == payload:
            self.peers.on_rtt(peer, rtt_ms)

    # -- pubsub -----------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> Any:
        assert self.pubsub is not None
        return await self.pubsub.subscribe(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        assert self.pubsub is not None
        with map_libp2p_errors():
            await self.pubsub.publish(topic, data)
