"""hello over in-memory streams: no sockets."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from dag.crypto import Scheme, SigningKey
from dag.errors import RemoteProtocolError
from protocols.errors import PeerRefused
from protocols.hello import Binding, Hello, check_hello, initiate_hello, serve_hello
from protocols.stream import FramedStream, memory_stream_pair


def make_hello(chain: str = "c1", scheme: Scheme = Scheme.ED25519) -> tuple[str, Hello]:
    kp = create_new_key_pair()
    peer = ID.from_pubkey(kp.public_key).to_base58()
    account = SigningKey.generate(scheme)
    binding = Binding.create(peer, account, kp.private_key.sign)
    return peer, Hello(
        chain,
        b"\x01" * 32,
        "0.1.0",
        f"node-{peer[-4:]}",
        binding,
        addrs=(f"/ip4/127.0.0.1/tcp/1/p2p/{peer}",),
    )


@pytest.mark.parametrize("scheme", list(Scheme))
async def test_hello_exchange_on_the_same_chain(scheme: Scheme) -> None:
    pa, ha = make_hello(scheme=scheme)
    pb, hb = make_hello(scheme=scheme)
    sa, sb = memory_stream_pair(pa, pb)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: dict[str, Hello] = {}

            async def serve() -> None:
                got["b saw"] = await serve_hello(sb, hb)

            nursery.start_soon(serve)
            got["a saw"] = await initiate_hello(sa, ha)
    assert got["a saw"] == hb and got["b saw"] == ha


async def test_another_genesis_is_refused_with_the_reason_on_both_sides() -> None:
    pa, ha = make_hello("chain-a")
    pb, hb = make_hello("chain-b")
    sa, sb = memory_stream_pair(pa, pb)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                with pytest.raises(PeerRefused, match="genesis mismatch"):
                    await serve_hello(sb, hb)

            nursery.start_soon(serve)
            with pytest.raises(PeerRefused, match="refused us: genesis mismatch.*chain-a.*chain-b"):
                await initiate_hello(sa, ha)


def test_a_binding_for_another_peer_or_account_is_rejected() -> None:
    pa, ha = make_hello()
    pb, hb = make_hello()
    check_hello(ha, hb, pb)
    # b's record presented as coming from a: the host signature does not match a's key
    with pytest.raises(PeerRefused, match="bad account binding"):
        check_hello(ha, hb, pa)
    # an account key swapped in: its signature no longer verifies
    forged = replace(
        hb, binding=replace(hb.binding, account_key=SigningKey.generate(Scheme.ED25519).public_key)
    )
    with pytest.raises(PeerRefused, match="bad account binding"):
        check_hello(ha, forged, pb)


async def test_malformed_hello_gets_a_refusal_frame() -> None:
    pa, _ = make_hello()
    pb, hb = make_hello()
    sa, sb = memory_stream_pair(pa, pb)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                with pytest.raises(RemoteProtocolError):
                    await serve_hello(sb, hb)

            nursery.start_soon(serve)
            framed = FramedStream(sa)
            await framed.send({"t": "hello", "v": 1, "chain": 7})
            reply = await framed.receive_required()
    assert reply["t"] == "refuse" and "wrong type" in reply["reason"]


async def test_stream_ending_inside_a_frame_is_a_protocol_error() -> None:
    sa, sb = memory_stream_pair()
    await sa.send_all(b"\x00\x00\x00\x10abc")
    await sa.aclose()
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        await FramedStream(sb).receive()


def test_a_host_signature_of_the_wrong_size_is_refused_cleanly() -> None:
    pa, ha = make_hello()
    pb, hb = make_hello()
    for bad in (b"", b"\x00" * 63, b"\x00" * 512):
        forged = replace(hb, binding=replace(hb.binding, host_sig=bad))
        with pytest.raises(PeerRefused, match="host signature must be 64 bytes"):
            check_hello(ha, forged, pb)
