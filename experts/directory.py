"""The provider directory: who hosts which expert, at what price and latency, until when.

Sans-IO: the caller feeds it verified announcements (`apply`), disconnects (`forget`) and the
outcome of each call it made (`record`), and passes the time in as `now_ms`; nothing here
reads a clock or touches the network. Every query is one pass over the providers.

Routing score (`rank`, lower is better), in seconds of expected time to a good answer:

    score = latency * (1 + queue_depth / capacity)
            + (1 - p) / p * FAILURE_COST_S
            + price_per_1k * credit_s

- `latency` is our EWMA of measured call latencies. A provider we never called gets the
  larger of its advertised p50 and the median measured latency of the candidates, so it
  ranks level with a typical peer (a fair chance) and cannot jump the queue by advertising
  a small number.
- `p` is the chance of success: `(ok + 1) / (ok + fail + 1)` over counts that decay by
  `DECAY` on each call, so one never tried starts at 1, one failure halves it, and a
  recovered provider climbs back after a few good calls. `(1 - p) / p` is the expected
  number of failures before a success; each costs `FAILURE_COST_S` (a timeout or retry),
  far above a call's latency, so a failing provider sinks below every healthy one.
- A "busy" answer counts as `BUSY_WEIGHT` of a failure: the peer is alive but full.
- A wrong receipt (`dispute`: the provider billed more than we counted, or sent a receipt
  that is not its own or names another call) adds `DISPUTE_WEIGHT` failures: the answer
  came, but the provider is not to be trusted with the next call.
- `credit_s` says how many seconds one credit per 1,000 tokens is worth; offers above
  `max_price` are never ranked at all.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

Kind = Literal["tensor", "generator"]

# A failed call costs about a deadline's worth of waiting plus a retry elsewhere.
FAILURE_COST_S = 0.05
DECAY = 0.8
BUSY_WEIGHT = 0.5
DISPUTE_WEIGHT = 2.0
LATENCY_ALPHA = 0.3
DEFAULT_CREDIT_S = 0.0001
# Bounds on memory, whatever the gossip brings: a sybil flood fills these and stops.
MAX_PROVIDERS = 4096
MAX_STATS = 8192


@dataclass(frozen=True, slots=True)
class Offer:
    """One expert a provider hosts, on its own terms.

    `expert_id` is the 64-hex id of the expert file; `price_per_1k` credits per 1,000 tokens;
    `capacity` calls the provider runs at once, `queue_depth` calls waiting now, `latency_us`
    its recent p50 compute latency (advertised, not measured by us).
    """

    expert_id: str
    domain: str
    kind: Kind
    price_per_1k: int
    capacity: int
    queue_depth: int
    latency_us: int


@dataclass(frozen=True, slots=True)
class Stats:
    """What our own calls to one provider's expert showed: decayed counts and latency EWMA."""

    ok: float = 0.0
    fail: float = 0.0
    latency_s: float | None = None
    calls: int = 0
    failed: int = 0  # calls that erred or missed their deadline
    refused: int = 0  # calls the provider turned down (busy, or unpaid)

    @property
    def success_rate(self) -> float:
        """Estimated chance the next call succeeds; 1.0 before any call (see module doc)."""
        return (self.ok + 1.0) / (self.ok + self.fail + 1.0)

    def after(self, ok: bool, latency_s: float, busy: bool, refused: bool = False) -> Stats:
        """These stats with one more call's outcome folded in (`busy` also counts as
        refused)."""
        miss = 0.0 if ok else BUSY_WEIGHT if busy else 1.0
        latency = self.latency_s
        if ok:  # a failure's latency is a timeout, already paid for by FAILURE_COST_S
            latency = (
                latency_s if latency is None else latency + LATENCY_ALPHA * (latency_s - latency)
            )
        return Stats(
            self.ok * DECAY + (1.0 if ok else 0.0),
            self.fail * DECAY + miss,
            latency,
            self.calls + 1,
            self.failed + (not ok and not (busy or refused)),
            self.refused + (busy or refused),
        )

    def after_dispute(self) -> Stats:
        """These stats with a wrong receipt folded in (its call was counted already)."""
        return replace(self, fail=self.fail + DISPUTE_WEIGHT)


@dataclass(frozen=True, slots=True)
class Listing:
    """One offer of one provider, as a query returns it, with our stats for it if any."""

    provider: str
    account: bytes
    addrs: tuple[str, ...]
    offer: Offer
    seq: int
    expires_ms: int
    stats: Stats | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    account: bytes
    addrs: tuple[str, ...]
    offers: tuple[Offer, ...]
    seq: int
    expires_ms: int


