"""The package boundary of shared/DESIGN.md: experts imports no networking and no torch."""

from __future__ import annotations

import subprocess
import sys


def test_importing_experts_pulls_in_no_networking_or_torch() -> None:
    code = (
        "import sys, experts; experts.Zoo; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'trio', 'libp2p', 'node', 'protocols', 'torch', 'socket', 'asyncio'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
