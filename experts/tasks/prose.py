"""language: English prose from the docstrings that ship with Python's standard library.

Sentences are cut from the paragraphs of module, class and function docstrings of the
stdlib (ASCII, 30 to 160 characters, mostly letters: code examples are left out). The
split is by module, so the eval text comes from modules the model never read. The metric
is next-character accuracy on that text, each character predicted from the ones before
it in its sentence (teacher forcing); bits per character are recorded too. Always
predicting a space scores about 16.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

from experts.tasks.base import Example, Split, held_out, rng_for

MIN_CHARS, MAX_CHARS = 30, 160


SKIP = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "turtledemo"}


def _modules() -> list[tuple[str, Path]]:
    """Stdlib modules with their names relative to the library (the key of the split),
    sorted so every run sees the same order. Test suites are skipped: not prose."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if SKIP.isdisjoint(rel.parts) and not rel.name.startswith("_"):
            found.append((rel.as_posix(), path))
    return sorted(found)


_SENTENCE_END = re.compile(r"(?<=[.!?]) +(?=[A-Z])")
MIN_LETTER_SHARE = 0.8


def _is_prose(text: str) -> bool:
    if not (MIN_CHARS <= len(text) <= MAX_CHARS and text.isascii() and text.isprintable()):
        return False
    letters = sum(c.isalpha() or c == " " for c in text)
    return letters >= MIN_LETTER_SHARE * len(text) and not text.startswith(">>>")


def sentences(path: Path) -> list[str]:
    """The prose sentences of the docstrings in one module, one line each."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        for paragraph in doc.split("\n\n"):
            text = " ".join(paragraph.split())
            out.extend(s for s in _SENTENCE_END.split(text) if _is_prose(s))
    return out


class Prose:
    domain = "language"
    metric = "next_char_accuracy_unseen_modules"
    max_tokens = 160
    teacher_forced = True

    def examples(self, split: Split, n: int, seed: int) -> list[Example]:
        """Whole sentences as answers to an empty prompt, from modules of `split` only.

        Modules are visited in a seeded order and read only until `n` sentences are found,
        so a small eval set costs a few files, not the whole library.
        """
        rng: random.Random = rng_for(self.domain, split, seed)
        modules = [p for name, p in _modules() if held_out(name) == (split == "eval")]
        rng.shuffle(modules)
        out: list[Example] = []
        for module in modules:
            out.extend(Example("", s) for s in sentences(module))
            if len(out) >= n:
                break
        rng.shuffle(out)
        return out[:n]

    def score(self, example: Example, output: str) -> float:
        """Share of the answer's characters predicted right (`output` is the predictions)."""
        hits = sum(a == b for a, b in zip(output, example.answer, strict=False))
        return hits / max(1, len(example.answer))
