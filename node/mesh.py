"""`swarm-node mesh`: a test mesh of real daemons, one process each, on 127.0.0.1.

The mesh dir holds one data dir per node, the shared `genesis.json`, and `mesh.json`
(who runs where, with pids), so `mesh stop` and `mesh join` work from another shell.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from dag.crypto import Scheme
from dag.errors import SwarmError
from dag.genesis import Genesis, GenesisAccount
from experts import DOMAINS
from node.client import Client
from node.datadir import GENESIS, Identity, load_genesis, write_atomic, write_node
from node.output import table

MESH_FILE = "mesh.json"
NODE_BALANCE = 1_000_000
NODE_STAKE = 100
STOP_GRACE_S = 5.0


class MeshError(SwarmError):
    pass


@dataclass
class MeshNode:
    name: str
    data_dir: Path
    peer_id: str
    addr: str
    pid: int = 0
    api_port: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "data_dir": str(self.data_dir),
            "peer_id": self.peer_id,
            "addr": self.addr,
            "pid": self.pid,
            "api_port": self.api_port,
        }


def hosted_by(index: int, count: int) -> list[str]:
    """Spread the six zoo domains over the mesh, round robin; every node also serves the
    small ffn64 tensor expert. Node 0 of 3 serves reasoning and mathematics, and so on."""
    return [d for j, d in enumerate(DOMAINS) if j % count == index % count] + ["ffn64"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int, data_dir: Path) -> bool:
    """True if `pid` is still our daemon for `data_dir` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(data_dir).encode() in cmdline


def _progress(text: str) -> None:
    end = "\r" if sys.stderr.isatty() else "\n"
    print(f"{text:<60}", end=end, file=sys.stderr, flush=True)


