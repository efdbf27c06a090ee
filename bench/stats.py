"""Summary statistics of latency samples, computed from every raw sample (never from pre-averaged ones)."""

from __future__ import annotations

import numpy as np

from reports.schema import LatencyStats


def median_ci(samples: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median (seeded, so reports are reproducible)."""
    rng = np.random.default_rng(seed)
    draws = rng.choice(samples, size=(resamples, len(samples)), replace=True)
    medians = np.median(draws, axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def latency_stats(samples_ms: np.ndarray) -> LatencyStats:
    """Summarise latency samples in ms; percentiles by numpy's linear interpolation."""
    samples = np.asarray(samples_ms, dtype=np.float64)
    if samples.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p95, p99 = np.percentile(samples, [50, 90, 95, 99])
    return LatencyStats(
        runs=int(samples.size),
        mean=float(samples.mean()),
        std=float(samples.std(ddof=1)) if samples.size > 1 else 0.0,
        min=float(samples.min()),
        max=float(samples.max()),
        p50=float(p50),
        p90=float(p90),
        p95=float(p95),
        p99=float(p99),
        p50_ci95=median_ci(samples),
    )
