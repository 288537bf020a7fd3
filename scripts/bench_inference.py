"""Benchmark: peer-to-peer inference, next to its floor, all in one run.

1. Two nodes on loopback: the provider a daemon (`swarm-node mesh`), the caller in this
   process; the caller asks for the built-in ffn expert at D=64, batch 1, through the same
   client API `swarm-node infer` uses, remote only: sequential p50/p99, then calls per
   second with 16 concurrent callers. The floor, measured the same way: a plain trio TCP
   round trip of the same msgpack payload and numpy forward pass, its server in a process of
   its own, its caller in this one (beside the caller node, idle during the floor's turns);
   its sequential calls and ours are taken in turns of 50, side by side, so the ratio
   compares the same moments of the machine's load. For reference (`*_1proc`), both nodes
   and both floor ends in one process, one trio loop, as the tests run them (a node is a
   daemon with a loop of its own; two in one share one core).
2. A 10-process mesh (`swarm-node mesh`): a node joins, and we time until every node lists
   its offers (announce); then it is killed with SIGKILL and we time until it has left
   every directory (evict).
3. A 3-process mesh: 32 generated tokens asked through a daemon's local API, as `swarm-node
   infer` does (p50 of the call, and of the whole CLI process for reference).

Prints one JSON object: p50_ms, p99_ms, calls_per_s, concurrency, floor_p50_ms,
ratio_to_floor, announce_p99_s, evict_s, infer32_p50_ms (and a few more).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import experts  # noqa: E402
from node.client import Client  # noqa: E402
from node.daemon import Node  # noqa: E402
from node.datadir import Identity, load_genesis, write_node  # noqa: E402
from node.hosting import FFN_DIM, FFN_SEED, ffn64_id  # noqa: E402
from protocols.framing import HEADER, FrameDecoder  # noqa: E402
from protocols.inference import Answer  # noqa: E402
from tests.factory import connect_all, make_node_dirs, running_nodes  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


BLOCK = 50  # sequential calls in a row to one side before the other's turn


async def two_nodes(calls: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        dirs = make_node_dirs(Path(tmp), 2, hosts=[[], ["ffn64"]])
        async with running_nodes(dirs) as (caller, provider):
            await connect_all([caller, provider])
            latencies = await sequential(caller, calls)
            rate = await call_rate(caller, calls * 2, concurrency)
    return {
        "p50_ms_1proc": pct(latencies, 0.5),
        "p99_ms_1proc": pct(latencies, 0.99),
        "calls_per_s_1proc": rate,
    }


ROWS = np.random.default_rng(0).standard_normal((1, FFN_DIM)).astype(np.float32)
EXPERT = ffn64_id()  # computed once: it hashes the expert's weights


async def call(caller: Node) -> Answer:
    """One remote ffn64 call through the client API `swarm-node infer` uses."""
    return await caller.experts.inference.tensor(EXPERT, ROWS, remote_only=True)


async def sequential(caller: Node, calls: int) -> list[float]:
    """`calls` ffn64 calls one after another (latencies in ms)."""
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        await call(caller)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


async def call_rate(caller: Node, calls: int, concurrency: int) -> float:
    """Calls per second of `concurrency` callers making `calls` in all."""
    done = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while done < calls:
            done += 1
            await call(caller)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return done / (time.perf_counter() - start)


async def two_processes(calls: int, concurrency: int) -> dict[str, float]:
    """The calls with the provider a daemon in its own process (its own loop, its own core),
    and the floor with its server in a process of its own, measured side by side: their
    sequential calls are taken in turns of `BLOCK`, so that both see the machine's load of
    the same moments (measured one after the other, a drift in between moved the ratio)."""
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp) / "mesh"
        cli("mesh", "--nodes", "1", "--dir", str(mesh), "--detach", "--free")
        server = subprocess.Popen(
            [sys.executable, __file__, "--floor-server"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert server.stdout is not None
            port = int(await trio.to_thread.run_sync(server.stdout.readline))
            provider = json.loads((mesh / "mesh.json").read_text())["nodes"][0]
            genesis = load_genesis(mesh / "genesis.json")
            data_dir = Path(tmp) / "caller"
            write_node(data_dir, Identity.generate(), name="caller", genesis=genesis)
            async with running_nodes([data_dir]) as (caller,), await FloorClient.open(port) as fc:
                await caller.p2p.connect(provider["addr"])
                await sequential(caller, 1)  # warm: the stream is open
                await fc.calls(1)
                ours: list[float] = []
                floor_ms: list[float] = []
                for _ in range(max(1, calls // BLOCK)):
                    ours += await sequential(caller, BLOCK)
                    floor_ms += await fc.calls(BLOCK)
                rate = await call_rate(caller, calls * 2, concurrency)
        finally:
            server.kill()
            server.wait()
            subprocess.run(
                [sys.executable, "-m", "node", "mesh", "stop", "--dir", str(mesh)],
                capture_output=True,
                check=False,
            )
    return {
        "p50_ms": pct(ours, 0.5),
        "p99_ms": pct(ours, 0.99),
        "calls_per_s": rate,
        "floor_p50_ms": pct(floor_ms, 0.5),
    }


async def floor_serve(stream: trio.SocketStream) -> None:
    """The floor's server: msgpack in, the ffn pass, msgpack out."""
    ffn = experts.build_ffn(FFN_DIM, seed=FFN_SEED)
    decoder = FrameDecoder()
    while data := await stream.receive_some(65536):
        decoder.feed(data)
        while (payload := decoder.next_frame()) is not None:
            body = msgpack.unpackb(payload)
            x = np.frombuffer(body["data"], dtype="<f4").reshape(body["rows"], body["cols"])
            out = ffn.forward(x).astype("<f4").tobytes()
            reply = msgpack.packb({"t": "array", "id": body["id"], "data": out})
            await stream.send_all(HEADER.pack(len(reply)) + reply)


