"""Latency samples over a sliding window, for `dag status` and the benchmarks."""

from __future__ import annotations

from collections import deque

METRICS_WINDOW_S = 300.0


class Latencies:
    """Acceptance latencies of the last few minutes, for `dag status` and the benchmark."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, now: float, latency: float) -> None:
        self._samples.append((now, latency))
        while self._samples and self._samples[0][0] < now - METRICS_WINDOW_S:
            self._samples.popleft()

    def summary(self, window_s: float = METRICS_WINDOW_S) -> dict[str, float | int | None]:
        """Count, p50 and p99 of the samples of the last `window_s` seconds."""
        since = (self._samples[-1][0] if self._samples else 0.0) - window_s
        values = sorted(v for t, v in self._samples if t >= since)
        if not values:
            return {"count": 0, "p50_s": None, "p99_s": None}

        def pick(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))], 4)

        return {"count": len(values), "p50_s": pick(0.5), "p99_s": pick(0.99)}
