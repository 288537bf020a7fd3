"""Every protocol id and gossipsub topic swarm-node speaks, in one place."""

from __future__ import annotations

HELLO = "/swarm/hello/1.0.0"
DAG_SYNC = "/swarm/dag/sync/1.0.0"
DAG_QUERY = "/swarm/dag/query/1.0.0"
INFER = "/swarm/infer/1.0.0"
MARKET = "/swarm/market/1.0.0"

TOPIC_DAG = "swarm/dag/1"
TOPIC_EXPERTS = "swarm/experts/1"
