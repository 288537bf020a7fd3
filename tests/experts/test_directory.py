"""The provider directory: seq, expiry, forget, filters and routing order. No I/O."""

from __future__ import annotations

from experts.directory import FAILURE_COST_S, Directory, Listing, Offer, Stats

E1 = "11" * 32
E2 = "22" * 32


def offer(
    expert_id: str = E1, *, price: int = 10, latency_us: int = 500, queue_depth: int = 0
) -> Offer:
    domain = "coding" if expert_id == E1 else "mathematics"
    return Offer(expert_id, domain, "tensor", price, 4, queue_depth, latency_us)


def put(
    d: Directory, provider: str, *offers: Offer, seq: int = 1, expires: int = 10_000, now: int = 0
) -> bool:
    return d.apply(
        provider, b"a" * 32, ["/ip4/127.0.0.1/tcp/1"], offers or (offer(),), seq, expires, now
    )


def names(listings: list[Listing]) -> list[str]:
    return [x.provider for x in listings]


def test_newer_seq_replaces_and_stale_or_equal_seq_is_ignored() -> None:
    d = Directory()
    assert put(d, "p", offer(price=10), seq=5)
    assert not put(d, "p", offer(price=1), seq=5)
    assert not put(d, "p", offer(price=1), seq=4)
    assert [x.offer.price_per_1k for x in d.providers(now_ms=0)] == [10]
    assert put(d, "p", offer(price=7), seq=6)
    assert [x.offer.price_per_1k for x in d.providers(now_ms=0)] == [7]


def test_an_expired_record_is_ignored_and_an_expired_entry_leaves() -> None:
    d = Directory()
    assert not put(d, "late", expires=100, now=100)
    assert put(d, "a", expires=100)
    assert put(d, "b", expires=200)
    assert names(d.providers(now_ms=150)) == ["b"]  # hidden before the sweep
    assert d.expire(150) == ["a"]
    assert len(d) == 1
    # once the held record has expired, any fresh record is taken, even a lower seq (restart)
    assert put(d, "b", seq=0, expires=400, now=300)


def test_forget_removes_at_once_and_a_replayed_record_does_not_bring_it_back() -> None:
    d = Directory()
    put(d, "p", seq=3)
    assert d.forget("p")
    assert not d.forget("p")
    assert d.providers(now_ms=1) == []
    assert not put(d, "p", seq=3, now=1)  # the same record, re-gossiped
    assert put(d, "p", seq=4, now=1)  # a new announcement: it is back
    assert names(d.providers(now_ms=1)) == ["p"]


def test_a_forgotten_mark_lasts_until_its_record_would_have_expired() -> None:
    d = Directory()
    put(d, "p", seq=3, expires=100)
    d.forget("p")
    d.expire(100)
    assert put(d, "p", seq=1, expires=300, now=150)


def test_filters_by_expert_domain_and_price() -> None:
    d = Directory()
    put(d, "a", offer(E1, price=5), offer(E2, price=50))
    put(d, "b", offer(E1, price=20))
    assert names(d.providers(expert_id=E1, now_ms=0)) == ["a", "b"]
    assert names(d.providers(domain="mathematics", now_ms=0)) == ["a"]
    assert names(d.providers(expert_id=E1, max_price=10, now_ms=0)) == ["a"]
    assert d.providers(domain="language", now_ms=0) == []
    assert len(d.providers(now_ms=0)) == 3


def test_a_full_directory_refuses_new_providers_but_updates_known_ones() -> None:
    d = Directory(max_providers=2)
    assert put(d, "a") and put(d, "b")
    assert not put(d, "c")
    assert put(d, "a", seq=2)
    d.forget("b")
    assert put(d, "c")


def test_stats_keep_a_latency_ewma_and_a_decayed_success_rate() -> None:
    d = Directory()
    assert d.stats("p", E1) is None
    d.record("p", E1, True, 0.010)
    d.record("p", E1, True, 0.020)
    s = d.stats("p", E1)
    assert s is not None and s.calls == 2
    assert s.latency_s is not None and 0.010 < s.latency_s < 0.020
    assert s.success_rate == 1.0
    d.record("p", E1, False, 5.0)  # a timeout: the rate drops, the latency does not move
    t = d.stats("p", E1)
    assert t is not None and t.latency_s == s.latency_s and t.success_rate < 0.8
    assert (
        Stats().after(False, 0.0, busy=True).success_rate
        > Stats().after(False, 0.0, False).success_rate
    )


