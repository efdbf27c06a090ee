"""Run-vs-run comparison: the per-row differences between a baseline and a candidate run, and the CI gate.

A latency regression counts only when the p50 rises by more than the threshold *and* the two bootstrap CIs of the
median do not overlap: one noisy run must not fail a build. Size and accuracy are deterministic, so their
thresholds apply directly.
"""

from __future__ import annotations

from dataclasses import dataclass

from reports.analysis import FLOAT_SLACK, cis_overlap
from reports.schema import ResultRow, ResultsError, RunResults
from reports.settings import GateThresholds

Key = tuple[str, str, str]
MIN_TIMED_RUNS = 100  # below this (e.g. --quick's 20) a median's CI says little about the next run


@dataclass(frozen=True)
class RowDiff:
    """One (model, variant, target) in either run; changes are None where a side lacks the number."""

    model: str
    variant: str
    target: str
    baseline: ResultRow | None
    candidate: ResultRow | None
    latency_change: float | None
    cis_overlap: bool | None
    size_change: float | None
    accuracy_change: float | None
    regressions: list[str]


@dataclass(frozen=True)
class Comparison:
    baseline: RunResults
    candidate: RunResults
    thresholds: GateThresholds
    rows: list[RowDiff]
    caveats: list[str]

    @property
    def regressed(self) -> list[RowDiff]:
        return [row for row in self.rows if row.regressions]


def _key(row: ResultRow) -> Key:
    return row.model, row.variant, row.target


def _relative(new: float | None, old: float | None) -> float | None:
    return new / old - 1 if new is not None and old else None


def _diff(key: Key, base: ResultRow | None, cand: ResultRow | None, limits: GateThresholds) -> RowDiff:
    regressions = []
    bm = base.measurement if base else None
    cm = cand.measurement if cand else None
    latency = overlap = accuracy = None
    if bm and not cm and cand:
        regressions.append(f"measured in the baseline but {cand.status} in the candidate: {cand.reason}")
    if bm and cm:
        latency = _relative(cm.latency_ms.p50, bm.latency_ms.p50)
        overlap = cis_overlap(bm.latency_ms, cm.latency_ms)
        if latency > limits.max_latency_increase and not overlap:
            regressions.append(
                f"p50 latency +{100 * latency:.1f} % ({bm.latency_ms.p50:.3f} → {cm.latency_ms.p50:.3f} ms, 95 % CIs "
                f"do not overlap) exceeds +{100 * limits.max_latency_increase:g} %"
            )
        metric = bm.quality.metric
        if bm.accuracy is not None and cm.accuracy is None:
            regressions.append(f"{metric} measured in the baseline but not in the candidate: "
                               f"{cm.quality.not_measured or 'no value'}")
        elif bm.accuracy is not None:
            accuracy = cm.accuracy - bm.accuracy
            if -accuracy > limits.max_accuracy_drop + FLOAT_SLACK:
                regressions.append(
                    f"{metric} {100 * accuracy:+.2f} pt ({100 * bm.accuracy:.2f} → {100 * cm.accuracy:.2f} %) exceeds "
                    f"−{100 * limits.max_accuracy_drop:g} pt"
                )
    size = _relative(cand.size_bytes if cand else None, base.size_bytes if base else None)
    if size is not None and size > limits.max_size_increase:
        regressions.append(
            f"size +{100 * size:.1f} % ({base.size_bytes:,} → {cand.size_bytes:,} bytes) exceeds "
            f"+{100 * limits.max_size_increase:g} %"
        )
    return RowDiff(*key, base, cand, latency, overlap, size, accuracy, regressions)


def _caveats(baseline: RunResults, candidate: RunResults) -> list[str]:
    """Differences between the runs' conditions that make the latency comparison less than like-for-like."""
    caveats = []
    cpus = [run.environment.get("cpu", {}).get("model") for run in (baseline, candidate)]
    if cpus[0] != cpus[1]:
        caveats.append(f"different CPUs: {cpus[0]} vs {cpus[1]}")
    settings = [run.recipe.get("benchmark", {}) for run in (baseline, candidate)]
    for name in sorted(set(settings[0]) | set(settings[1])):
        if settings[0].get(name) != settings[1].get(name):
            caveats.append(f"benchmark.{name}: {settings[0].get(name)} vs {settings[1].get(name)}")
    runs = [{r.measurement.latency_ms.runs for r in run.rows if r.measurement} for run in (baseline, candidate)]
    if runs[0] != runs[1]:
        caveats.append(f"timed runs per row: {sorted(runs[0])} vs {sorted(runs[1])} (--quick in one of them?)")
    fewest = min(runs[0] | runs[1], default=MIN_TIMED_RUNS)
    if fewest < MIN_TIMED_RUNS:
        caveats.append(f"only {fewest} timed runs per row (--quick?): too few for a latency gate to mean much")
    packages = [run.environment.get("packages", {}) for run in (baseline, candidate)]
    for name in sorted(set(packages[0]) | set(packages[1])):
        if packages[0].get(name) != packages[1].get(name):
            caveats.append(f"{name} {packages[0].get(name, 'absent')} vs {packages[1].get(name, 'absent')}")
    return caveats


def compare_runs(baseline: RunResults, candidate: RunResults, thresholds: GateThresholds) -> Comparison:
    """Match rows by (model, variant, target); rows present in only one run are shown but are not regressions."""
    base = {_key(row): row for row in baseline.rows}
    cand = {_key(row): row for row in candidate.rows}
    if not base.keys() & cand.keys():
        raise ResultsError(
            f"mismatched runs: {baseline.name} and {candidate.name} have no (model, variant, target) row in common"
        )
    keys = list(dict.fromkeys([*base, *cand]))
    rows = [_diff(key, base.get(key), cand.get(key), thresholds) for key in keys]
    return Comparison(baseline, candidate, thresholds, rows, _caveats(baseline, candidate))