async def floor_server() -> None:
    """`--floor-server`: serve the floor on a free port, print it, run until killed."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, floor_serve, 0, host="127.0.0.1"))
        print(listeners[0].socket.getsockname()[1], flush=True)


class FloorClient:
    """The floor's caller: a plain trio TCP round trip of the same msgpack payload."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.sent = 0

    @classmethod
    async def open(cls, port: int) -> FloorClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def __aenter__(self) -> FloorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def calls(self, count: int) -> list[float]:
        latencies = []
        for _ in range(count):
            self.sent += 1
            start = time.perf_counter()
            body = msgpack.packb(
                {"t": "tensor", "id": self.sent, "rows": 1, "cols": FFN_DIM, "data": ROWS.tobytes()}
            )
            await self.stream.send_all(HEADER.pack(len(body)) + body)
            while self.decoder.next_frame() is None:
                self.decoder.feed(await self.stream.receive_some(65536))
            latencies.append((time.perf_counter() - start) * 1000)
        return latencies


async def floor_in_process(calls: int) -> float:
    """The floor with both ends in this process, one trio loop (for the `*_1proc` figures)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, floor_serve, 0, host="127.0.0.1"))
        async with await FloorClient.open(listeners[0].socket.getsockname()[1]) as fc:
            await fc.calls(1)
            p50 = pct(await fc.calls(calls), 0.5)
        nursery.cancel_scope.cancel()
    return p50


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )


def listed_everywhere(clients: list[Client], peer: str, present: bool) -> bool:
    for client in clients:
        providers = {r["provider"] for r in client.experts()["remote"]}
        if (peer in providers) != present:
            return False
    return True


def mesh_announce_evict(nodes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp) / "mesh"
        cli(
            "mesh",
            "--nodes",
            str(nodes),
            "--dir",
            str(mesh),
            "--detach",
            "--scheme",
            "ed25519",
            "--free",
        )
        try:
            members = json.loads((mesh / "mesh.json").read_text())["nodes"]
            clients = [Client(Path(n["data_dir"])) for n in members]
            start = time.monotonic()
            joined = json.loads(cli("mesh", "join", "--dir", str(mesh), "--json").stdout)
            new = joined["nodes"][0]
            seen: list[float] = []
            pending = list(clients)
            while pending and time.monotonic() - start < 60:
                for client in list(pending):
                    if new["peer_id"] in {r["provider"] for r in client.experts()["remote"]}:
                        seen.append(time.monotonic() - start)
                        pending.remove(client)
                time.sleep(0.02)  # a benchmark's sampling interval, not a test's wait
            join_s = seen[0] if seen else float("nan")
            os.kill(new["pid"], signal.SIGKILL)
            killed = time.monotonic()
            while not listed_everywhere(clients, new["peer_id"], present=False):
                if time.monotonic() - killed > 60:
                    break
                time.sleep(0.02)
            evict = time.monotonic() - killed
        finally:
            subprocess.run(
                [sys.executable, "-m", "node", "mesh", "stop", "--dir", str(mesh)],
                capture_output=True,
                check=False,
            )
    # Announce latency: from the joined node's first announcement reaching one node (the
    # start of propagation) to the last node listing it.
    spread = [s - join_s for s in seen]
    return {
        "announce_p99_s": pct(spread, 0.99) if spread else float("nan"),
        "announce_first_s": join_s,
        "evict_s": evict,
    }


def infer32(calls: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Path(tmp) / "mesh"
        cli("mesh", "--nodes", "3", "--dir", str(mesh), "--detach")
        try:
            # node-1 asks; the language expert (which writes on to max_tokens) is on node-2
            client = Client(mesh / "node-1")
            prompt = "The module provides "
            client.infer(prompt, max_tokens=32, domain="language", remote_only=True)
            api = []
            for i in range(calls):
                start = time.perf_counter()
                doc = client.infer(
                    prompt,
                    max_tokens=32,
                    seed=i,
                    temperature=0.8,
                    domain="language",
                    remote_only=True,
                )
                api.append((time.perf_counter() - start) * 1000)
            whole = []
            for _ in range(5):
                start = time.perf_counter()
                cli(
                    "infer",
                    "--data-dir",
                    str(mesh / "node-1"),
                    prompt,
                    "--domain",
                    "language",
                    "--max-tokens",
                    "32",
                )
                whole.append((time.perf_counter() - start) * 1000)
        finally:
            subprocess.run(
                [sys.executable, "-m", "node", "mesh", "stop", "--dir", str(mesh)],
                capture_output=True,
                check=False,
            )
    return {
        "infer32_p50_ms": pct(api, 0.5),
        "infer32_cli_p50_ms": pct(whole, 0.5),
        "infer32_tokens_out": doc["tokens_out"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--mesh-nodes", type=int, default=10)
    parser.add_argument("--floor-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        trio.run(floor_server)
        return
    result: dict[str, Any] = trio.run(two_processes, args.calls, args.concurrency)
    result.update(trio.run(two_nodes, args.calls, args.concurrency))
    floor_p50_1proc = trio.run(floor_in_process, args.calls)
    result.update(
        concurrency=args.concurrency,
        ratio_to_floor=result["p50_ms"] / result["floor_p50_ms"],
        floor_p50_ms_1proc=floor_p50_1proc,
        ratio_to_floor_1proc=result["p50_ms_1proc"] / floor_p50_1proc,
    )
    result.update(mesh_announce_evict(args.mesh_nodes))
    result.update(infer32(50))
    result["targets"] = {
        "p50_ms": 1.0,
        "calls_per_s": 2500,
        "announce_p99_s": 2,
        "evict_s": 10,
        "infer32_p50_ms": 100,
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
