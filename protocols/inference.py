"""Peer-to-peer inference: choose a provider, call it, fail over, hedge, or ask several.

The router picks the domain; the directory ranks who serves it (measured latency, success
rate, price ceiling); each call goes over the provider's reused stream. A provider that errs,
is busy or misses the deadline is recorded as such and the next one is tried within the
caller's deadline; with hedging, a slow call gets a second provider racing it. In consensus
mode the router's top three domains are asked at once and the answers combined.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import trio

import experts
from dag.errors import SwarmError
from experts.directory import Directory
from protocols import infer_wire as wire
from protocols.infer_client import CallFailed, InferChannel, Payment
from protocols.infer_server import ExpertHost

log = logging.getLogger("swarm.infer")
LOCAL = "local"
PROVIDER_WAIT_S = 3.0  # how long a call with no known provider waits for an announcement


class NoProvider(SwarmError):
    """No reachable provider serves what was asked within the price ceiling."""


class OverPrice(SwarmError):
    """A provider quotes more than the caller's price ceiling: the call goes elsewhere. (The
    candidates are chosen by announced price; a quote follows the provider's queue.)"""

    code = "price"


class InferenceFailed(SwarmError):
    """Every provider tried failed; `attempts` says who and why."""

    def __init__(self, message: str, attempts: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.attempts = attempts


class Payer(Protocol):
    """Pays providers that charge: the market's client side (`node.market_payer.Payer`)."""

    def ready(
        self, provider: str, request: wire.Request, price: int, max_price: int | None = None
    ) -> Payment | None:
        """`prepare` at once when it needs no waiting (the common case), else None."""

    async def prepare(
        self, provider: str, request: wire.Request, price: int, max_price: int | None = None
    ) -> Payment | None:
        """A ticket that reserves the call's largest cost on a channel with `provider`
        (opened first if need be) and pays for the call, or None when the provider serves
        for free. Raises `OverPrice` when the provider now asks more than `max_price` per
        1,000 tokens."""

    def paid(self, ticket: object, result: wire.TextResult | wire.ArrayResult) -> int:
        """Count the answer; what the call cost in milli-credits (its receipt comes after)."""

    def receipts(self, provider: str, items: list[Any], seal: bytes) -> None:
        """A frame of receipts `provider` sent for its answers, under `seal`: checked and
        kept."""

    def unpaid(self, ticket: object, error: BaseException) -> None:
        """The call failed: drop its reservation, and learn from a payment refusal."""


@dataclass(frozen=True, slots=True)
class Answer:
    expert_id: str
    domain: str
    provider: str
    text: str | None
    array: npt.NDArray[np.float32] | None
    tokens_in: int
    tokens_out: int
    price_per_1k: int
    elapsed_s: float
    attempts: tuple[tuple[str, str], ...] = ()
    consensus: dict[str, Any] | None = None
    cost_milli: int = 0  # what the caller paid, in thousandths of a credit


@dataclass
class _Race:
    max_price: int | None = None  # the caller's ceiling, per 1,000 tokens
    winner: Answer | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)