class Mesh:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.nodes: list[MeshNode] = []
        self.paid = True  # nodes serve their experts for pay (`mesh --free`: they do not)

    # -- files ------------------------------------------------------------------------------

    def load(self) -> None:
        path = self.root / MESH_FILE
        try:
            doc = json.loads(path.read_text())
            self.nodes = [
                MeshNode(
                    n["name"],
                    Path(n["data_dir"]),
                    n["peer_id"],
                    n["addr"],
                    n.get("pid", 0),
                    n.get("api_port", 0),
                )
                for n in doc["nodes"]
            ]
            self.paid = bool(doc.get("paid", True))
        except FileNotFoundError:
            raise MeshError(f"no mesh in {self.root} (start one with `swarm-node mesh`)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MeshError(f"{path} is unreadable or corrupt: {exc}") from None

    def save(self) -> None:
        genesis = load_genesis(self.root / GENESIS)
        write_atomic(
            self.root / MESH_FILE,
            json.dumps(
                {
                    "chain_id": genesis.chain_id,
                    "paid": self.paid,
                    "nodes": [n.row() for n in self.nodes],
                },
                indent=2,
            )
            + "\n",
        )

    def running(self) -> list[MeshNode]:
        return [n for n in self.nodes if n.pid and _alive(n.pid, n.data_dir)]

    def create(
        self, count: int, scheme: Scheme, preset: str = "default", *, paid: bool = True
    ) -> None:
        """Make `count` identities, one genesis holding all their accounts, and their dirs."""
        if count < 1:
            raise MeshError("a mesh needs at least one node")
        self.paid = paid
        identities = [Identity.generate(scheme) for _ in range(count)]
        names = [f"node-{i}" for i in range(count)]
        genesis = Genesis(
            chain_id=f"mesh-{secrets.token_hex(4)}",
            timestamp_ms=int(time.time() * 1000),
            accounts=tuple(
                GenesisAccount(
                    name,
                    ident.account.account_id,
                    ident.account.public_key,
                    NODE_BALANCE,
                    NODE_STAKE,
                    ident.peer_id,
                )
                for name, ident in zip(names, identities, strict=True)
            ),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.root / GENESIS, genesis.to_json())
        ports = [_free_port() for _ in range(count)]
        addrs = [
            f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id}"
            for port, ident in zip(ports, identities, strict=True)
        ]
        for i, ident in enumerate(identities):
            data_dir = self.root / names[i]
            write_node(
                data_dir,
                ident,
                name=names[i],
                genesis=genesis,
                listen=[f"/ip4/127.0.0.1/tcp/{ports[i]}"],
                bootstrap=[a for j, a in enumerate(addrs) if j != i],
                preset=preset,
                host=hosted_by(i, count),
                serve_paid=paid,
            )
            self.nodes.append(MeshNode(names[i], data_dir, ident.peer_id, addrs[i]))
        self.save()

    def add_node(self, scheme: Scheme) -> MeshNode:
        """A new node on the mesh's genesis (no stake, no balance), bootstrapped to all nodes."""
        genesis = load_genesis(self.root / GENESIS)
        ident = Identity.generate(scheme)
        index = len(self.nodes)
        while (self.root / f"node-{index}").exists():
            index += 1
        name = f"node-{index}"
        port = _free_port()
        node = MeshNode(
            name, self.root / name, ident.peer_id, f"/ip4/127.0.0.1/tcp/{port}/p2p/{ident.peer_id}"
        )
        write_node(
            node.data_dir,
            ident,
            name=name,
            genesis=genesis,
            listen=[f"/ip4/127.0.0.1/tcp/{port}"],
            bootstrap=[n.addr for n in self.nodes],
            host=[DOMAINS[index % len(DOMAINS)], "ffn64"],
            serve_paid=self.paid,
        )
        self.nodes.append(node)
        self.save()
        return node

    # -- processes --------------------------------------------------------------------------

    async def spawn(self, node: MeshNode, timeout_s: float) -> trio.Process:
        """Start one daemon in its own session and wait for its ready line."""
        read_fd, write_fd = os.pipe()
        log = open(node.data_dir / "node.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "node",
                    "start",
                    "--data-dir",
                    str(node.data_dir),
                    "--ready-fd",
                    str(write_fd),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(write_fd,),
                start_new_session=True,
            )
        finally:
            os.close(write_fd)
            log.close()
        ready = trio.lowlevel.FdStream(read_fd)
        data = b""
        with trio.move_on_after(timeout_s):
            while not data.endswith(b"\n"):
                chunk = await ready.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        await ready.aclose()
        if not data.endswith(b"\n"):
            process.kill()
            raise MeshError(f"{node.name} did not start; see {node.data_dir / 'node.log'}")
        status = json.loads(data)
        node.pid, node.api_port = process.pid, status["api_port"]
        return process

    async def wait_joined(self, nodes: list[MeshNode], members: int, timeout_s: float) -> None:
        """Wait until each of `nodes` has `members` connected member peers, showing progress."""
        joined = 0

        async def wait_one(node: MeshNode) -> None:
            nonlocal joined
            client = Client(node.data_dir)
            deadline = trio.current_time() + timeout_s
            while trio.current_time() < deadline:
                wait_s = min(deadline - trio.current_time(), 10.0)
                peers = await trio.to_thread.run_sync(
                    functools.partial(client.peers, wait_members=members, timeout_s=wait_s)
                )
                if sum(1 for p in peers if p["connected"] and p["member"]) >= members:
                    joined += 1
                    _progress(f"joining: {joined}/{len(nodes)} nodes see {members} peers")
                    return
            raise MeshError(
                f"{node.name} saw fewer than {members} peers after {timeout_s:.0f} s; "
                f"see {node.data_dir / 'node.log'}"
            )

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(wait_one, node)


def stop_pids(nodes: list[MeshNode]) -> int:
    """SIGTERM every running node, SIGKILL what is left after the grace time."""
    running = [n for n in nodes if n.pid and _alive(n.pid, n.data_dir)]
    for node in running:
        os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(_alive(n.pid, n.data_dir) for n in running):
        time.sleep(0.05)
    for node in running:
        if _alive(node.pid, node.data_dir):
            os.kill(node.pid, signal.SIGKILL)
    return len(running)


