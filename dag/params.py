"""Avalanche parameters and their named presets."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Params:
    """Parameters of one node's voting (see `dag.avalanche`).

    - `k`: peers asked per poll (capped by the number of staked peers).
    - `alpha`: yes votes out of `k` for a poll to succeed, count-weighted; with fewer than
      `k` peers the same fraction applies, and never less than a strict majority.
    - `beta1`: confidence above which a vertex alone in all its conflict sets is accepted.
    - `beta2`: consecutive successes above which a contested vertex is accepted.
    - `concurrent_polls`: polls in flight at once.
    - `query_timeout_s`: seconds after which unanswered peers count as no.
    """

    k: int
    alpha: int
    beta1: int
    beta2: int
    concurrent_polls: int
    query_timeout_s: float

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        if not self.k / 2 < self.alpha <= self.k:
            raise ValueError("alpha must be more than k/2 and at most k")
        if not 1 <= self.beta1 <= self.beta2:
            raise ValueError("need 1 <= beta1 <= beta2")
        if self.concurrent_polls < 1 or not self.query_timeout_s > 0:
            raise ValueError("concurrent_polls must be >= 1 and query_timeout_s > 0")

    def threshold(self, k_eff: int) -> int:
        """Yes votes a poll of `k_eff` peers needs: alpha/k of them, at least a majority."""
        return max(k_eff // 2 + 1, math.ceil(self.alpha * k_eff / self.k))

    @classmethod
    def default(cls) -> Params:
        """Avalanche's own mainnet choice (k=20, alpha=15, beta 15/20)."""
        return cls(k=20, alpha=15, beta1=15, beta2=20, concurrent_polls=8, query_timeout_s=2.0)

    @classmethod
    def fast(cls) -> Params:
        """Small meshes on one machine: fewer rounds to acceptance, shorter timeout."""
        return cls(k=10, alpha=7, beta1=8, beta2=12, concurrent_polls=16, query_timeout_s=1.5)

    @classmethod
    def high_security(cls) -> Params:
        """A larger sample, a stricter quorum and more rounds before acceptance."""
        return cls(k=30, alpha=24, beta1=30, beta2=60, concurrent_polls=4, query_timeout_s=3.0)

    @classmethod
    def preset(cls, name: str) -> Params:
        """One of `default`, `fast`, `high_security` (as written in config files)."""
        presets = {"default": cls.default, "fast": cls.fast, "high_security": cls.high_security}
        try:
            return presets[name.strip().lower().replace("-", "_")]()
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; use one of {sorted(presets)}") from None