class Inference:
    """The caller side: routing, failover, hedging and consensus over the directory."""

    def __init__(
        self,
        *,
        host: ExpertHost,
        directory: Directory,
        channel_for: Callable[[str], InferChannel],
        local_peer: str,
        wall_ms: Callable[[], int],
        directory_changed: Callable[[], Awaitable[None]] | None = None,
        lookup: Callable[[str | None, str | None], Awaitable[object]] | None = None,
        payer: Payer | None = None,
    ) -> None:
        self.host = host
        self.directory = directory
        self._channel_for = channel_for
        self.local_peer = local_peer
        self._wall_ms = wall_ms
        self._ids = itertools.count(1)  # call ids, unique per node (channels are shared)
        self._router: experts.Router | None = None
        self._directory_changed = directory_changed
        # (expert id, domain) -> looks providers up outside the directory (the DHT).
        self._lookup = lookup
        self.payer = payer

    @property
    def router(self) -> experts.Router:
        if self._router is None:
            self._router = experts.load_router(experts.zoo.zoo_path("router"))
        return self._router

    def candidates(
        self,
        *,
        expert_id: str | None = None,
        domain: str | None = None,
        max_price: int | None = None,
        kind: str = "generator",
        remote_only: bool = False,
    ) -> list[tuple[str, str, int]]:
        """(provider, expert id, price) in the order to try; our own experts come first,
        since calling them costs no network and no credits (unless `remote_only`)."""
        ours = (
            []
            if remote_only
            else [
                (LOCAL, e.expert_id, 0)
                for e in self.host.experts.values()
                if (expert_id is None or e.expert_id == expert_id)
                and (domain is None or e.manifest.domain == domain)
                and e.manifest.kind == kind
            ]
        )
        remote = [
            (c.provider, c.offer.expert_id, c.offer.price_per_1k)
            for c in self.directory.rank(
                expert_id=expert_id, domain=domain, max_price=max_price, now_ms=self._wall_ms()
            )
            if c.provider != self.local_peer and c.offer.kind == kind
        ]
        return ours + remote

    async def generate(
        self,
        prompt: str,
        *,
        domain: str | None = None,
        expert_id: str | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        seed: int = 0,
        max_price: int | None = None,
        deadline_s: float = 10.0,
        hedge_after_s: float | None = None,
        remote_only: bool = False,
    ) -> Answer:
        """Text in, text out, from the best provider; consensus of three when the router is
        unsure and neither a domain nor an expert was named."""
        if expert_id is None and domain is None:
            decision = self.router.decide(prompt)
            if decision.consensus:
                return await self._consensus(
                    prompt,
                    decision,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                    max_price=max_price,
                    deadline_s=deadline_s,
                    remote_only=remote_only,
                )
            domain = decision.routes[0].domain

        def request(expert: str, budget_ms: int) -> wire.Request:
            return wire.GenerateRequest(
                next(self._ids), expert, budget_ms, prompt, max_tokens, temperature, 0, seed
            )

        find = partial(
            self.candidates,
            expert_id=expert_id,
            domain=domain,
            max_price=max_price,
            remote_only=remote_only,
        )
        found = await self._await_providers(find, deadline_s, expert_id, domain)
        return await self._first_answer(
            found, request, domain or "", deadline_s, hedge_after_s, max_price
        )

    async def _await_providers(
        self,
        find: Callable[[], list[tuple[str, str, int]]],
        deadline_s: float,
        expert_id: str | None,
        domain: str | None,
    ) -> list[tuple[str, str, int]]:
        """Candidates now, or once an announcement brings some: a node that has just joined
        hears its peers' offers within one refresh, and meanwhile the lookup (the DHT) finds
        providers whose gossip does not reach us."""
        found = find()
        if found or self._directory_changed is None:
            return found
        with trio.move_on_after(min(deadline_s / 2, PROVIDER_WAIT_S)):
            async with trio.open_nursery() as nursery:
                if self._lookup is not None:
                    nursery.start_soon(self._lookup, expert_id, domain)
                while not (found := find()):
                    await self._directory_changed()
                nursery.cancel_scope.cancel()
        return found

    async def tensor(
        self,
        expert_id: str,
        rows: npt.ArrayLike,
        *,
        max_price: int | None = None,
        deadline_s: float = 5.0,
        hedge_after_s: float | None = None,
        remote_only: bool = False,
    ) -> Answer:
        """Array in, array out, from a provider of `expert_id`."""

        def request(expert: str, budget_ms: int) -> wire.Request:
            return wire.TensorRequest.of(next(self._ids), expert, budget_ms, rows)

        find = partial(
            self.candidates,
            expert_id=expert_id,
            kind="tensor",
            max_price=max_price,
            remote_only=remote_only,
        )
        found = await self._await_providers(find, deadline_s, expert_id, None)
        return await self._first_answer(found, request, "", deadline_s, hedge_after_s, max_price)

    async def _first_answer(
        self,
        found: list[tuple[str, str, int]],
        request: Callable[[str, int], wire.Request],
        domain: str,
        deadline_s: float,
        hedge_after_s: float | None,
        max_price: int | None = None,
    ) -> Answer:
        if not found:
            raise NoProvider(
                f"no provider serves {domain or 'this expert'} within the price ceiling"
            )
        race = _Race(max_price)
        deadline = trio.current_time() + deadline_s
        if hedge_after_s is None or len(found) == 1:
            # No hedging: try the candidates in turn, with no task to spawn per call.
            for candidate in found:
                if trio.current_time() >= deadline:
                    break
                answer = await self._try(candidate, request, domain, deadline, race)
                if answer is not None:
                    return answer  # its attempts are all there were
            raise self._failed(race, deadline_s)
        queue = iter(found)  # shared by the runners: each candidate is tried once
        with trio.move_on_at(deadline):
            async with trio.open_nursery() as nursery:

                async def runner() -> None:
                    for candidate in queue:
                        answer = await self._try(candidate, request, domain, deadline, race)
                        if answer is not None and race.winner is None:
                            race.winner = answer
                            nursery.cancel_scope.cancel()
                            return

                nursery.start_soon(runner)
                if hedge_after_s is not None and len(found) > 1:
                    # A call still unanswered after this long gets the next provider racing
                    # it; the first answer wins and the other is cancelled.
                    await trio.sleep(hedge_after_s)
                    nursery.start_soon(runner)
        if race.winner is None:
            raise self._failed(race, deadline_s)
        return replace(race.winner, attempts=tuple(race.attempts))

    @staticmethod
    def _failed(race: _Race, deadline_s: float) -> InferenceFailed:
        detail = "; ".join(f"{p[:12]}: {why}" for p, why in race.attempts) or "deadline"
        return InferenceFailed(
            f"no provider answered within {deadline_s:.1f} s ({detail})", race.attempts
        )

    async def _try(
        self,
        candidate: tuple[str, str, int],
        request: Callable[[str, int], wire.Request],
        domain: str,
        deadline: float,
        race: _Race,
    ) -> Answer | None:
        provider, expert, price = candidate
        budget_ms = max(1, int((deadline - trio.current_time()) * 1000))
        started = time.perf_counter()
        call = request(expert, budget_ms)
        cost = 0
        try:
            # (a plain scope: trio.fail_at's generator costs more than the scope itself)
            with trio.CancelScope(deadline=deadline) as scope:
                if provider == LOCAL:
                    result = await self.host.call(call)
                elif self.payer is None or price == 0:
                    result = await self._channel_for(provider).call(call)
                else:
                    result, cost, started = await self._paid_call(
                        provider, call, price, race.max_price
                    )
            if scope.cancelled_caught:
                raise trio.TooSlowError
        except (SwarmError, trio.TooSlowError) as exc:  # busy, refused, network, deadline
            why = getattr(exc, "code", None) or type(exc).__name__
            race.attempts.append((provider, f"{why}: {exc}"))
            if provider != LOCAL and why != "price":  # (our ceiling, not the provider's fault)
                self.directory.record(
                    provider,
                    expert,
                    ok=False,
                    latency_s=time.perf_counter() - started,
                    busy=why == "busy",
                    refused=why in ("payment", "channel"),
                )
            return None
        elapsed = time.perf_counter() - started
        assert isinstance(result, wire.TextResult | wire.ArrayResult)
        if provider != LOCAL:
            self.directory.record(provider, expert, ok=True, latency_s=elapsed)
        race.attempts.append((provider, "ok"))
        return Answer(
            expert_id=expert,
            domain=domain or self._domain_of(expert),
            provider=provider,
            text=result.text if isinstance(result, wire.TextResult) else None,
            array=result.array() if isinstance(result, wire.ArrayResult) else None,
            tokens_in=result.tokens_in,
            tokens_out=result.tokens_out,
            price_per_1k=price,
            elapsed_s=elapsed,
            attempts=tuple(race.attempts),
            cost_milli=cost,
        )

    async def _paid_call(
        self, provider: str, call: wire.Request, price: int, max_price: int | None
    ) -> tuple[wire.TextResult | wire.ArrayResult, int, float]:
        """A call paid on a channel: (result, its cost in milli-credits, when the call itself
        started, after any channel was opened). A provider that refuses the channel (it
        settled it meanwhile) gets one more try on a new one."""
        payer = self.payer
        assert payer is not None
        channel = self._channel_for(provider)
        for again in (True, False):
            ticket = payer.ready(provider, call, price, max_price) or await payer.prepare(
                provider, call, price, max_price
            )
            started = time.perf_counter()
            if ticket is None:
                return await channel.call(call), 0, started
            try:
                result = await channel.call(call, ticket)
            except CallFailed as exc:
                payer.unpaid(ticket, exc)
                if again and exc.code == "channel":
                    continue
                raise
            except BaseException as exc:
                payer.unpaid(ticket, exc)
                raise
            return result, payer.paid(ticket, result), started
        raise AssertionError("the loop returns or raises")

    def _domain_of(self, expert_id: str) -> str:
        hosted = self.host.experts.get(expert_id)
        return hosted.manifest.domain if hosted is not None else ""

    async def _consensus(self, prompt: str, decision: experts.Decision, **kwargs: Any) -> Answer:
        answers: list[tuple[experts.Route, Answer]] = []

        async def ask(route: experts.Route) -> None:
            try:
                answers.append((route, await self.generate(prompt, domain=route.domain, **kwargs)))
            except SwarmError as exc:
                log.info("consensus: %s gave no answer: %s", route.domain, exc)

        async with trio.open_nursery() as nursery:
            for route in decision.routes:
                nursery.start_soon(ask, route)
        if not answers:
            raise NoProvider("no provider answered for any of the router's top domains")
        combined = experts.combine(
            [
                experts.Answer(
                    a.expert_id,
                    route.domain,
                    route.probability,
                    a.text or "",
                    a.tokens_in,
                    a.tokens_out,
                )
                for route, a in answers
            ]
        )
        chosen = next(a for _, a in answers if a.expert_id == combined.expert_id)
        return Answer(
            expert_id=chosen.expert_id,
            domain=combined.domain,
            provider=chosen.provider,
            text=combined.text,
            array=None,
            tokens_in=combined.tokens_in,
            tokens_out=combined.tokens_out,
            price_per_1k=chosen.price_per_1k,
            elapsed_s=max(a.elapsed_s for _, a in answers),
            cost_milli=sum(a.cost_milli for _, a in answers),
            consensus={
                "agreement": combined.agreement,
                "asked": [
                    {
                        "domain": r.domain,
                        "provider": a.provider,
                        "expert_id": a.expert_id,
                        "text": a.text,
                    }
                    for r, a in answers
                ],
            },
        )
