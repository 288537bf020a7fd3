"""Experts ready to run: a tensor expert (array in, array out) and a generator (text in,
text out), both numpy only, both checking their input against the manifest's limits
before any computation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from experts.errors import ExpertInputError
from experts.format import ExpertFile, load_file
from experts.manifest import Manifest
from experts.network import F32, Network, compile_network
from experts.tokens import EMITTABLE, count_tokens, decode, encode

MAX_TEMPERATURE = 10.0


@dataclass(frozen=True)
class Generation:
    """A generated text and its billable token counts (see experts.tokens)."""

    text: str
    tokens_in: int
    tokens_out: int
    stopped: bool  # True when the model ended the text itself, False when max_tokens cut it


@dataclass(frozen=True, eq=False)
class TensorExpert:
    """Array in, array out: rows of `manifest.input_dim` float32 to rows of `output_dim`."""

    manifest: Manifest
    expert_id: str
    network: Network

    def forward(self, x: npt.ArrayLike) -> F32:
        """Run a batch of rows (batch, input_dim); a single row (input_dim,) is batch 1."""
        arr = np.asarray(x, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        lim = self.manifest.limits
        if arr.ndim != 2 or arr.shape[1] != self.manifest.input_dim:
            raise ExpertInputError(
                f"expected rows of {self.manifest.input_dim} values, got shape {arr.shape}",
                expert_id=self.expert_id,
                limit=self.manifest.input_dim,
                got=int(arr.shape[-1]) if arr.ndim else None,
            )
        _check_batch(arr.shape[0], lim.max_batch, self.expert_id)
        if not np.isfinite(arr).all():
            raise ExpertInputError("input holds NaN or inf", expert_id=self.expert_id)
        return self.network(arr)


@dataclass(frozen=True, eq=False)
class GeneratorExpert:
    """Text in, text out, one byte-token at a time from a fixed context window."""

    manifest: Manifest
    expert_id: str
    network: Network
    # 0 for tokens the model may emit, -inf for the rest (non-ASCII, control bytes).
    _logit_mask: F32 = field(repr=False)

    @property
    def context(self) -> int:
        return self.manifest.input_dim

    def forward(self, tokens: npt.ArrayLike) -> F32:
        """Next-token logits (batch, vocab) for windows of token ids (batch, context)."""
        arr = np.asarray(tokens)
        vocab = self.manifest.tokenizer.vocab if self.manifest.tokenizer else 0
        if arr.ndim != 2 or arr.shape[1] != self.context or arr.dtype.kind not in "iu":
            raise ExpertInputError(
                f"expected integer windows (batch, {self.context}), got {arr.dtype} {arr.shape}",
                expert_id=self.expert_id,
                limit=self.context,
            )
        _check_batch(arr.shape[0], self.manifest.limits.max_batch, self.expert_id)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab):
            raise ExpertInputError(
                "token id out of the vocabulary", expert_id=self.expert_id, limit=vocab
            )
        return self.network(arr)

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> Generation:
        """Continue `prompt`. temperature 0 is greedy; top_k 0 keeps every token; the same
        seed (and inputs) always gives the same text."""
        return self.generate_batch(
            [prompt], max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed
        )[0]

    def generate_batch(
        self,
        prompts: Sequence[str],
        *,
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        seed: int = 0,
    ) -> list[Generation]:
        """Continue several prompts at once, sharing each forward pass."""
        self._check_request(prompts, max_tokens, temperature, top_k, seed)
        tok = self.manifest.tokenizer
        assert tok is not None  # the manifest guarantees a tokenizer for generators
        rng = np.random.default_rng(seed)
        window = np.full((len(prompts), self.context), tok.pad, dtype=np.int64)
        for row, prompt in enumerate(prompts):
            ids = encode(prompt)[-self.context :]
            if ids.size:
                window[row, -ids.size :] = ids
        emitted: list[list[int]] = [[] for _ in prompts]
        live = np.ones(len(prompts), dtype=bool)
        for _ in range(max_tokens):
            if not live.any():
                break
            logits = self.network(window)
            logits += self._logit_mask
            nxt = _sample(logits, temperature, top_k, rng)
            for i in np.flatnonzero(live).tolist():
                if nxt[i] == tok.eos:
                    live[i] = False
                else:
                    emitted[i].append(int(nxt[i]))
            window[:, :-1] = window[:, 1:]
            window[:, -1] = nxt
        return [
            Generation(
                text=decode(out),
                tokens_in=count_tokens(prompt),
                tokens_out=len(out),
                stopped=not still,
            )
            for prompt, out, still in zip(prompts, emitted, live, strict=True)
        ]

    def _check_request(
        self, prompts: Sequence[str], max_tokens: int, temperature: float, top_k: int, seed: int
    ) -> None:
        lim = self.manifest.limits
        eid = self.expert_id
        _check_batch(len(prompts), lim.max_batch, eid)
        for prompt in prompts:
            n = count_tokens(prompt)
            if n > lim.max_prompt_tokens:
                raise ExpertInputError(
                    f"prompt has {n} tokens, over the limit of {lim.max_prompt_tokens}",
                    expert_id=eid,
                    limit=lim.max_prompt_tokens,
                    got=n,
                )
        if not 0 <= max_tokens <= lim.max_tokens:
            raise ExpertInputError(
                f"max_tokens must be in [0, {lim.max_tokens}], got {max_tokens}",
                expert_id=eid,
                limit=lim.max_tokens,
                got=max_tokens,
            )
        if not (math.isfinite(temperature) and 0.0 <= temperature <= MAX_TEMPERATURE):
            raise ExpertInputError(f"temperature must be in [0, {MAX_TEMPERATURE}]", expert_id=eid)
        if not 0 <= top_k <= self.manifest.output_dim:
            raise ExpertInputError(
                f"top_k must be in [0, {self.manifest.output_dim}]",
                expert_id=eid,
                limit=self.manifest.output_dim,
                got=top_k,
            )
        if seed < 0:
            raise ExpertInputError("seed must be >= 0", expert_id=eid)


def _check_batch(batch: int, limit: int, expert_id: str) -> None:
    if not 1 <= batch <= limit:
        raise ExpertInputError(
            f"batch of {batch}, must be 1 to {limit}", expert_id=expert_id, limit=limit, got=batch
        )


def _sample(
    logits: F32, temperature: float, top_k: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """One token per row. Greedy at temperature 0; otherwise softmax(logits / T) over the
    top_k best (all when 0), drawn by inverse CDF with one uniform per row, so the stream
    of draws, and thus the text, depends only on the seed."""
    if temperature == 0.0:
        greedy: npt.NDArray[np.int64] = logits.argmax(axis=1).astype(np.int64)
        return greedy
    scaled = logits / np.float32(temperature)
    if 0 < top_k < scaled.shape[1]:
        cut = np.partition(scaled, -top_k, axis=1)[:, -top_k][:, None]
        scaled = np.where(scaled >= cut, scaled, -np.inf)
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled.astype(np.float64))
    cdf = np.cumsum(probs, axis=1)
    draws = rng.random(len(cdf)) * cdf[:, -1]
    # Rounding can leave the last draw past the top of the CDF; clamp to the last token.
    picks: npt.NDArray[np.int64] = (cdf < draws[:, None]).sum(axis=1).astype(np.int64)
    np.minimum(picks, logits.shape[1] - 1, out=picks)
    return picks


Expert = TensorExpert | GeneratorExpert


def from_file(ef: ExpertFile) -> Expert:
    """Compile a verified file into a runnable expert (int8 weights are dequantized once)."""
    network = compile_network(ef.manifest.layers, ef.float_weights())
    if ef.manifest.kind == "tensor":
        return TensorExpert(ef.manifest, ef.expert_id, network)
    mask = np.full(ef.manifest.output_dim, -np.inf, dtype=np.float32)
    mask[list(EMITTABLE)] = 0.0
    assert ef.manifest.tokenizer is not None
    mask[ef.manifest.tokenizer.eos] = 0.0
    return GeneratorExpert(ef.manifest, ef.expert_id, network, mask)


def load_expert(path: str | os.PathLike[str], expect_id: str | None = None) -> Expert:
    """Load, verify and compile an expert file (raises ExpertFormatError, loads nothing)."""
    return from_file(load_file(path, expect_id=expect_id))
