"""How commands print: JSON for `--json`, plain text and aligned tables for people."""

from __future__ import annotations

import json
from typing import Any


def emit(doc: Any, as_json: bool, human: str) -> None:
    print(json.dumps(doc, indent=2) if as_json else human)


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