def test_reputation_counts_failed_and_refused_calls_per_provider() -> None:
    d = Directory()
    d.record("p", E1, True, 0.010)
    d.record("p", E2, True, 0.030)
    d.record("p", E1, False, 1.0)
    d.record("p", E1, False, 0.001, busy=True)
    d.record("p", E2, False, 0.001, refused=True)
    d.record("q", E1, True, 0.002)
    rep = d.reputation()
    assert rep["p"]["calls"] == 5 and rep["p"]["failed"] == 1 and rep["p"]["refused"] == 2
    assert rep["p"]["latency_ms"] == 20.0 and rep["p"]["success_rate"] < rep["q"]["success_rate"]
    assert rep["q"] == {
        "calls": 1,
        "success_rate": 1.0,
        "latency_ms": 2.0,
        "failed": 0,
        "refused": 0,
    }


def test_stats_are_bounded_dropping_the_least_recently_recorded() -> None:
    d = Directory(max_stats=2)
    d.record("a", E1, True, 0.001)
    d.record("b", E1, True, 0.001)
    d.record("a", E1, True, 0.001)
    d.record("c", E1, True, 0.001)
    assert d.stats("b", E1) is None and d.stats("a", E1) is not None


def test_rank_prefers_measured_speed_then_price() -> None:
    d = Directory()
    for p in ("fast", "slow", "dear"):
        put(d, p, offer(price=1000 if p == "dear" else 10))
    d.record("fast", E1, True, 0.001)
    d.record("slow", E1, True, 0.004)
    d.record("dear", E1, True, 0.001)
    assert names(d.rank(expert_id=E1, now_ms=0)) == ["fast", "slow", "dear"]
    assert names(d.rank(expert_id=E1, now_ms=0, credit_s=0.0))[-1] == "slow"
    assert names(d.rank(expert_id=E1, max_price=100, now_ms=0)) == ["fast", "slow"]


def test_a_provider_with_failures_sinks_below_slower_healthy_ones() -> None:
    d = Directory()
    for p in ("flaky", "steady"):
        put(d, p)
    d.record("flaky", E1, True, 0.001)
    d.record("flaky", E1, False, 1.0)
    d.record("steady", E1, True, 0.010)
    assert names(d.rank(now_ms=0)) == ["steady", "flaky"]
    # and climbs back after enough good calls
    for _ in range(12):
        d.record("flaky", E1, True, 0.001)
    assert names(d.rank(now_ms=0)) == ["flaky", "steady"]


def test_busy_sinks_a_provider_less_than_a_failure() -> None:
    d = Directory()
    for p in ("busy", "failed"):
        put(d, p)
        d.record(p, E1, True, 0.001)
    d.record("busy", E1, False, 0.001, busy=True)
    d.record("failed", E1, False, 0.001)
    assert names(d.rank(now_ms=0)) == ["busy", "failed"]


def test_a_disputed_receipt_sinks_a_provider_more_than_a_failed_call() -> None:
    d = Directory()
    for p in ("disputed", "failed", "steady"):
        put(d, p)
        d.record(p, E1, True, 0.001)
    d.record("failed", E1, False, 0.001)
    d.dispute("disputed", E1)
    assert names(d.rank(now_ms=0)) == ["steady", "failed", "disputed"]
    stats = d.stats("disputed", E1)
    assert stats is not None and stats.calls == 1  # the call itself was counted when answered
    d.dispute("never-called", E1)  # (a receipt outliving its stats: counted afresh)
    assert (s := d.stats("never-called", E1)) is not None and s.success_rate < 1.0


def test_an_untried_provider_ranks_level_with_a_typical_one_and_cannot_bid_itself_up() -> None:
    d = Directory()
    put(d, "new", offer(latency_us=1))  # advertises 1 us: not believed over measurements
    put(d, "known", offer())
    put(d, "failing", offer())
    d.record("known", E1, True, 0.002)
    d.record("failing", E1, False, 1.0)
    ranked = names(d.rank(now_ms=0))
    assert ranked[-1] == "failing"
    assert set(ranked[:2]) == {"new", "known"}
    # a slow untried provider is taken at its word
    put(d, "snail", offer(latency_us=int(FAILURE_COST_S * 4e6)))
    assert names(d.rank(now_ms=0))[-1] == "snail"


def test_advertised_queue_load_counts_against_a_provider() -> None:
    d = Directory()
    put(d, "idle", offer(queue_depth=0))
    put(d, "queued", offer(queue_depth=8))
    for p in ("idle", "queued"):
        d.record(p, E1, True, 0.002)
    assert names(d.rank(now_ms=0)) == ["idle", "queued"]
