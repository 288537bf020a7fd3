"""The CLI against real daemons, each its own process (marked `subprocess`)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.subprocess
READY_TIMEOUT_S = 30.0


def cli(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"swarm-node {' '.join(args)} failed: {result.stderr}")
    return result


class Daemon:
    """A `swarm-node start` process; ready once it writes its status line to our pipe."""

    def __init__(self, data_dir: Path) -> None:
        read_fd, write_fd = os.pipe()
        self.log = open(data_dir / "test.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node",
                "start",
                "--data-dir",
                str(data_dir),
                "--ready-fd",
                str(write_fd),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        with os.fdopen(read_fd) as ready:
            readable, _, _ = select.select([ready], [], [], READY_TIMEOUT_S)
            line = ready.readline() if readable else ""
        if not line:
            self.proc.kill()
            raise AssertionError(f"daemon did not start: {(data_dir / 'test.log').read_text()}")
        self.status = json.loads(line)
        self.data_dir = data_dir

    def stop(self, sig: int = signal.SIGTERM, *, within_s: float = 10.0) -> int:
        """Signal the daemon; its exit status, or TimeoutExpired if it takes over `within_s`."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=within_s)
        finally:
            self.log.close()


def running(pid: int) -> bool:
    """True while `pid` runs; a zombie left for a non-reaping init does not count."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def test_version() -> None:
    assert cli("--version").stdout.strip() == "swarm-node 0.1.0"


def test_two_daemons_connect_through_the_cli_and_stop_on_sigterm(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    cli("init", "--data-dir", str(a), "--name", "alpha")
    cli(
        "init",
        "--data-dir",
        str(b),
        "--name",
        "beta",
        "--scheme",
        "ed25519",
        "--genesis",
        str(a / "genesis.json"),
    )
    assert "already exists" in cli("init", "--data-dir", str(a), check=False).stderr
    daemons += [Daemon(a), Daemon(b)]
    da, db = daemons

    out = cli("connect", "--data-dir", str(b), da.status["addrs"][0])
    assert "connected to alpha" in out.stdout
    peers = json.loads(cli("peers", "--data-dir", str(a), "--json").stdout)["peers"]
    assert [(p["name"], p["connected"], p["member"]) for p in peers] == [("beta", True, True)]
    status = json.loads(cli("status", "--data-dir", str(b), "--json").stdout)
    assert status["peer_id"] == db.status["peer_id"] and status["scheme"] == "ed25519"
    assert status["members_connected"] == 1
    assert "peer id" in cli("status", "--data-dir", str(a)).stdout

    for d in (da, db):
        assert d.stop(signal.SIGTERM, within_s=5.0) == 0  # the bound
        assert not (d.data_dir / "node.json").exists()
    assert "stopping" in (a / "test.log").read_text()

    gone = cli("status", "--data-dir", str(a), check=False)
    assert gone.returncode == 1 and "no swarm-node daemon is running" in gone.stderr


def test_sigint_stops_cleanly_too(tmp_path: Path, daemons: list[Daemon]) -> None:
    cli("init", "--data-dir", str(tmp_path))
    daemons.append(Daemon(tmp_path))
    assert daemons[0].stop(signal.SIGINT, within_s=5.0) == 0


def test_api_refuses_requests_without_the_token(tmp_path: Path, daemons: list[Daemon]) -> None:
    import http.client

    cli("init", "--data-dir", str(tmp_path))
    daemons.append(Daemon(tmp_path))
    port = daemons[0].status["api_port"]
    for headers in ({}, {"authorization": "Bearer wrong"}):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/v1/status", headers=headers)
        assert conn.getresponse().status == 401
        conn.close()


def test_broken_config_exits_2_before_starting(tmp_path: Path) -> None:
    cli("init", "--data-dir", str(tmp_path))
    config = tmp_path / "config.toml"
    config.write_text(config.read_text().replace("mdns = false", "mdns = false\nmdsn = true"))
    out = cli("start", "--data-dir", str(tmp_path), check=False, timeout=30)
    assert out.returncode == 2
    assert f"{config}: network.mdsn: unknown key" in out.stderr
    assert not (tmp_path / "node.json").exists()


def test_corrupt_key_exits_2_and_is_kept(tmp_path: Path) -> None:
    cli("init", "--data-dir", str(tmp_path))
    (tmp_path / "account.key").write_text("garbage")
    out = cli("start", "--data-dir", str(tmp_path), check=False, timeout=30)
    assert out.returncode == 2 and "account.key" in out.stderr
    assert (tmp_path / "account.key").read_text() == "garbage"


def test_mesh_detach_join_refuse_and_stop(tmp_path: Path, daemons: list[Daemon]) -> None:
    mesh = tmp_path / "mesh"
    out = cli("mesh", "--nodes", "3", "--dir", str(mesh), "--detach", "--json", timeout=120)
    try:
        nodes = json.loads(out.stdout)["nodes"]
        assert [n["name"] for n in nodes] == ["node-0", "node-1", "node-2"]
        genesis = json.loads((mesh / "genesis.json").read_text())
        assert len(genesis["accounts"]) == 3 and genesis["chain_id"].startswith("mesh-")

        # a paid-for transfer through the CLI is accepted, and every node agrees on balances
        n0 = nodes[0]["data_dir"]
        sent = json.loads(cli("transfer", "--data-dir", n0, "node-2", "1234", "--json").stdout)
        assert sent["status"] == "applied"
        for n in nodes:
            doc = json.loads(
                cli(
                    "balance",
                    "--all",
                    "--data-dir",
                    n["data_dir"],
                    "--json",
                    "--wait-for",
                    sent["tx_id"],
                ).stdout
            )
            assert {r["name"]: r["balance"] for r in doc["balances"]} == {
                "node-0": 1_000_000 - 1234,
                "node-1": 1_000_000,
                "node-2": 1_000_000 + 1234,
            }
            assert doc["totals"] == {"in_accounts": 3_000_000, "locked": 0, "supply": 3_000_000}
        shown = cli("balance", "--all", "--data-dir", n0).stdout
        assert shown.endswith("supply 3000000 = 3000000 in accounts + 0 locked in channels\n")
        status = json.loads(cli("dag", "status", "--data-dir", n0, "--json").stdout)
        assert status["accepted"] >= 1 and status["finality"]["count"] >= 1
        broke = cli("transfer", "--data-dir", n0, "node-1", str(10**9), check=False)
        assert broke.returncode == 1 and "spendable" in broke.stderr

        # peer-to-peer inference through the CLI: node-1 asks, node-0 serves mathematics
        listed = json.loads(cli("experts", "--data-dir", nodes[1]["data_dir"], "--json").stdout)
        assert any(
            r["domain"] == "mathematics" and r["provider"] == nodes[0]["peer_id"]
            for r in listed["remote"]
        )
        answer = json.loads(
            cli("infer", "--data-dir", nodes[1]["data_dir"], "457+268=", "--json").stdout
        )
        assert answer["text"].strip() == "725" and answer["provider"] == nodes[0]["peer_id"]
        assert answer["domain"] == "mathematics" and answer["tokens_in"] == 8

        joined = json.loads(cli("mesh", "join", "--dir", str(mesh), "--json", timeout=120).stdout)
        new = joined["nodes"][0]
        for n in nodes:
            peers = json.loads(cli("peers", "--data-dir", n["data_dir"], "--json").stdout)["peers"]
            members = {p["peer_id"] for p in peers if p["connected"] and p["member"]}
            assert new["peer_id"] in members and len(members) == 3

        # a node on another chain is refused, and both sides say why
        other = tmp_path / "other"
        cli("init", "--data-dir", str(other))
        daemons.append(Daemon(other))
        refused = cli("connect", "--data-dir", str(other), nodes[0]["addr"], check=False)
        assert refused.returncode == 1 and "genesis mismatch" in refused.stderr
        assert "refused peer" in (Path(nodes[0]["data_dir"]) / "node.log").read_text()
    finally:
        stopped = cli("mesh", "stop", "--dir", str(mesh))
    assert "stopped 4 node(s)" in stopped.stdout
    for n in [*nodes, new]:
        assert n["pid"] > 0 and not running(n["pid"])


def test_foreground_mesh_stops_every_node_on_ctrl_c(tmp_path: Path) -> None:
    mesh = tmp_path / "mesh"
    proc = subprocess.Popen(
        [sys.executable, "-m", "node", "mesh", "--nodes", "2", "--dir", str(mesh), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not (lines and lines[-1] == "}\n"):  # the JSON table ends the start-up
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line)
        pids = [n["pid"] for n in json.loads("".join(lines))["nodes"]]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        for pid in pids:
            assert not running(pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        cli("mesh", "stop", "--dir", str(mesh), check=False)  # never leave daemons behind


def test_experts_commands_and_local_inference(tmp_path: Path) -> None:
    listed = json.loads(cli("experts", "--json").stdout)["experts"]
    domains = {e["domain"] for e in listed}
    assert domains == {
        "reasoning",
        "coding",
        "language",
        "mathematics",
        "tool_use",
        "context",
        "router",
    }
    shown = json.loads(cli("experts", "show", "coding", "--json").stdout)
    assert shown["domain"] == "coding" and shown["manifest"]["kind"] == "generator"
    report = json.loads(cli("experts", "analyze", "mathematics", "--json").stdout)
    assert report["parameters"] > 0 and report["flops_per_token"] > 0
    answer = json.loads(cli("infer", "--local", "457+268=", "--json").stdout)
    assert answer["domain"] == "mathematics" and answer["text"].strip() == "725"
    assert answer["tokens_in"] == len("457+268=")
    src = tmp_path / "coding.f32.npz"
    src.write_bytes(Path(shown["path"]).with_name("coding.f32.npz").read_bytes())
    out = json.loads(cli("experts", "quantize", str(src), "--json").stdout)
    assert Path(out["path"]).stat().st_size * 3.5 < src.stat().st_size
    missing = cli("experts", "show", "nothing-like-this", check=False)
    assert missing.returncode == 1 and "swarm-node:" in missing.stderr
