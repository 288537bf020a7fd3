"""Train the zoo: six byte-level generators (one per domain) and the router.

Needs torch (the optional `train` extra; CPU is enough). The runtime never imports torch:
weights are exported into the expert format, scored with the numpy runtime on each
domain's held-out set, quantized to int8, scored again, and written to experts/zoo/.

    python scripts/train_zoo.py                 # everything, ~10-15 min on one core
    python scripts/train_zoo.py --only mathematics router
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.architecture import GeneratorShape, generator_manifest  # noqa: E402
from experts.evaluate import DEFAULT_N, DEFAULT_SEED, evaluate_expert, windows  # noqa: E402
from experts.features import featurize  # noqa: E402
from experts.format import ExpertFile, save  # noqa: E402
from experts.layers import Activation, Dense  # noqa: E402
from experts.manifest import DOMAINS, Evaluation, Manifest, count_parameters  # noqa: E402
from experts.quantize import quantize_expert  # noqa: E402
from experts.runtime import GeneratorExpert, from_file  # noqa: E402
from experts.tasks import all_tasks  # noqa: E402
from experts.tasks.routing import routing_examples  # noqa: E402
from experts.zoo import ZOO_DIR  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """How one domain's generator is sized and trained."""

    shape: GeneratorShape
    examples: int
    steps: int
    batch: int = 512
    lr: float = 3e-3
    weight_decay: float = 0.01


RECIPES = {
    "reasoning": Recipe(GeneratorShape(context=20, dim=16, hidden=256), 150_000, 6000),
    "coding": Recipe(GeneratorShape(context=48, dim=12, hidden=192), 20_000, 3000),
    "language": Recipe(
        GeneratorShape(context=48, dim=16, hidden=384), 100_000, 5000, weight_decay=0.1
    ),
    "mathematics": Recipe(
        GeneratorShape(context=12, dim=16, hidden=256, blocks=2), 150_000, 10_000
    ),
    "tool_use": Recipe(GeneratorShape(context=64, dim=12, hidden=192), 20_000, 4000),
    "context": Recipe(GeneratorShape(context=24, dim=16, hidden=256), 150_000, 8000),
}


class TorchGenerator(nn.Module):
    """The torch twin of experts.architecture.generator_layers, parameter for parameter."""

    def __init__(self, shape: GeneratorShape, vocab: int, outputs: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, shape.dim)
        self.inp = nn.Linear(shape.context * shape.dim, shape.hidden)
        # Plain lists for typed access, registered through ModuleLists for training.
        self.norm_list = [nn.LayerNorm(shape.hidden) for _ in range(shape.blocks)]
        self.block_list = [nn.Linear(shape.hidden, shape.hidden) for _ in range(shape.blocks)]
        self.norms = nn.ModuleList(self.norm_list)
        self.blocks = nn.ModuleList(self.block_list)
        self.out_norm = nn.LayerNorm(shape.hidden)
        self.out = nn.Linear(shape.hidden, outputs)
        self.act = nn.GELU(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(self.embed(x).flatten(1)))
        for norm, block in zip(self.norm_list, self.block_list, strict=True):
            h = h + self.act(block(norm(h)))
        logits: torch.Tensor = self.out(self.out_norm(h))
        return logits

    def export(self) -> dict[str, np.ndarray]:
        def a(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().numpy().astype(np.float32))

        w = {
            "embed.w": a(self.embed.weight),
            "inp.w": a(self.inp.weight.T),
            "inp.b": a(self.inp.bias),
            "out_norm.g": a(self.out_norm.weight),
            "out_norm.b": a(self.out_norm.bias),
            "out.w": a(self.out.weight.T),
            "out.b": a(self.out.bias),
        }
        for i, (norm, block) in enumerate(zip(self.norm_list, self.block_list, strict=True)):
            w[f"block{i}_norm.g"] = a(norm.weight)
            w[f"block{i}_norm.b"] = a(norm.bias)
            w[f"block{i}.w"] = a(block.weight.T)
            w[f"block{i}.b"] = a(block.bias)
        return w


