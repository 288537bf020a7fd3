"""`swarm-node experts ...` and `swarm-node infer --local`: the zoo, with no network."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dag.errors import SwarmError
from node.config import EXPERT_CHOICES
from node.output import emit, table

if TYPE_CHECKING:
    import experts

# `experts` (and numpy) are imported by the commands that run a model, not when the CLI
# starts: `swarm-node infer` through the daemon needs neither.
DOMAIN_CHOICES = [c for c in EXPERT_CHOICES if c != "ffn64"]


def _entry_row(entry: experts.ZooEntry) -> dict[str, Any]:
    m = entry.manifest
    return {
        "id": entry.expert_id,
        "name": m.name,
        "domain": m.domain,
        "kind": m.kind,
        "precision": entry.precision,
        "parameters": m.parameters,
        "bytes": entry.path.stat().st_size,
        "metric": m.evaluation.metric if m.evaluation else None,
        "score": m.evaluation.score if m.evaluation else None,
        "path": str(entry.path),
    }


def cmd_experts(args: argparse.Namespace) -> int:
    import experts

    action = args.action
    if action == "list":
        from node.client import Client, DaemonNotRunning

        try:
            listing = Client(args.data_dir).experts()
        except DaemonNotRunning:
            listing = None
        if listing is not None:
            rows = listing["local"] + listing["remote"]
            emit(
                listing,
                args.json,
                table(
                    [
                        [
                            r["expert_id"][:16],
                            r["domain"],
                            r["kind"],
                            r.get("provider_name")
                            or ("this node" if r["provider"] == "local" else r["provider"][-8:]),
                            str(r["price_per_1k"]),
                            f"{r['measured_ms']:.2f}"
                            if r.get("measured_ms") is not None
                            else f"{r['latency_ms']:.2f}",
                        ]
                        for r in rows
                    ],
                    ["ID", "DOMAIN", "KIND", "PROVIDER", "PRICE/1K", "LATENCY MS"],
                )
                if rows
                else "no experts hosted here or announced by peers",
            )
            return 0
        action = "zoo"  # no daemon: show the files this install ships
    if action == "zoo":
        rows = [_entry_row(e) for e in experts.list_zoo()]
        emit(
            {"experts": rows},
            args.json,
            table(
                [
                    [
                        r["id"][:16],
                        r["domain"],
                        r["kind"],
                        str(r["precision"] or "-"),
                        f"{r['parameters']:,}",
                        f"{r['bytes']:,}",
                        f"{r['score']:.1f} {r['metric']}" if r["score"] is not None else "-",
                    ]
                    for r in rows
                ],
                ["ID", "DOMAIN", "KIND", "PRECISION", "PARAMS", "BYTES", "EVAL"],
            ),
        )
        return 0
    if not args.target:
        raise SwarmError(f"experts {action} needs an expert id, a domain or a file")
    if action == "show":
        entry = experts.find(args.target)
        row = _entry_row(entry)
        row["manifest"] = entry.manifest.to_json()
        emit(row, args.json, "\n".join(f"{k:<11}{v}" for k, v in row.items() if k != "manifest"))
        return 0
    if action == "eval":
        entry = experts.find(args.target)
        expert = experts.load_expert(entry.path)
        result = experts.evaluate_expert(expert, n=args.n)
        recorded = entry.manifest.evaluation
        doc = {
            "id": entry.expert_id,
            "domain": entry.manifest.domain,
            "metric": result.metric,
            "score": result.score,
            "n": result.n,
            "recorded": recorded.score if recorded else None,
        }
        emit(
            doc,
            args.json,
            f"{entry.manifest.domain} ({entry.expert_id[:16]}): "
            f"{result.score:.2f} {result.metric} on {result.n} held-out examples"
            f" (manifest says {doc['recorded']})",
        )
        return 0
    if action == "quantize":
        src = Path(args.target)
        dst = (
            Path(args.output)
            if args.output
            else src.with_name(src.name.replace(".f32", "").removesuffix(".npz") + ".int8.npz")
        )
        expert_id = experts.quantize_file(src, dst)
        emit({"id": expert_id, "path": str(dst)}, args.json, f"wrote {dst} ({expert_id[:16]})")
        return 0
    if action == "analyze":
        path = Path(args.target) if Path(args.target).exists() else experts.find(args.target).path
        report = experts.analyze(path)
        emit(report, args.json, experts.format_table(report))
        return 0
    raise SwarmError(f"unknown experts action {action!r}")


def cmd_infer_local(args: argparse.Namespace) -> int:
    import experts

    result = experts.local_infer(
        args.prompt, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    doc = {
        "domain": result.domain,
        "expert_id": result.expert_id,
        "text": result.text,
        "tokens_in": result.tokens_in,
        "tokens_out": result.tokens_out,
        "routes": [
            {"domain": r.domain, "probability": round(r.probability, 4)} for r in result.routes
        ],
        "consensus": result.consensus is not None,
    }
    routes = ", ".join(f"{r.domain} {r.probability:.2f}" for r in result.routes)
    emit(
        doc,
        args.json,
        f"{result.text}\n-- {result.domain} expert {result.expert_id[:16]}, "
        f"{result.tokens_in} tokens in, {result.tokens_out} out; "
        f"routes: {routes}{'; consensus of 3' if doc['consensus'] else ''}",
    )
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("experts", parents=[common], help="the micro-experts this node hosts")
    p.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "zoo", "show", "eval", "quantize", "analyze"],
    )
    p.add_argument("target", nargs="?", help="an expert id (8+ hex), a domain, or a file")
    p.add_argument("-o", "--output", help="quantize: where to write the int8 file")
    p.add_argument("-n", type=int, default=500, help="eval: held-out examples")
    p.set_defaults(func=cmd_experts)

    p = sub.add_parser("infer", parents=[common], help="ask the mesh (or --local) a question")
    p.add_argument("prompt")
    p.add_argument("--local", action="store_true", help="route and generate here, no network")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--domain", choices=DOMAIN_CHOICES)
    target.add_argument("--expert", help="an expert id")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-price", type=int, help="credits per 1,000 tokens at most")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=10.0, help="seconds")
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    if args.local:
        return cmd_infer_local(args)
    from node.client import Client

    options: dict[str, Any] = {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "seed": args.seed,
        "deadline_s": args.deadline,
    }
    if args.domain:
        options["domain"] = args.domain
    if args.expert:
        options["expert_id"] = args.expert
    if args.max_price is not None:
        options["max_price"] = args.max_price
    doc = Client(args.data_dir).infer(args.prompt, **options)
    who = doc["provider_name"] or doc["provider"]
    extra = (
        f"; consensus of {len(doc['consensus']['asked'])}, agreement "
        f"{doc['consensus']['agreement']:.2f}"
        if doc["consensus"]
        else ""
    )
    emit(
        doc,
        args.json,
        f"{doc['text']}\n-- {doc['domain']} expert {doc['expert_id'][:16]} "
        f"on {who}, {doc['tokens_in']} tokens in, {doc['tokens_out']} out, "
        f"{doc['price_per_1k']} credits/1k, cost {doc['cost']:.3f} credits, "
        f"{doc['elapsed_ms']:.1f} ms{extra}",
    )
    return 0
