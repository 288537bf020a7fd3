"""kill -9 of a daemon under load, then restart: nothing accepted is lost (subprocess)."""

from __future__ import annotations

import json
import os
import select
import signal
import threading
from pathlib import Path

import pytest

from node.client import Client
from tests.node.test_cli import Daemon, cli, running

pytestmark = pytest.mark.subprocess


def test_kill_9_under_load_loses_nothing_accepted(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    out = cli(
        "mesh",
        "--nodes",
        "3",
        "--dir",
        str(mesh),
        "--detach",
        "--json",
        "--scheme",
        "ed25519",
        "--preset",
        "fast",
        timeout=120,
    )
    nodes = json.loads(out.stdout)["nodes"]
    sender, victim = Client(Path(nodes[0]["data_dir"])), Path(nodes[1]["data_dir"])
    to = json.loads(cli("status", "--data-dir", str(victim), "--json").stdout)["account"]
    sent: list[str] = []
    stop, under_way = threading.Event(), threading.Event()

    def load() -> None:  # a steady stream of transfers while the victim dies and returns
        while not stop.is_set() and len(sent) < 400:
            sent.append(sender.transfer(to, 1)["tx_id"])
            if len(sent) == 20:
                under_way.set()

    restarted = None
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        victim_client = Client(victim)
        assert under_way.wait(timeout=60)
        victim_client.tx(sent[10], wait_s=30)  # the victim has accepted some of the load
        before = {t: victim_client.tx(t)["status"] for t in list(sent)}
        applied_before = {t for t, s in before.items() if s == "applied"}
        assert applied_before
        pidfd = os.pidfd_open(nodes[1]["pid"])
        os.kill(nodes[1]["pid"], signal.SIGKILL)
        assert select.select([pidfd], [], [], 30)[0], "the victim did not die"
        os.close(pidfd)
        assert not running(nodes[1]["pid"])
        restarted = Daemon(victim)
        stop.set()
        loader.join(timeout=60)
        after = Client(victim)
        for t in applied_before:  # accepted is forever, across kill -9
            assert after.tx(t)["status"] == "applied"
        for n in nodes:  # and everything sent is accepted everywhere in the end
            client = Client(Path(n["data_dir"]))
            assert client.tx(sent[-1], wait_s=60)["status"] == "applied"
        balances = [Client(Path(n["data_dir"])).balances() for n in nodes]
        assert balances[0] == balances[1] == balances[2]
        received = {r["account"]: r["balance"] for r in balances[0]}[to]
        assert received == 1_000_000 + len(sent)
    finally:
        stop.set()
        cli("mesh", "stop", "--dir", str(mesh), check=False)
        if restarted is not None:
            restarted.stop()
