from __future__ import annotations

import io
import json
import logging

from node.logs import setup_logging


def test_json_logs_are_one_object_per_line() -> None:
    out = io.StringIO()
    setup_logging("json", "info", stream=out)
    try:
        logging.getLogger("swarm.test").info("peer %s joined", "n1")
        logging.getLogger("swarm.test").debug("not shown at info")
        logging.getLogger("libp2p.swarm").error("library churn stays out")
    finally:
        logging.getLogger().handlers.clear()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert (
        doc["msg"] == "peer n1 joined" and doc["level"] == "info" and doc["logger"] == "swarm.test"
    )


def test_text_logs_are_for_people() -> None:
    out = io.StringIO()
    setup_logging("text", "info", stream=out)
    try:
        logging.getLogger("swarm.test").warning("refused peer x: genesis mismatch")
    finally:
        logging.getLogger().handlers.clear()
    assert "WARNING swarm.test: refused peer x: genesis mismatch" in out.getvalue()