def print_nodes(nodes: list[MeshNode], as_json: bool, chain_id: str) -> None:
    if as_json:
        print(json.dumps({"chain_id": chain_id, "nodes": [n.row() for n in nodes]}, indent=2))
        return
    print(
        table(
            [[n.name, n.peer_id, n.addr.rsplit("/p2p/", 1)[0], str(n.api_port)] for n in nodes],
            ["NAME", "PEER ID", "MULTIADDR", "API PORT"],
        )
    )


# -- commands -----------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    mesh = Mesh(args.dir)
    if args.action == "stop":
        mesh.load()
        count = stop_pids(mesh.nodes)
        print(f"stopped {count} node(s) of the mesh in {mesh.root}")
        return 0
    if args.action == "join":
        mesh.load()
        return trio.run(_join, mesh, args)
    return trio.run(_start, mesh, args)


async def _start(mesh: Mesh, args: argparse.Namespace) -> int:
    if (mesh.root / MESH_FILE).exists():
        mesh.load()
        if mesh.running():
            raise MeshError(
                f"a mesh is already running in {mesh.root}; stop it with "
                f"`swarm-node mesh stop --dir {args.dir}`"
            )
        _progress(f"restarting the {len(mesh.nodes)}-node mesh in {mesh.root}")
    else:
        mesh.create(args.nodes, Scheme.parse(args.scheme), args.preset, paid=not args.free)
    processes: list[trio.Process] = []
    detached = False
    # Signals are ours from the first moment: Ctrl-C while the mesh comes up stops it too.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
                await _bring_up(mesh, args, processes)
                if args.detach:
                    detached = True
                    nursery.cancel_scope.cancel()
                else:
                    print("press Ctrl-C to stop the mesh", file=sys.stderr)
                    for process in processes:
                        nursery.start_soon(_watch, process, nursery.cancel_scope)
        finally:
            if not detached:
                with trio.CancelScope(shield=True):
                    mesh.load()  # nodes that joined meanwhile are stopped too
                    count = await trio.to_thread.run_sync(stop_pids, mesh.nodes)
                print(f"stopped {count} node(s)", file=sys.stderr)
    return 0


async def _bring_up(mesh: Mesh, args: argparse.Namespace, processes: list[trio.Process]) -> None:
    started = time.monotonic()
    async with trio.open_nursery() as nursery:

        async def spawn(node: MeshNode) -> None:
            processes.append(await mesh.spawn(node, args.timeout))
            _progress(f"starting: {len(processes)}/{len(mesh.nodes)} nodes up")

        for node in mesh.nodes:
            nursery.start_soon(spawn, node)
    mesh.save()
    await mesh.wait_joined(mesh.nodes, len(mesh.nodes) - 1, args.timeout)
    genesis = load_genesis(mesh.root / GENESIS)
    _progress(f"mesh of {len(mesh.nodes)} nodes formed in {time.monotonic() - started:.1f} s")
    print_nodes(mesh.nodes, args.json, genesis.chain_id)
    if args.detach:
        print(
            f"running in the background; stop with: swarm-node mesh stop --dir {args.dir}",
            file=sys.stderr,
        )


async def _cancel_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _watch(process: trio.Process, scope: trio.CancelScope) -> None:
    code = await process.wait()
    print(f"node pid {process.pid} exited with status {code}; stopping the mesh", file=sys.stderr)
    scope.cancel()


async def _join(mesh: Mesh, args: argparse.Namespace) -> int:
    running = mesh.running()
    if not running:
        raise MeshError(
            f"the mesh in {mesh.root} is not running; start it with "
            f"`swarm-node mesh --dir {args.dir}`"
        )
    node = mesh.add_node(Scheme.parse(args.scheme))
    await mesh.spawn(node, args.timeout)
    mesh.save()
    # Joined means both ways: the new node sees every node, and every node sees it.
    await mesh.wait_joined([node], len(running), args.timeout)
    await mesh.wait_joined(running, len(running), args.timeout)
    genesis = load_genesis(mesh.root / GENESIS)
    _progress(f"{node.name} joined the mesh")
    print_nodes([node], args.json, genesis.chain_id)
    return 0
