"""Every protocol id and gossipsub topic swarm-node speaks, in one place."""

from __future__ import annotations

HELLO = "/swarm/hello/1.0.0"
DAG_SYNC = "/swarm/dag/sync/1.0.0"
DAG_QUERY = "/swarm/dag/query/1.0.0"
# New vertices straight to each peer, on meshes small enough that one hop reaches everyone.
DAG_PUSH = "/swarm/dag/push/1.0.0"
INFER = "/swarm/infer/1.0.0"
# Ask a peer for its current expert announcement (one found through the DHT).
ANNOUNCE = "/swarm/announce/1.0.0"
MARKET = "/swarm/market/1.0.0"

TOPIC_DAG = "swarm/dag/1"
TOPIC_EXPERTS = "swarm/experts/1"
