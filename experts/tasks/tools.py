"""tool_use: a request in words -> one JSON tool call.

`weather in Oslo` -> `{"tool":"weather","city":"Oslo"}`. Four tools (weather, time,
convert, define), several phrasings each; names are real or made-up words so the model
has to copy from the request rather than recall. The metric is the share of outputs that
are a valid call: JSON, a known tool, exactly its arguments with the right types. Exact
match (the right arguments too) is recorded as a secondary score.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping

from experts.tasks.base import Example, GeneratedTask

CITIES = [
    "Oslo",
    "Paris",
    "Lima",
    "Cairo",
    "Tokyo",
    "Quito",
    "Rome",
    "Delhi",
    "Dakar",
    "Lagos",
    "Accra",
    "Seoul",
    "Hanoi",
    "Perth",
    "Bern",
    "Riga",
    "Kyiv",
    "Baku",
    "Doha",
    "Male",
    "Suva",
    "Apia",
    "Nuuk",
    "Turku",
    "Basel",
    "Porto",
    "Cork",
    "Leeds",
    "Graz",
    "Lyon",
    "Nice",
]
WORDS = [
    "lantern",
    "harbor",
    "meadow",
    "quartz",
    "ember",
    "glacier",
    "orchid",
    "saddle",
    "thimble",
    "walnut",
    "beacon",
    "cobalt",
    "fjord",
    "gravel",
    "hollow",
    "juniper",
    "kettle",
    "ledger",
    "marble",
    "nectar",
    "pebble",
    "quiver",
    "ripple",
    "sorrel",
    "tundra",
    "velvet",
    "willow",
    "zephyr",
    "anchor",
    "bramble",
]
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NOK", "SEK", "INR")
PHRASES: Mapping[str, tuple[str, ...]] = {
    "weather": (
        "weather in {city}",
        "what's the weather in {city}?",
        "forecast for {city}",
        "is it raining in {city}?",
    ),
    "time": (
        "time in {city}",
        "what time is it in {city}?",
        "local time in {city}",
        "clock in {city}",
    ),
    "convert": (
        "convert {amount} {src} to {dst}",
        "{amount} {src} in {dst}",
        "how much is {amount} {src} in {dst}?",
    ),
    "define": (
        "define {word}",
        "what does {word} mean?",
        "meaning of {word}",
        "definition of {word}",
    ),
}
ARGS: Mapping[str, tuple[str, ...]] = {
    "weather": ("city",),
    "time": ("city",),
    "convert": ("amount", "from", "to"),
    "define": ("word",),
}
_CODE = re.compile(r"[A-Z]{3}")


def _made_up(rng: random.Random) -> str:
    syllables = [
        rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 3))
    ]
    return "".join(syllables)


def _make(rng: random.Random) -> Example:
    tool = rng.choice(sorted(PHRASES))
    template = rng.choice(PHRASES[tool])
    city = rng.choice(CITIES) if rng.random() < 0.5 else _made_up(rng).capitalize()
    word = rng.choice(WORDS) if rng.random() < 0.5 else _made_up(rng)
    amount = rng.randint(1, 999)
    src, dst = rng.sample(CURRENCIES, 2)
    prompt = template.format(city=city, word=word, amount=amount, src=src, dst=dst)
    call: dict[str, object] = {"tool": tool}
    if tool in ("weather", "time"):
        call["city"] = city
    elif tool == "define":
        call["word"] = word
    else:
        call.update({"amount": amount, "from": src, "to": dst})
    return Example(prompt, json.dumps(call, separators=(",", ":")))


_VALID: Mapping[str, Callable[[object], bool]] = {
    "city": lambda v: isinstance(v, str) and bool(v.strip()),
    "word": lambda v: isinstance(v, str) and bool(v.strip()),
    "amount": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "from": lambda v: isinstance(v, str) and bool(_CODE.fullmatch(v)),
    "to": lambda v: isinstance(v, str) and bool(_CODE.fullmatch(v)),
}


def valid_call(output: str) -> bool:
    """JSON object naming a known tool with exactly its arguments, each of the right type."""
    try:
        call = json.loads(output)
    except ValueError:
        return False
    if not isinstance(call, dict) or call.get("tool") not in ARGS:
        return False
    params = ARGS[call["tool"]]
    if set(call) != {"tool", *params}:
        return False
    return all(_VALID[p](call[p]) for p in params)


def _score(example: Example, output: str) -> float:
    return 1.0 if valid_call(output) else 0.0


TOOLS = GeneratedTask(
    domain="tool_use", metric="valid_tool_call", max_tokens=64, make=_make, scorer=_score
)
