"""Score an expert on the held-out set of its domain (experts.tasks).

Generation tasks run greedily (temperature 0), so a score is a pure function of the file,
the eval size and the seed: re-running it on a shipped file must give the recorded score.
"""

from __future__ import annotations

import math

import numpy as np

from experts.errors import ExpertError
from experts.features import featurize
from experts.manifest import DOMAINS, Evaluation
from experts.runtime import Expert, GeneratorExpert, TensorExpert
from experts.tasks import Example, Task, all_tasks
from experts.tasks.routing import routing_examples
from experts.tokens import encode

DEFAULT_N = 500
DEFAULT_SEED = 0


def task_for(expert: Expert) -> Task:
    task = all_tasks().get(expert.manifest.domain)
    if task is None or not isinstance(expert, GeneratorExpert):
        raise ExpertError(
            f"no evaluation for a {expert.manifest.kind} expert of domain "
            f"{expert.manifest.domain!r}",
            expert_id=expert.expert_id,
        )
    return task


def evaluate_expert(expert: Expert, n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> Evaluation:
    """The expert's score in points (0-100) on `n` held-out examples drawn with `seed`.

    A router is scored on routing accuracy over `n` held-out texts per domain.
    """
    if isinstance(expert, TensorExpert) and expert.manifest.domain == "router":
        return _routing(expert, n, seed)
    task = task_for(expert)
    assert isinstance(expert, GeneratorExpert)  # task_for refuses the rest
    examples = task.examples("eval", n, seed)
    if task.teacher_forced:
        return _teacher_forced(expert, task, examples, seed)
    outputs: list[str] = []
    step = expert.manifest.limits.max_batch
    for i in range(0, len(examples), step):
        chunk = examples[i : i + step]
        gens = expert.generate_batch(
            [ex.prompt for ex in chunk], max_tokens=task.max_tokens, temperature=0.0
        )
        outputs.extend(g.text for g in gens)
    scores = [task.score(ex, out) for ex, out in zip(examples, outputs, strict=True)]
    exact = [float(out == ex.answer) for ex, out in zip(examples, outputs, strict=True)]
    return Evaluation(
        metric=task.metric,
        score=round(100.0 * sum(scores) / len(scores), 2),
        n=n,
        seed=seed,
        extra=(("exact_match", round(100.0 * sum(exact) / len(exact), 2)),),
    )


def windows(expert: GeneratorExpert, ex: Example) -> tuple[np.ndarray, np.ndarray]:
    """Every (window, next token) pair of the answer and its end, as in training."""
    tok = expert.manifest.tokenizer
    assert tok is not None
    c = expert.context
    seq = np.concatenate(
        [np.full(c, tok.pad), encode(ex.prompt), encode(ex.answer), [tok.eos]]
    ).astype(np.int64)
    start = c + len(encode(ex.prompt))
    idx = np.arange(start, len(seq))
    x = seq[idx[:, None] - c + np.arange(c)[None, :]]
    return x, seq[idx]


def _teacher_forced(
    expert: GeneratorExpert, task: Task, examples: list[Example], seed: int
) -> Evaluation:
    """Next-character accuracy over the answers (the end token excluded: it is not text)."""
    hits = 0
    total = 0
    nll = 0.0
    for ex in examples:
        x, y = windows(expert, ex)
        x, y = x[:-1], y[:-1]
        logits = np.concatenate(
            [expert.forward(x[i : i + 256]) for i in range(0, len(x), 256)]
        ).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        hits += int((logits.argmax(axis=1) == y).sum())
        nll -= float(logp[np.arange(len(y)), y].sum())
        total += len(y)
    return Evaluation(
        metric=task.metric,
        score=round(100.0 * hits / total, 2),
        n=len(examples),
        seed=seed,
        extra=(("bits_per_char", round(nll / total / math.log(2), 4)),),
    )


def _routing(gate: TensorExpert, n: int, seed: int) -> Evaluation:
    """Top-1 accuracy of a router on held-out texts, `n` per domain (see tasks.routing)."""
    texts, labels = zip(*routing_examples("eval", n, seed), strict=True)
    probs = np.concatenate(
        [
            gate.forward(featurize(texts[i : i + 256], gate.manifest.input_dim))
            for i in range(0, len(texts), 256)
        ]
    )
    hits = sum(DOMAINS[int(p)] == lab for p, lab in zip(probs.argmax(axis=1), labels, strict=True))
    return Evaluation(
        metric="routing_accuracy_unseen_fillers",
        score=round(100.0 * hits / len(labels), 2),
        n=n,
        seed=seed,
    )
