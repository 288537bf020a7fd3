"""The local API's market endpoints: channels, receipts, providers, prices, usage, settle.

Each handler reads the node's market store and services; `build_app` wraps them with the
token check and the error mapping like every other endpoint.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.routing import Route

from dag.errors import SwarmError

if TYPE_CHECKING:
    from node.daemon import Node

Handler = Callable[[Request], Awaitable[Any]]
Wrap = Callable[[Handler], Callable[[Request], Awaitable[Any]]]


class BadQuery(SwarmError):
    """A query parameter out of range (the API answers 400 with this message)."""


def _limit(request: Request, name: str, default: int, high: int) -> int:
    text = request.query_params.get(name, str(default))
    if not text.isdigit() or not 1 <= int(text) <= high:
        raise BadQuery(f"{name} must be an integer in 1..{high}")
    return int(text)


def market_routes(node: Node, endpoint: Wrap) -> list[Route]:
    market = node.market

    async def channels(request: Request) -> Any:
        rows = []
        for row in market.store.channels():
            doc = row.public()
            doc["peer_name"] = _name(node, row.peer)
            doc["locked"] = await node.dag.locked(row.id)
            doc["use"] = market.payer.purse.use_of(row.id)  # (a client's open channels)
            rows.append(doc)
        return {"account": node.keys.account.account_id.hex(), "channels": rows}

    async def receipts(request: Request) -> Any:
        role = request.query_params.get("role")
        if role not in (None, "client", "provider"):
            raise BadQuery("role must be client or provider")
        rows = market.store.receipts(role, limit=_limit(request, "limit", 100, 10_000))
        for row in rows:
            row["peer_name"] = _name(node, row["peer"])
        return {"receipts": rows}

    async def providers(request: Request) -> Any:
        measured = node.experts.directory.reputation()
        paid = {r["provider"]: r for r in market.store.reputation()}
        rows = []
        for provider in sorted(set(measured) | set(paid)):
            entry = node.peers.get(provider)
            rows.append(
                {
                    "provider": provider,
                    "name": entry.name if entry else "",
                    "account": entry.account if entry else paid[provider]["account"],
                    **measured.get(
                        provider,
                        {
                            "calls": 0,
                            "success_rate": None,
                            "latency_ms": None,
                            "failed": 0,
                            "refused": 0,
                        },
                    ),
                    "paid_calls": paid.get(provider, {}).get("paid_calls", 0),
                    "tokens": paid.get(provider, {}).get("tokens", 0),
                    "credits": paid.get(provider, {}).get("credits", 0.0),
                    "disputed": paid.get(provider, {}).get("disputed", 0),
                }
            )
        return {"providers": rows}

    async def prices(request: Request) -> Any:
        doc = market.prices()
        for quote in doc["quotes"]:
            quote["name"] = _name(node, quote["provider"])
        return doc

    async def usage(request: Request) -> Any:
        days = _limit(request, "days", 30, 3_650)
        rows = market.store.usage(days)
        totals: dict[str, dict[str, float]] = {}
        for row in rows:
            total = totals.setdefault(row["kind"], {"calls": 0, "tokens": 0, "credits": 0.0})
            total["calls"] += row["calls"]
            total["tokens"] += row["tokens_in"] + row["tokens_out"]
            total["credits"] = round(total["credits"] + row["credits"], 3)
        names = _account_names(node)
        for row in rows:
            row["peer_name"] = names.get(row["peer_account"], "")
        return {"days": days, "usage": rows, "totals": totals}

    async def settle(request: Request) -> Any:
        return {"settled": await market.settle(every=True)}

    return [
        Route("/v1/market/channels", endpoint(channels), methods=["GET"]),
        Route("/v1/market/receipts", endpoint(receipts), methods=["GET"]),
        Route("/v1/market/providers", endpoint(providers), methods=["GET"]),
        Route("/v1/market/prices", endpoint(prices), methods=["GET"]),
        Route("/v1/market/settle", endpoint(settle), methods=["POST"]),
        Route("/v1/usage", endpoint(usage), methods=["GET"]),
    ]


def _name(node: Node, peer: str) -> str:
    entry = node.peers.get(peer) if peer else None
    return entry.name if entry else ""


def _account_names(node: Node) -> dict[str, str]:
    """Account (hex) -> name: the genesis names, then what peers call themselves."""
    names = {named.account.hex(): named.name for named in node.genesis.accounts}
    for entry in node.peers.snapshot():
        if entry.get("account") and entry.get("name"):
            names[entry["account"]] = entry["name"]
    return names
