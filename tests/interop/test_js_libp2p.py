"""Interop: a js-libp2p peer dials a swarm-node, pings and identifies it, and reads and
verifies its expert announcements on `swarm/experts/1` from WIRE.md alone (issue 5).

The js side is `js/read_announcement.mjs`; its packages are installed by `scripts/setup.sh`
(`npm ci` in `tests/interop/js`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio

import experts
from node.config import load_config
from node.daemon import Node, build_node
from protocols import ids
from tests.factory import make_node_dirs

pytestmark = pytest.mark.subprocess
JS_DIR = Path(__file__).parent / "js"
SCRIPT = JS_DIR / "read_announcement.mjs"
JS_TIMEOUT_S = 30.0


def node_binary() -> str:
    found = shutil.which("node")
    if found is None or shutil.which("npm") is None:
        pytest.skip("Node.js (node and npm) is not on PATH: the js-libp2p interop test needs it")
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        pytest.fail(f"js-libp2p is not installed in {JS_DIR}: run scripts/setup.sh (npm ci there)")
    return found


@asynccontextmanager
async def provider(tmp_path: Path, domain: str) -> AsyncIterator[Node]:
    """One node hosting the `domain` expert, re-announcing every 0.5 s (not 5 s), so that
    the js peer hears one soon after it joins the topic's mesh."""
    (data_dir,) = make_node_dirs(tmp_path, 1, hosts=[[domain]])
    node = build_node(load_config(data_dir))
    node.experts.settings = replace(node.experts.settings, announce_every_s=0.5)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        yield node
        nursery.cancel_scope.cancel()


async def read_with_js(node: Node) -> dict[str, object]:
    addr = node.p2p.addrs()[0]
    result = await trio.run_process(
        [node_binary(), str(SCRIPT), addr, str(int(JS_TIMEOUT_S * 1000))],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"js-libp2p peer failed: {stderr}"
    seen: dict[str, object] = json.loads(result.stdout.decode())
    return seen


async def test_a_js_libp2p_peer_pings_identifies_and_decodes_announcements(
    tmp_path: Path,
) -> None:
    math = experts.find("mathematics")
    with trio.fail_after(JS_TIMEOUT_S + 30):
        async with provider(tmp_path, "mathematics") as node:
            seen = await read_with_js(node)
            addrs = node.p2p.addrs()

    assert seen["transport"] == {"encryption": "/noise", "multiplexer": "/yamux/1.0.0"}
    assert isinstance(seen["ping_ms"], int | float) and seen["ping_ms"] >= 0

    identify = seen["identify"]
    assert isinstance(identify, dict)
    assert identify["peer_id"] == node.peer_id
    assert identify["agent"], "identify gave no agent version"
    protocols = set(identify["protocols"])
    needed = {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0", ids.HELLO, ids.INFER}
    assert needed <= protocols, f"identify lacks {needed - protocols}"

    # StrictSign: js-libp2p checked the message's signature against its `from`.
    assert seen["pubsub"] == {"topic": ids.TOPIC_EXPERTS, "type": "signed", "from": node.peer_id}

    ann = seen["announcement"]
    assert isinstance(ann, dict)
    assert ann["peer_id"] == node.peer_id
    assert ann["scheme"] == int(node.keys.account.scheme)
    assert ann["account"] == node.keys.account.account_id.hex()
    assert set(ann["addrs"]) == set(addrs[:8])
    assert ann["offers"] == [
        {
            "expert_id": math.expert_id,
            "domain": "mathematics",
            "kind": "generator",
            "price_per_1k": node.experts.settings.price_per_1k,
            "capacity": node.experts.host.limits.queue_per_expert,
            "queue_depth": 0,
            "latency_us": 0,
        }
    ]
