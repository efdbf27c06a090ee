"""Summary statistics of latency samples, computed from every raw sample (never from pre-averaged ones).

Percentiles use numpy's ``linear`` method (Hyndman & Fan type 7: the value at rank (n − 1)·q, interpolated
between the two closest samples). The headline median is the median of the per-process medians: the spread
between fresh processes (memory layout, frequency, neighbours) is larger on real machines than the spread
within one, so one unlucky process must not move the headline and the CI must include that spread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgecraft.core.results import LatencyStats

# Bootstrap draws are made in chunks of at most this many indices, so that 10⁵ samples × 2000 resamples never
# needs gigabytes at once.
_CHUNK = 4_000_000


def _bootstrap_medians(samples: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``resamples`` medians of samples drawn with replacement from ``samples``."""
    n = len(samples)
    step = max(1, _CHUNK // n)
    medians = [
        np.median(samples[rng.integers(0, n, size=(min(step, resamples - start), n))], axis=1)
        for start in range(0, resamples, step)
    ]
    return np.concatenate(medians)


def median_ci(
    groups: np.ndarray | Sequence[np.ndarray], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the median of group medians (seeded: reproducible reports).

    One group: the ordinary bootstrap of the median. Several groups (process repetitions): a two-level bootstrap
    that resamples the groups, then the samples within each, so the interval covers process-to-process spread.
    """
    groups = _as_groups(groups)
    rng = np.random.default_rng(seed)
    per_group = np.stack([_bootstrap_medians(group, resamples, rng) for group in groups])  # (groups, resamples)
    if len(groups) == 1:
        medians = per_group[0]
    else:
        picks = rng.integers(0, len(groups), size=(resamples, len(groups)))
        columns = rng.integers(0, resamples, size=(resamples, len(groups)))
        medians = np.median(per_group[picks, columns], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(medians, [tail, 100 - tail])
    return float(low), float(high)


def coefficient_of_variation(values: Sequence[float]) -> float | None:
    """Sample standard deviation over mean; None for fewer than two values."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.std(ddof=1) / array.mean()) if array.size > 1 else None


def _as_groups(samples: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(samples, np.ndarray) and samples.ndim == 1:
        samples = [samples]
    groups = [np.asarray(group, dtype=np.float64) for group in samples]
    if not groups or any(group.size == 0 for group in groups):
        raise ValueError("no latency samples")
    return groups


def latency_stats(samples_ms: np.ndarray | Sequence[np.ndarray]) -> LatencyStats:
    """Summarise latency samples in ms: one array, or one array per process repetition.

    The spread figures (min, max, mean, std, IQR, p90/p95/p99) pool every sample; p50 is the median of the
    repetitions' medians (for one repetition, simply the median) with its bootstrap 95 % CI.
    """
    groups = _as_groups(samples_ms)
    pooled = np.concatenate(groups)
    p25, p75, p90, p95, p99 = np.percentile(pooled, [25, 75, 90, 95, 99])
    repetition_p50 = [float(np.median(group)) for group in groups]
    return LatencyStats(
        runs=int(pooled.size),
        mean=float(pooled.mean()),
        std=float(pooled.std(ddof=1)) if pooled.size > 1 else 0.0,
        min=float(pooled.min()),
        max=float(pooled.max()),
        p50=float(np.median(repetition_p50)),
        iqr=float(p75 - p25),
        p90=float(p90),
        p95=float(p95),
        p99=float(p99),
        p50_ci95=median_ci(groups),
        repetition_p50=repetition_p50,
        cv_across_repetitions=coefficient_of_variation(repetition_p50),
    )
