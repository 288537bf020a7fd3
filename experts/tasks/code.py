"""coding: complete a Python function from its signature.

`def scale_total(items, n):\n` -> an indented body (assignments, if, for, return). The
corpus comes from a small grammar of Python; the metric is the share of completions
after which the whole function parses (`ast.parse`), on signatures held out by name and
arguments. Output that runs past max_tokens without ending is counted as a failure.
"""

from __future__ import annotations

import ast
import random

from experts.tasks.base import Example, GeneratedTask

VERBS = [
    "get",
    "count",
    "scale",
    "merge",
    "find",
    "check",
    "sum",
    "pick",
    "clip",
    "load",
    "make",
    "split",
]
NOUNS = [
    "total",
    "items",
    "value",
    "data",
    "index",
    "names",
    "score",
    "row",
    "limit",
    "size",
    "parts",
    "text",
]
ARGS = ["a", "b", "n", "x", "y", "items", "data", "value", "size", "key"]


def _expr(rng: random.Random, names: list[str]) -> str:
    a, b = rng.choice(names), rng.choice(names)
    forms = (
        a,
        str(rng.randint(0, 9)),
        f"{a} + {b}",
        f"{a} * {rng.randint(2, 9)}",
        f"len({a})",
        f"abs({a})",
        f"max({a}, {b})",
        f"({a} - {b})",
        f"[{a}, {b}]",
    )
    return rng.choice(forms)


def _body(rng: random.Random, names: list[str], indent: str) -> list[str]:
    lines: list[str] = []
    for _ in range(rng.randint(0, 2)):
        kind = rng.random()
        if kind < 0.4:
            var = rng.choice(["result", "total", "tmp", "acc"])
            lines.append(f"{indent}{var} = {_expr(rng, names)}")
            names = [*names, var]
        elif kind < 0.7:
            op = rng.choice(["<", ">", "==", "!="])
            lines.append(f"{indent}if {rng.choice(names)} {op} {_expr(rng, names)}:")
            lines.append(f"{indent}    return {_expr(rng, names)}")
        else:
            item = rng.choice(["item", "part", "elem"])
            lines.append(f"{indent}for {item} in {rng.choice(names)}:")
            lines.append(f"{indent}    {rng.choice(names)} += {item}")
    lines.append(f"{indent}return {_expr(rng, names)}")
    return lines


def _make(rng: random.Random) -> Example:
    name = f"{rng.choice(VERBS)}_{rng.choice(NOUNS)}"
    args = rng.sample(ARGS, rng.randint(1, 3))
    prompt = f"def {name}({', '.join(args)}):\n"
    return Example(prompt, "\n".join(_body(rng, args, "    ")) + "\n")


def parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


def _score(example: Example, output: str) -> float:
    return 1.0 if parses(example.prompt + output) else 0.0


CODE = GeneratedTask(
    domain="coding", metric="parses_as_python", max_tokens=200, make=_make, scorer=_score
)
