"""The py-libp2p workarounds, each on the behaviour it fixes."""

from __future__ import annotations

import trio
from libp2p.security.noise.io import NoiseTransportReadWriter

from protocols.libp2p_fixes import install_atomic_noise_writes


class Wire:
    """Stands for the socket under Noise: it takes a checkpoint before it sends, as trio's
    SocketStream does."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def write_msg(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.sent.append(data)


def noise_writer(wire: Wire) -> NoiseTransportReadWriter:
    writer = NoiseTransportReadWriter.__new__(NoiseTransportReadWriter)
    writer.read_writer = wire  # type: ignore[assignment]
    nonces = iter(range(1_000))
    # Each call uses up a nonce, as the real cipher does.
    writer.encrypt = lambda data: bytes([next(nonces)]) + data  # type: ignore[method-assign]
    return writer


async def test_a_cancelled_noise_write_still_sends_what_it_encrypted() -> None:
    install_atomic_noise_writes()
    wire = Wire()
    writer = noise_writer(wire)
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()  # cancelled before the write even starts
            await writer.write_msg(b"first")
        await writer.write_msg(b"second")
    # the caller still sees its cancellation, and the peer gets every nonce in order
    assert scope.cancelled_caught
    assert wire.sent == [b"\x00first", b"\x01second"]
