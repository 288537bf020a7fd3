"""Announcements and peer-to-peer inference over real libp2p hosts."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import numpy as np
import trio

import experts
from node.daemon import Node
from node.hosting import ffn64_id
from tests.factory import connect_all, make_node_dirs, running_nodes


async def knows(node: Node, provider: Node, expert_id: str) -> None:
    """Wait until `node`'s directory lists `provider` for `expert_id` (announcements)."""

    def listed() -> bool:
        return any(
            listing.provider == provider.peer_id
            for listing in node.experts.directory.providers(
                expert_id=expert_id, now_ms=node.experts._now_ms()
            )
        )

    while not listed():
        await node.experts.directory_changed()


def hang(provider: Node) -> trio.Event:
    """Make `provider` take every call and never answer; the event is set at the first."""
    arrived = trio.Event()

    async def call(request: object, **options: object) -> NoReturn:
        arrived.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    provider.experts.host.call = call  # type: ignore[method-assign]
    return arrived


async def test_a_prompt_is_answered_by_the_peer_that_hosts_its_domain(tmp_path: Path) -> None:
    dirs = make_node_dirs(tmp_path, 3, hosts=[[], ["mathematics"], ["coding"]])
    math_id = experts.find("mathematics").expert_id
    with trio.fail_after(60):
        async with running_nodes(dirs) as nodes:
            await connect_all(nodes)
            a, b, _ = nodes
            await knows(a, b, math_id)
            answer = await a.experts.inference.generate("457+268=", max_tokens=8)
            assert answer.provider == b.peer_id and answer.domain == "mathematics"
            assert answer.text is not None and answer.text.strip() == "725"
            assert (answer.tokens_in, answer.tokens_out) == (8, len(answer.text.encode()))
            listing = a.experts.listing()
            assert any(
                r["provider"] == b.peer_id and r["domain"] == "mathematics"
                for r in listing["remote"]
            )


async def test_tensor_call_and_failover_when_a_provider_dies(tmp_path: Path) -> None:
    dirs = make_node_dirs(tmp_path, 3, hosts=[[], ["ffn64"], ["ffn64"]])
    ffn = experts.build_ffn(64, seed=0)
    rows = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
    with trio.fail_after(60):
        async with running_nodes(dirs[:1] + dirs[2:]) as (a, c):
            async with running_nodes(dirs[1:2]) as (b,):
                await connect_all([a, b, c])
                await knows(a, b, ffn64_id())
                await knows(a, c, ffn64_id())
                answer = await a.experts.inference.tensor(ffn64_id(), rows)
                assert answer.array is not None
                np.testing.assert_allclose(answer.array, ffn.forward(rows), rtol=1e-5, atol=1e-5)
                first = answer.provider
            # b is gone: it leaves a's directory at once, and calls go to c
            await a.peers.wait_disconnected(b.peer_id)
            assert all(
                listing.provider != b.peer_id
                for listing in a.experts.directory.providers(now_ms=a.experts._now_ms())
            )
            answer = await a.experts.inference.tensor(ffn64_id(), rows, deadline_s=5)
            assert answer.provider == c.peer_id
            assert first in (b.peer_id, c.peer_id)


async def test_a_provider_killed_mid_request_is_replaced_within_the_deadline(
    tmp_path: Path,
) -> None:
    dirs = make_node_dirs(tmp_path, 3, hosts=[[], ["mathematics"], ["mathematics"]])
    math_id = experts.find("mathematics").expert_id
    answers = []
    with trio.fail_after(60):
        # b gets its own block: leaving it stops b while a's call is still open
        ac, b_only = [dirs[0], dirs[2]], dirs[1:2]
        async with running_nodes(ac) as (a, c), trio.open_nursery() as nursery:  # noqa: SIM117
            async with running_nodes(b_only) as (b,):
                await connect_all([a, b, c])
                await knows(a, b, math_id)
                await knows(a, c, math_id)
                # b takes the call and never answers; c answers at once
                arrived = hang(b)
                # rank b first so the call goes to it
                a.experts.directory.record(c.peer_id, math_id, ok=False, latency_s=1.0)

                async def ask() -> None:
                    answers.append(
                        await a.experts.inference.generate(
                            "457+268=", domain="mathematics", deadline_s=20
                        )
                    )

                nursery.start_soon(ask)
                await arrived.wait()
            # b stopped with the call open: a's call fails over to c
    (answer,) = answers
    assert answer.provider == c.peer_id and answer.text is not None
    assert [p for p, _ in answer.attempts] == [b.peer_id, c.peer_id]


async def test_hedging_races_a_second_provider_past_a_slow_one(tmp_path: Path) -> None:
    dirs = make_node_dirs(tmp_path, 3, hosts=[[], ["mathematics"], ["mathematics"]])
    math_id = experts.find("mathematics").expert_id
    with trio.fail_after(60):
        async with running_nodes(dirs) as (a, b, c):
            await connect_all([a, b, c])
            await knows(a, b, math_id)
            await knows(a, c, math_id)
            slow = hang(b)
            a.experts.directory.record(c.peer_id, math_id, ok=False, latency_s=1.0)  # b first
            answer = await a.experts.inference.generate(
                "457+268=", domain="mathematics", deadline_s=30, hedge_after_s=0.2
            )
            assert slow.is_set() and answer.provider == c.peer_id
            assert answer.text is not None and answer.text.strip() == "725"
            assert b.peer_id in {e.peer_id for e in a.peers.connected_members()}


async def test_an_unsure_router_asks_three_domains_and_combines(tmp_path: Path) -> None:
    dirs = make_node_dirs(tmp_path, 2, hosts=[[], list(experts.DOMAINS)])
    prompt = "compute 12+7 in python"
    decision = experts.load_router(experts.zoo.zoo_path("router")).decide(prompt)
    assert decision.consensus  # the gate is unsure about this one (see experts/router.py)
    with trio.fail_after(60):
        async with running_nodes(dirs) as (a, b):
            await connect_all([a, b])
            await knows(a, b, experts.find("coding").expert_id)
            answer = await a.experts.inference.generate(prompt, max_tokens=16)
    assert answer.consensus is not None
    asked = {entry["domain"] for entry in answer.consensus["asked"]}
    assert asked == {route.domain for route in decision.routes}
    assert answer.domain in asked and answer.provider == b.peer_id
