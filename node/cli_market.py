"""`swarm-node market ...` and `swarm-node usage`: the market, through the local daemon."""

from __future__ import annotations

import argparse
from typing import Any

from node.output import emit, table


def _who(row: dict[str, Any], key: str = "peer") -> str:
    return str(row.get("peer_name") or row.get(key, "")[-8:] or "-")


def cmd_market(args: argparse.Namespace) -> int:
    from node.client import Client

    client = Client(args.data_dir)
    if args.view == "settle":
        doc = client.settle()
        if args.wait:
            for item in doc["settled"]:
                if "tx" in item:
                    item["status"] = client.tx(item["tx"], wait_s=args.wait)["status"]
        lines = [
            f"channel {s['channel'][:16]}: "
            + (
                f"settles {s['amount']} credits ({s.get('status', 'submitted')})"
                if "tx" in s
                else s.get("error", "")
            )
            for s in doc["settled"]
        ]
        emit(doc, args.json, "\n".join(lines) or "nothing to settle")
        return 0
    if args.view == "receipts":
        doc = client.market("receipts", limit=args.limit)
        human = table(
            [
                [
                    r["role"],
                    _who(r),
                    r["channel"][:12],
                    str(r["seq"]),
                    r["expert"][:12],
                    f"{r['tokens_in']}+{r['tokens_out']}",
                    str(r["price_per_1k"]),
                    f"{r['cost_milli'] / 1000:.3f}",
                    f"{r['charged_milli'] / 1000:.3f}",
                    r["disputed"] or "",
                ]
                for r in doc["receipts"]
            ],
            [
                "ROLE",
                "PEER",
                "CHANNEL",
                "SEQ",
                "EXPERT",
                "TOKENS",
                "PRICE",
                "COST",
                "TOTAL",
                "DISPUTE",
            ],
        )
    elif args.view == "channels":
        doc = client.market("channels")
        human = table(
            [
                [
                    c["role"],
                    _who(c),
                    c["channel"][:12],
                    f"{c['state']} ({c['use']})" if c.get("use") else c["state"],
                    str(c["deposit"]),
                    str(c["locked"]),
                    f"{c['charged']:.3f}",
                    str(c["seq"]),
                ]
                for c in doc["channels"]
            ],
            ["ROLE", "PEER", "CHANNEL", "STATE", "DEPOSIT", "LOCKED", "CHARGED", "SEQ"],
        )
    elif args.view == "providers":
        doc = client.market("providers")
        human = table(
            [
                [
                    p["name"] or p["provider"][-8:],
                    str(p["calls"]),
                    "-" if p["success_rate"] is None else f"{p['success_rate']:.3f}",
                    "-" if p["latency_ms"] is None else f"{p['latency_ms']:.2f}",
                    str(p["failed"]),
                    str(p["refused"]),
                    str(p["paid_calls"]),
                    f"{p['credits']:.3f}",
                    str(p["disputed"]),
                ]
                for p in doc["providers"]
            ],
            [
                "PROVIDER",
                "CALLS",
                "SUCCESS",
                "LATENCY_MS",
                "FAILED",
                "REFUSED",
                "PAID",
                "CREDITS",
                "DISPUTED",
            ],
        )
    else:
        doc = client.market("prices")
        rows = [["this node", e[:16], str(p)] for e, p in doc["ours"].items()]
        rows += [
            [q["name"] or q["provider"][-8:], e[:16], str(p)]
            for q in doc["quotes"]
            for e, p in q["prices"].items()
        ]
        paid = "serves for pay" if doc["serve_paid"] else "serves free"
        human = f"this node {paid}\n" + table(rows, ["PROVIDER", "EXPERT", "PRICE_PER_1K"])
    emit(doc, args.json, human)
    return 0


def cmd_usage(args: argparse.Namespace) -> int:
    from node.client import Client

    doc = Client(args.data_dir).usage(args.days)
    rows = [
        [
            u["day"],
            u["kind"],
            u["expert"][:12],
            u["peer_name"] or u["peer_account"][:12],
            str(u["calls"]),
            str(u["tokens_in"] + u["tokens_out"]),
            f"{u['credits']:.3f}",
        ]
        for u in doc["usage"]
    ]
    totals = "\n".join(
        f"{kind}: {t['calls']} calls, {t['tokens']} tokens, {t['credits']:.3f} credits"
        for kind, t in sorted(doc["totals"].items())
    )
    human = table(rows, ["DAY", "KIND", "EXPERT", "PEER", "CALLS", "TOKENS", "CREDITS"])
    emit(doc, args.json, human + ("\n" + totals if totals else ""))
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("market", parents=[common], help="channels, receipts, providers, prices")
    p.add_argument(
        "view",
        nargs="?",
        default="channels",
        choices=["channels", "receipts", "providers", "prices", "settle"],
    )
    p.add_argument("--limit", type=int, default=50, help="receipts: how many, newest first")
    p.add_argument(
        "--wait", type=float, default=0.0, help="settle: seconds to wait for it to apply"
    )
    p.set_defaults(func=cmd_market)
    p = sub.add_parser("usage", parents=[common], help="tokens used and earned, per day")
    p.add_argument("--days", type=int, default=30)
    p.set_defaults(func=cmd_usage)