class Directory:
    """Providers and their offers, each until its announcement expires."""

    def __init__(self, *, max_providers: int = MAX_PROVIDERS, max_stats: int = MAX_STATS) -> None:
        self._entries: dict[str, _Entry] = {}
        # provider -> (seq, expires_ms) of the record it was forgotten at: that record, replayed
        # by gossip or the DHT, must not bring a dead provider back.
        self._forgotten: dict[str, tuple[int, int]] = {}
        # (provider, expert_id) -> Stats, in least-recently-recorded order.
        self._stats: dict[tuple[str, str], Stats] = {}
        self._max_providers = max_providers
        self._max_stats = max_stats

    def __len__(self) -> int:
        return len(self._entries)

    def apply(
        self,
        provider: str,
        account: bytes,
        addrs: Iterable[str],
        offers: Iterable[Offer],
        seq: int,
        expires_ms: int,
        now_ms: int,
    ) -> bool:
        """Take a verified announcement; True if it was new (a new provider or a newer seq).

        Expired records, and records no newer than the one held (or forgotten), are ignored.
        A new provider is refused while the directory is full.
        """
        if expires_ms <= now_ms:
            return False
        held = self._entries.get(provider)
        if held is not None and held.expires_ms > now_ms and seq <= held.seq:
            return False
        gone = self._forgotten.get(provider)
        if gone is not None and seq <= gone[0] and gone[1] > now_ms:
            return False
        if held is None and len(self._entries) >= self._max_providers:
            return False
        self._forgotten.pop(provider, None)
        self._entries[provider] = _Entry(account, tuple(addrs), tuple(offers), seq, expires_ms)
        return True

    def forget(self, provider: str) -> bool:
        """Drop a provider at once (disconnected, or stopped answering); True if it was here.

        Its measured stats are kept, so a flapping provider comes back with its record.
        """
        entry = self._entries.pop(provider, None)
        if entry is None:
            return False
        self._forgotten[provider] = (entry.seq, entry.expires_ms)
        return True

    def expire(self, now_ms: int) -> list[str]:
        """Remove every provider whose announcement has expired; return their ids."""
        gone = [p for p, e in self._entries.items() if e.expires_ms <= now_ms]
        for provider in gone:
            del self._entries[provider]
        self._forgotten = {p: t for p, t in self._forgotten.items() if t[1] > now_ms}
        return gone

    def providers(
        self,
        *,
        expert_id: str | None = None,
        domain: str | None = None,
        max_price: int | None = None,
        now_ms: int,
    ) -> list[Listing]:
        """Unexpired offers that match every filter given, by expert, price, then provider."""
        found = [
            Listing(
                p, e.account, e.addrs, o, e.seq, e.expires_ms, self._stats.get((p, o.expert_id))
            )
            for p, e in self._entries.items()
            if e.expires_ms > now_ms
            for o in e.offers
            if (expert_id is None or o.expert_id == expert_id)
            and (domain is None or o.domain == domain)
            and (max_price is None or o.price_per_1k <= max_price)
        ]
        found.sort(key=lambda x: (x.offer.expert_id, x.offer.price_per_1k, x.provider))
        return found

    def record(
        self,
        provider: str,
        expert_id: str,
        ok: bool,
        latency_s: float,
        busy: bool = False,
        refused: bool = False,
    ) -> None:
        """Fold the outcome of one call we made into that provider's stats for the expert."""
        key = (provider, expert_id)
        self._put(key, (self._stats.pop(key, None) or Stats()).after(ok, latency_s, busy, refused))

    def dispute(self, provider: str, expert_id: str) -> None:
        """We dispute the receipt of an answer of `provider`'s (see the module doc)."""
        key = (provider, expert_id)
        self._put(key, (self._stats.pop(key, None) or Stats()).after_dispute())

    def _put(self, key: tuple[str, str], stats: Stats) -> None:
        self._stats[key] = stats  # (put back last: the least recently recorded go first)
        if len(self._stats) > self._max_stats:
            del self._stats[next(iter(self._stats))]

    def stats(self, provider: str, expert_id: str) -> Stats | None:
        """Our measured stats for one provider's expert, None if we never called it."""
        return self._stats.get((provider, expert_id))

    def reputation(self) -> dict[str, dict[str, Any]]:
        """Per provider, over its experts: calls, success rate, latency, failed and refused
        calls, as our own calls measured them (what routing ranks by)."""
        out: dict[str, dict[str, Any]] = {}
        for (provider, _), stats in self._stats.items():
            entry = out.setdefault(
                provider,
                {"calls": 0, "ok": 0.0, "seen": 0.0, "failed": 0, "refused": 0, "lat": []},
            )
            entry["calls"] += stats.calls
            entry["ok"] += stats.ok
            entry["seen"] += stats.ok + stats.fail
            entry["failed"] += stats.failed
            entry["refused"] += stats.refused
            if stats.latency_s is not None:
                entry["lat"].append(stats.latency_s)
        return {
            provider: {
                "calls": e["calls"],
                "success_rate": round((e["ok"] + 1.0) / (e["seen"] + 1.0), 3),
                "latency_ms": round(1000 * sum(e["lat"]) / len(e["lat"]), 3) if e["lat"] else None,
                "failed": e["failed"],
                "refused": e["refused"],
            }
            for provider, e in out.items()
        }

    def rank(
        self,
        *,
        expert_id: str | None = None,
        domain: str | None = None,
        max_price: int | None = None,
        now_ms: int,
        credit_s: float = DEFAULT_CREDIT_S,
    ) -> list[Listing]:
        """Matching offers within `max_price`, best first for routing (see the module doc)."""
        found = self.providers(
            expert_id=expert_id, domain=domain, max_price=max_price, now_ms=now_ms
        )
        if len(found) < 2:
            return found  # nothing to order (the usual call to a named expert of one node)
        measured = [x.stats.latency_s for x in found if x.stats and x.stats.latency_s is not None]
        typical = statistics.median(measured) if measured else 0.0
        found.sort(
            key=lambda x: (score(x, typical_latency_s=typical, credit_s=credit_s), x.provider)
        )
        return found


def score(
    listing: Listing, *, typical_latency_s: float, credit_s: float = DEFAULT_CREDIT_S
) -> float:
    """The routing score of one listing in seconds, lower is better (see the module doc)."""
    offer, stats = listing.offer, listing.stats or Stats()
    latency = stats.latency_s
    if latency is None:
        latency = max(offer.latency_us / 1e6, typical_latency_s)
    load = 1.0 + offer.queue_depth / max(offer.capacity, 1)
    p = stats.success_rate
    return latency * load + (1.0 - p) / p * FAILURE_COST_S + offer.price_per_1k * credit_s
