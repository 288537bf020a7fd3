"""Speed and size of the zoo and of the built-in ffn expert; prints one JSON object.

For each zoo domain: forward p50 at batch 1, generated tokens per second (greedy, on the
domain's held-out prompts), file sizes float32 vs int8, and both evaluation scores,
re-measured here rather than read from the manifests. Then the resident memory the loaded
zoo adds, and the ffn expert at D=64 (p50 at batch 1, rows per second at batch 64) next to
its floor: the same block written as bare numpy expressions, measured in the same run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts import DOMAINS, Zoo, build_ffn, evaluate_expert, load_generator  # noqa: E402
from experts.analysis import latency_ms  # noqa: E402
from experts.tasks import all_tasks  # noqa: E402
from experts.zoo import zoo_path  # noqa: E402

GEN_PROMPTS = 50


def rss_mb() -> float:
    """Resident set size of this process (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def tokens_per_s(domain: str, zoo: Zoo) -> float:
    expert = zoo.experts[domain]
    task = all_tasks()[domain]
    prompts = [ex.prompt for ex in task.examples("eval", GEN_PROMPTS, seed=0)]
    tokens = 0
    start = time.perf_counter()
    for prompt in prompts:
        tokens += expert.generate(prompt, max_tokens=task.max_tokens).tokens_out
    elapsed = time.perf_counter() - start
    return tokens / elapsed


def ffn_floor_p50_ms(dim: int = 64, repeats: int = 1000) -> float:
    """The floor: the same ffn block as bare numpy expressions, no runtime around it."""
    import numpy as np

    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((dim, 4 * dim), dtype=np.float32)
    w2 = rng.standard_normal((4 * dim, dim), dtype=np.float32)
    b1, b2 = np.zeros(4 * dim, np.float32), np.zeros(dim, np.float32)
    x = rng.standard_normal((1, dim), dtype=np.float32)
    c = np.float32(0.7978845608)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        h = x @ w1 + b1
        h = 0.5 * h * (1 + np.tanh(c * (h + 0.044715 * h * h * h)))
        y = x + (h @ w2 + b2)
        mean = y.mean(-1, keepdims=True)
        y = (y - mean) / np.sqrt(y.var(-1, keepdims=True) + 1e-12)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main() -> None:
    before = rss_mb()
    zoo = Zoo.load(precision="int8")
    zoo_rss = rss_mb() - before
    experts = []
    for domain in DOMAINS:
        f32 = load_generator(domain, "f32")
        experts.append(
            {
                "domain": domain,
                "forward_p50_ms": round(statistics.median(latency_ms(zoo.experts[domain])), 4),
                "tokens_per_s": round(tokens_per_s(domain, zoo), 1),
                "bytes_f32": zoo_path(domain, "f32").stat().st_size,
                "bytes_int8": zoo_path(domain, "int8").stat().st_size,
                "eval_f32": evaluate_expert(f32).score,
                "eval_int8": evaluate_expert(zoo.experts[domain]).score,
            }
        )
    ffn = build_ffn(64)
    batch64 = statistics.median(latency_ms(ffn, batch=64, repeats=200))
    ffn_p50 = statistics.median(latency_ms(ffn, batch=1, repeats=1000))
    floor = ffn_floor_p50_ms()
    print(
        json.dumps(
            {
                "experts": experts,
                "zoo_rss_mb": round(zoo_rss, 1),
                "ffn64_p50_ms": round(ffn_p50, 4),
                "ffn64_rows_per_s": round(64 / (batch64 / 1e3)),
                "ffn64_floor_p50_ms": round(floor, 4),
                "ffn64_ratio_to_floor": round(ffn_p50 / floor, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