def dataset(domain: str, recipe: Recipe, probe: GeneratorExpert) -> tuple[torch.Tensor, ...]:
    """All (window, next token) pairs of the training examples, as in evaluation."""
    task = all_tasks()[domain]
    examples = task.examples("train", recipe.examples, seed=1)
    if task.teacher_forced:
        # The same sentence can sit in two modules; keep eval text out of training.
        held = {e.answer for e in task.examples("eval", DEFAULT_N, DEFAULT_SEED)}
        examples = [e for e in examples if e.answer not in held]
    xs, ys = zip(*(windows(probe, e) for e in examples), strict=True)
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def train_domain(domain: str, recipe: Recipe, out_dir: Path, log: dict[str, object]) -> None:
    started = time.perf_counter()
    torch.manual_seed(0)
    manifest = generator_manifest(domain, recipe.shape)
    tok = manifest.tokenizer
    assert tok is not None
    model = TorchGenerator(recipe.shape, tok.vocab, manifest.output_dim)
    probe = from_file(ExpertFile(manifest, "probe", model.export()))
    assert isinstance(probe, GeneratorExpert)
    x, y = dataset(domain, recipe, probe)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(0)
    warm = recipe.steps // 20
    loss_avg = 0.0
    for step in range(recipe.steps):
        # Linear warm-up then cosine decay to zero: stable start, settled end.
        frac = step / recipe.steps
        lr = recipe.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(x), (recipe.batch,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        loss_avg = 0.98 * loss_avg + 0.02 * float(loss.detach())
        if step % 1000 == 0 or step == recipe.steps - 1:
            print(f"  {domain} step {step} loss {loss_avg:.3f}", flush=True)
    train_s = time.perf_counter() - started
    save_pair(domain, manifest, model.export(), out_dir, log, train_s)


def save_pair(
    domain: str,
    manifest: Manifest,
    weights: dict[str, np.ndarray],
    out_dir: Path,
    log: dict[str, object],
    train_s: float,
) -> None:
    """Score and save the float32 file, then its int8 twin with its own score."""
    f32 = from_file(ExpertFile(manifest, "unsaved", weights))
    ev32 = evaluate_expert(f32)
    m32 = dataclasses.replace(manifest, evaluation=ev32)
    id32 = save(out_dir / f"{domain}.f32.npz", m32, weights)
    m8, w8 = quantize_expert(ExpertFile(m32, id32, weights))
    ev8 = evaluate_expert(from_file(ExpertFile(m8, "unsaved", w8)))
    m8 = dataclasses.replace(m8, evaluation=ev8)
    save(out_dir / f"{domain}.int8.npz", m8, w8)
    log[domain] = {
        "train_s": round(train_s, 1),
        "eval_f32": ev32.score,
        "eval_int8": ev8.score,
        "extra_f32": dict(ev32.extra),
        "params": manifest.parameters,
    }
    print(
        f"{domain}: f32 {ev32.score} int8 {ev8.score} {dict(ev32.extra)} ({train_s:.0f} s)",
        flush=True,
    )


ROUTER_BUCKETS = 2048
ROUTER_HIDDEN = 64


def router_manifest(evaluation: Evaluation | None = None) -> Manifest:
    layers = (
        Dense("hidden", ROUTER_BUCKETS, ROUTER_HIDDEN),
        Activation("relu"),
        Dense("logits", ROUTER_HIDDEN, len(DOMAINS)),
        Activation("softmax"),
    )
    return Manifest(
        name="zoo-router",
        version="1.0.0",
        domain="router",
        kind="tensor",
        layers=layers,
        input_dim=ROUTER_BUCKETS,
        output_dim=len(DOMAINS),
        tokenizer=None,
        parameters=count_parameters(layers),
        evaluation=evaluation,
        description="gate from hashed char n-grams (experts.features) to DOMAINS, in order",
    )


def train_router(out_dir: Path, steps: int = 1500) -> dict[str, object]:
    """A one-hidden-layer gate over hashed n-grams, trained on the routing corpus."""
    started = time.perf_counter()
    torch.manual_seed(0)
    texts, labels = zip(*routing_examples("train", 3000, seed=1), strict=True)
    x = torch.from_numpy(featurize(texts, ROUTER_BUCKETS))
    y = torch.tensor([DOMAINS.index(d) for d in labels])
    hidden = nn.Linear(ROUTER_BUCKETS, ROUTER_HIDDEN)
    logits = nn.Linear(ROUTER_HIDDEN, len(DOMAINS))
    model = nn.Sequential(hidden, nn.ReLU(), logits)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (256,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    weights = {
        "hidden.w": hidden.weight.detach().numpy().T.copy(),
        "hidden.b": hidden.bias.detach().numpy().copy(),
        "logits.w": logits.weight.detach().numpy().T.copy(),
        "logits.b": logits.bias.detach().numpy().copy(),
    }
    manifest = router_manifest()
    ev = evaluate_expert(from_file(ExpertFile(manifest, "unsaved", weights)))
    save(out_dir / "router.npz", dataclasses.replace(manifest, evaluation=ev), weights)
    print(f"router: held-out accuracy {ev.score}", flush=True)
    return {"train_s": round(time.perf_counter() - started, 1), "accuracy": ev.score}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", default=[*DOMAINS, "router"])
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    # The machine is shared: one core, and no surprise thread pools in numpy either.
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    log: dict[str, object] = {}
    t0 = time.perf_counter()
    for domain in DOMAINS:
        if domain in args.only:
            train_domain(domain, RECIPES[domain], args.out, log)
    if "router" in args.only:
        log["router"] = train_router(args.out)
    log["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
