"""Micro-experts: the file format, the numpy runtime, int8 compression, the trained zoo,
the router and its consensus rule. Imports no networking (see shared/DESIGN.md).

The calls the CLI and the network layer need:

- `load_expert(path, expect_id=None)`: verify and compile a file -> TensorExpert | GeneratorExpert
- `GeneratorExpert.generate(prompt, max_tokens=, temperature=, top_k=, seed=)` -> Generation
  (text, tokens_in, tokens_out); `TensorExpert.forward(rows)` -> array
- `count_tokens(text)`: the billed token count, the same on both peers of a call
- `list_zoo()`, `find(domain_or_id)`, `Zoo.load()`: the shipped experts
- `load_router(path)`, `Router.decide(text)`, `combine(answers)`: routing and consensus
- `quantize_file(src, dst)`, `evaluate_expert(expert)`, `analyze(path)`, `format_table(report)`
- `local_infer(text, max_tokens=, seed=)`: route and answer with no network
"""

from __future__ import annotations

from experts.analysis import analyze, format_table
from experts.directory import Directory, Listing, Offer, Stats
from experts.errors import ExpertError, ExpertFormatError, ExpertInputError, ExpertNotFound
from experts.evaluate import evaluate_expert
from experts.ffn import build_ffn
from experts.format import ExpertFile, load_bytes, load_file, save
from experts.local import LocalResult, local_infer
from experts.manifest import DOMAINS, Evaluation, Limits, Manifest
from experts.quantize import quantize_file
from experts.router import Answer, Consensus, Decision, Route, Router, combine, load_router
from experts.runtime import Expert, Generation, GeneratorExpert, TensorExpert, load_expert
from experts.tokens import count_tokens
from experts.zoo import ZOO_DIR, Zoo, ZooEntry, find, list_zoo, load_generator

__all__ = [
    "Directory",
    "Listing",
    "Offer",
    "Stats",
    "DOMAINS",
    "ZOO_DIR",
    "Answer",
    "Consensus",
    "Decision",
    "Evaluation",
    "Expert",
    "ExpertError",
    "ExpertFile",
    "ExpertFormatError",
    "ExpertInputError",
    "ExpertNotFound",
    "Generation",
    "GeneratorExpert",
    "Limits",
    "LocalResult",
    "Manifest",
    "Route",
    "Router",
    "TensorExpert",
    "Zoo",
    "ZooEntry",
    "analyze",
    "build_ffn",
    "combine",
    "count_tokens",
    "evaluate_expert",
    "find",
    "format_table",
    "list_zoo",
    "load_bytes",
    "load_expert",
    "load_file",
    "load_generator",
    "load_router",
    "local_infer",
    "quantize_file",
    "save",
]
