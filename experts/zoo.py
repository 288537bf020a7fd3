"""The shipped zoo: six generators (float32 and int8 files) and the router, in experts/zoo.

Files are named `<domain>.f32.npz`, `<domain>.int8.npz` and `router.npz`. Everything is
verified on load like any other expert file; a caller that wants another directory (a
node's data dir, a test's tmp_path) passes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from experts.errors import ExpertInputError, ExpertNotFound
from experts.format import load_file
from experts.manifest import DOMAINS, Manifest
from experts.router import Router, load_router
from experts.runtime import GeneratorExpert, from_file

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
ROUTER_FILE = "router.npz"
Precision = Literal["f32", "int8"]
PRECISIONS: tuple[Precision, ...] = ("f32", "int8")


@dataclass(frozen=True)
class ZooEntry:
    """One shipped file, verified."""

    path: Path
    expert_id: str
    manifest: Manifest
    precision: Precision | None  # None for the router


def zoo_path(domain: str, precision: Precision = "int8", zoo_dir: Path = ZOO_DIR) -> Path:
    """Where the zoo keeps a domain's file (or the router's, for domain "router")."""
    if domain == "router":
        return zoo_dir / ROUTER_FILE
    if domain not in DOMAINS or precision not in PRECISIONS:
        raise ExpertNotFound(f"no zoo expert for {domain!r} at {precision!r}")
    return zoo_dir / f"{domain}.{precision}.npz"


def list_zoo(zoo_dir: Path = ZOO_DIR) -> list[ZooEntry]:
    """Every shipped file that exists, verified, in domain order, then the router."""
    entries = []
    for domain in (*DOMAINS, "router"):
        for precision in (None,) if domain == "router" else PRECISIONS:
            path = zoo_path(domain, precision or "int8", zoo_dir)
            if path.exists():
                ef = load_file(path)
                entries.append(ZooEntry(path, ef.expert_id, ef.manifest, precision))
    return entries


def find(key: str, zoo_dir: Path = ZOO_DIR, precision: Precision = "int8") -> ZooEntry:
    """A zoo file by domain (at `precision`) or by expert id (a unique prefix of 8+ hex)."""
    if key in DOMAINS or key == "router":
        path = zoo_path(key, precision, zoo_dir)
        if not path.exists():
            raise ExpertNotFound(f"the zoo has no file {path.name}")
        ef = load_file(path)
        return ZooEntry(path, ef.expert_id, ef.manifest, None if key == "router" else precision)
    if len(key) < 8:
        raise ExpertInputError("an id prefix needs at least 8 characters", limit=8, got=len(key))
    hits = [e for e in list_zoo(zoo_dir) if e.expert_id.startswith(key.lower())]
    if len(hits) != 1:
        raise ExpertNotFound(f"{len(hits)} zoo experts match {key!r}", expert_id=key)
    return hits[0]


def load_generator(
    domain: str, precision: Precision = "int8", zoo_dir: Path = ZOO_DIR
) -> GeneratorExpert:
    """A domain's generator, ready to run."""
    expert = from_file(load_file(zoo_path(domain, precision, zoo_dir)))
    assert isinstance(expert, GeneratorExpert)  # zoo files are generators by construction
    return expert


@dataclass(frozen=True, eq=False)
class Zoo:
    """The router and all six generators, loaded once (what `infer --local` runs on)."""

    router: Router
    experts: dict[str, GeneratorExpert]

    @classmethod
    def load(cls, zoo_dir: Path = ZOO_DIR, precision: Precision = "int8") -> Zoo:
        return cls(
            router=load_router(zoo_dir / ROUTER_FILE),
            experts={d: load_generator(d, precision, zoo_dir) for d in DOMAINS},
        )
