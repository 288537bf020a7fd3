from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_libp2p() -> None:
    # py-libp2p logs routine peer churn as errors; keep test output about our code.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
