"""`swarm-node`: the command line. Read commands talk to the daemon's local API.

Exit status: 0 done; 1 a command that failed (no daemon, a peer refused); 2 bad config or
bad arguments, before anything started.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from dag.crypto import Scheme
from dag.errors import SwarmError
from node import __version__
from node.config import ConfigError, check_multiaddr, check_ports_free, load_config
from node.datadir import KeyFileError, default_data_dir, init_data_dir, load_genesis
from node.output import emit, table

EXIT_FAIL = 1
EXIT_CONFIG = 2


# -- commands ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    genesis = load_genesis(Path(args.genesis)) if args.genesis else None
    for addr in args.bootstrap:
        check_multiaddr(addr, listen=False, key="--bootstrap")
    for addr in args.listen:
        check_multiaddr(addr, listen=True, key="--listen")
    info = init_data_dir(
        args.data_dir,
        name=args.name or args.data_dir.name,
        scheme=Scheme.parse(args.scheme),
        genesis=genesis,
        listen=args.listen or None,
        bootstrap=args.bootstrap,
        api_port=args.api_port,
    )
    emit(
        info,
        args.json,
        (
            f"created node {info['name']} in {info['data_dir']}\n"
            f"  peer id  {info['peer_id']}\n  account  {info['account']} ({info['scheme']})\n"
            f"  chain    {info['chain_id']}\n"
            f"start it with: swarm-node start --data-dir {info['data_dir']}"
        ),
    )
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    # trio and the node are imported here, not at the top: the client commands (status,
    # infer, ...) then start in well under 100 ms.
    import signal

    import trio

    from node.daemon import build_node
    from node.logs import setup_logging

    config = load_config(args.data_dir)
    extra = tuple(check_multiaddr(a, listen=False, key="--bootstrap") for a in args.bootstrap)
    config = replace(
        config, network=replace(config.network, bootstrap=config.network.bootstrap + extra)
    )
    if args.log_json:
        config = replace(config, log=replace(config.log, format="json"))
    setup_logging(config.log.format, config.log.level)
    check_ports_free(config)
    node = build_node(config)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(node.run)
                if args.ready_fd is not None:
                    with os.fdopen(args.ready_fd, "w") as ready:
                        ready.write(json.dumps(node.status()) + "\n")
                async for signum in signals:
                    import logging

                    logging.getLogger("swarm.node").info(
                        "%s: stopping", signal.Signals(signum).name
                    )
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return 0


def _client(args: argparse.Namespace) -> Any:
    from node.client import Client

    return Client(args.data_dir)


def cmd_status(args: argparse.Namespace) -> int:
    s = _client(args).status()
    emit(
        s,
        args.json,
        "\n".join(
            [
                f"{s['name']}  swarm-node {s['version']}  up {s['uptime_s']:.0f} s",
                f"  peer id   {s['peer_id']}",
                f"  account   {s['account']} ({s['scheme']})",
                f"  chain     {s['chain_id']} (genesis {s['genesis'][:16]})",
                f"  api       127.0.0.1:{s['api_port']}",
                f"  peers     {s['members_connected']} members connected "
                f"({s['peers_connected']} peers)",
                *[f"  listen    {a}" for a in s["addrs"]],
            ]
        ),
    )
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _client(args).peers()
    rows = [
        [
            p["name"] or "-",
            p["peer_id"],
            "yes" if p["connected"] else "no",
            "member" if p["member"] else ("refused" if p["refused"] else "-"),
            f"{p['rtt_ms']:.2f}" if p["rtt_ms"] is not None else "-",
        ]
        for p in peers
    ]
    emit(
        {"peers": peers},
        args.json,
        table(rows, ["NAME", "PEER ID", "CONNECTED", "STATE", "RTT MS"]) if rows else "no peers",
    )
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    check_multiaddr(args.multiaddr, listen=False, key="MULTIADDR")
    info = _client(args).connect(args.multiaddr)
    emit(info, args.json, f"connected to {info['name']} ({info['peer_id']})")
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    if args.amount <= 0:
        raise SwarmError("amount must be a positive number of credits")
    out = _client(args).transfer(args.account, args.amount, wait_s=args.wait)
    emit(
        out,
        args.json,
        f"transfer {out['tx_id'][:16]}: {out['amount']} credits to "
        f"{out['to'][:16]}: {out['status']}",
    )
    return 0 if out["status"] in ("submitted", "applied", "accepted", "pending") else EXIT_FAIL


def cmd_balance(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.wait_for:
        status = client.tx(args.wait_for, wait_s=args.timeout)["status"]
        if status not in ("applied", "failed", "rejected"):
            raise SwarmError(f"transaction {args.wait_for[:16]} is still {status} here")
    if args.all:
        doc = client.all_balances()
        rows, totals = doc["balances"], doc["totals"]
        emit(
            doc,
            args.json,
            table(
                [[r["name"], r["account"][:16], str(r["balance"])] for r in rows],
                ["NAME", "ACCOUNT", "BALANCE"],
            )
            + f"\nsupply {totals['supply']} = {totals['in_accounts']} in accounts"
            f" + {totals['locked']} locked in channels",
        )
        return 0
    out = client.balance(args.account)
    emit(out, args.json, f"{out['account']}  {out['balance']} credits")
    return 0


def cmd_dag(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "show":
        if not args.id:
            raise SwarmError("dag show needs a vertex id")
        v = client.vertex(args.id)
        emit(
            v,
            args.json,
            "\n".join(
                [
                    f"vertex {v['id']}  {v['status']}",
                    f"  author    {v['author']} ({v['scheme']})",
                    f"  time      {v['timestamp_ms']} ms, {v['bytes']} bytes",
                    *[f"  parent    {p}" for p in v["parents"]],
                    *[
                        f"  tx        {t['id'][:16]} {t['kind']} {t['payload']} "
                        f"nonce {t['nonce']}: {t['status']}"
                        for t in v["txs"]
                    ],
                ]
            ),
        )
        return 0
    s = client.dag_status()

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    fin, tfin = s["finality"], s["tx_finality"]
    emit(
        s,
        args.json,
        "\n".join(
            [
                f"vertices   {s['accepted']} accepted, {s['processing']} processing, "
                f"{s['rejected']} rejected",
                f"conflicts  {s['conflicts']} open; {s['polls']} polls in flight; "
                f"{s['mempool']} txs queued; {s['orphans']} vertices waiting for parents",
                f"finality   p50 {ms(fin['p50_s'])}, p99 {ms(fin['p99_s'])} over "
                f"{fin['count']} vertices (last {s['window_s']:.0f} s); "
                f"our txs p50 {ms(tfin['p50_s'])}, p99 {ms(tfin['p99_s'])}",
            ]
        ),
    )
    return 0


def cmd_mesh(args: argparse.Namespace) -> int:
    from node import mesh

    return mesh.run_command(args)


# -- parsing ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swarm-node", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"swarm-node {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the node's data dir (default: $SWARM_NODE_HOME or ~/.swarm-node)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create a node: keys, config, genesis")
    p.add_argument("--name", help="a name for people (default: the data dir's name)")
    p.add_argument(
        "--scheme", default="ml-dsa-65", help="account key: ml-dsa-65 (default) or ed25519"
    )
    p.add_argument("--genesis", help="join this chain: a genesis.json (default: a new solo chain)")
    p.add_argument("--listen", action="append", default=[], help="multiaddr to listen on")
    p.add_argument("--bootstrap", action="append", default=[], help="peer multiaddr to dial")
    p.add_argument("--api-port", type=int, default=0, help="local API port (0 picks one)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("start", parents=[common], help="run the node in the foreground")
    p.add_argument("--bootstrap", action="append", default=[], help="peer multiaddr to dial")
    p.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    p.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_start)

    for name, func, text in [
        ("status", cmd_status, "the running node's identity and state"),
        ("peers", cmd_peers, "the peer table"),
    ]:
        sub.add_parser(name, parents=[common], help=text).set_defaults(func=func)
    p = sub.add_parser("connect", parents=[common], help="dial a peer by multiaddr")
    p.add_argument("multiaddr")
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser("transfer", parents=[common], help="send credits to an account")
    p.add_argument("account", help="account id (hex) or a name in the genesis (node-1)")
    p.add_argument("amount", type=int)
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for acceptance")
    p.set_defaults(func=cmd_transfer)
    p = sub.add_parser("balance", parents=[common], help="an account's credits")
    p.add_argument("account", nargs="?", help="account id or genesis name (default: ours)")
    p.add_argument("--all", action="store_true", help="every account of the genesis")
    p.add_argument("--wait-for", metavar="TX", help="first wait until this node decided TX")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds --wait-for waits")
    p.set_defaults(func=cmd_balance)
    p = sub.add_parser("dag", parents=[common], help="the consensus DAG")
    p.add_argument("action", nargs="?", default="status", choices=["status", "show"])
    p.add_argument("id", nargs="?", help="a vertex id (show)")
    p.set_defaults(func=cmd_dag)

    from node.cli_experts import add_parsers

    add_parsers(sub, common)
    from node.cli_market import add_parsers as add_market_parsers

    add_market_parsers(sub, common)

    p = sub.add_parser("mesh", parents=[common], help="a test mesh of daemons on this machine")
    p.add_argument("action", nargs="?", default="start", choices=["start", "stop", "join"])
    p.add_argument("--nodes", type=int, default=3, help="how many nodes (start)")
    p.add_argument("--dir", type=Path, default=Path(".mesh"), help="the mesh's directory")
    p.add_argument("--detach", action="store_true", help="leave the mesh running and return")
    p.add_argument("--scheme", default="ml-dsa-65", help="account key scheme of the nodes")
    p.add_argument(
        "--preset",
        default="default",
        choices=["default", "fast", "high_security"],
        help="Avalanche parameters of the nodes (fast suits a mesh on one machine)",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the mesh")
    p.add_argument(
        "--free", action="store_true", help="nodes serve their experts free (default: for pay)"
    )
    p.set_defaults(func=cmd_mesh)
    return parser


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) is None:
        args.data_dir = default_data_dir()
    try:
        try:
            return int(args.func(args))
        except BaseExceptionGroup as group:
            # Errors raised inside the node's nurseries arrive wrapped; report the first one
            # of ours plainly and let anything else (a bug) keep its traceback.
            leaf = _first_leaf(group)
            if isinstance(leaf, SwarmError | KeyboardInterrupt):
                raise leaf from None
            raise
    except (ConfigError, KeyFileError) as exc:
        print(f"swarm-node: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SwarmError as exc:
        print(f"swarm-node: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
