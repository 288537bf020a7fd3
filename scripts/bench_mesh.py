"""Benchmark: how fast a loopback mesh forms, and what an idle node costs.

Starts `swarm-node mesh --nodes N --detach` in a temporary dir, times it from launch to
"every node sees every other", then samples each daemon's RSS and CPU time from /proc over
an idle window. The reference point measured in the same run is a bare Python interpreter
that imports the same libraries and sleeps: the floor no node can go below.

Prints one JSON object: mesh_nodes, mesh_form_s, idle_rss_mb_max, idle_cpu_pct_max (and the
floor and per-node figures).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


def sample(pids: list[int], window_s: float) -> list[tuple[float, float]]:
    """(rss MB, cpu %) of each pid over `window_s` of wall time."""
    before = [cpu_seconds(p) for p in pids]
    start = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - start
    return [
        (rss_mb(p), 100 * (cpu_seconds(p) - b) / elapsed) for p, b in zip(pids, before, strict=True)
    ]


def floor_process() -> subprocess.Popen[bytes]:
    code = (
        "import libp2p, libp2p.pubsub.gossipsub, libp2p.kad_dht.kad_dht, hypercorn.trio, "
        "starlette, numpy, trio, time; time.sleep(3600)"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--idle-s", type=float, default=20.0, help="idle sampling window")
    parser.add_argument("--settle-s", type=float, default=5.0, help="wait after forming")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-mesh-") as tmp:
        mesh_dir = Path(tmp) / "mesh"
        cli = [sys.executable, "-m", "node", "mesh", "--dir", str(mesh_dir)]
        floor = floor_process()
        start = time.monotonic()
        out = subprocess.run(
            [*cli, "--nodes", str(args.nodes), "--detach", "--json", "--timeout", "120"],
            capture_output=True,
            text=True,
            check=False,
        )
        form_s = time.monotonic() - start
        if out.returncode != 0:
            floor.kill()
            sys.exit(f"mesh failed to form: {out.stderr}")
        try:
            pids = [n["pid"] for n in json.loads(out.stdout)["nodes"]]
            time.sleep(args.settle_s)  # let start-up work (dials, first pings) finish
            samples = sample([*pids, floor.pid], args.idle_s)
        finally:
            subprocess.run([*cli, "stop"], capture_output=True, check=False)
            floor.kill()
        nodes, floor_sample = samples[:-1], samples[-1]
        print(
            json.dumps(
                {
                    "mesh_nodes": args.nodes,
                    "mesh_form_s": round(form_s, 2),
                    "idle_rss_mb_max": round(max(r for r, _ in nodes), 1),
                    "idle_cpu_pct_max": round(max(c for _, c in nodes), 2),
                    "idle_cpu_pct_mean": round(sum(c for _, c in nodes) / len(nodes), 2),
                    "floor_rss_mb": round(floor_sample[0], 1),
                    "floor_cpu_pct": round(floor_sample[1], 2),
                    "idle_window_s": args.idle_s,
                    "targets": {"mesh_form_s": 20, "idle_rss_mb_max": 120, "idle_cpu_pct_max": 2},
                }
            )
        )


if __name__ == "__main__":
    main()
