"""Run-vs-run comparison: the per-row differences between a baseline and a candidate run, and the CI gate.

The gate fails a row (exit 1) for one of three kinds of finding:

- regression: worse beyond a threshold, a row that failed where the baseline measured it, or a "conversion bug?"
  warning the baseline did not have;
- inconclusive: a latency change that cannot be told from noise. A p50 increase beyond the threshold whose 95 % CIs
  overlap, or, where the CIs reach past the threshold, a row with a "noisy" warning or a CI wider than the threshold:
  a wide CI must not hide a 10× slowdown, so such a row fails until it is measured again (e.g. with ``--rigorous``);
- missing: a baseline row that the candidate lacks or skipped, unless ``allow_missing``.

A p50 increase beyond the threshold with CIs that do not overlap is a regression even on a noisy row. Size and
accuracy are deterministic, so their thresholds apply directly. A row measured on an emulated device in either run
(``ResultRow.emulated``) gets no latency verdict at all (its timings are the emulator's, not the device's; the row
says so in ``latency_not_compared``), while its size and accuracy are gated as usual. Thresholds come from the
command line, else from the *baseline* run's recipe, else the defaults: never from the candidate, which could
otherwise switch its own gate off.

Two runs that are not comparable (a model's source, signature, evaluator or evaluation data differ) or that hold a
number no measurement can have are refused with ``ResultsError`` (exit 2): a verdict on them would mean nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from edgecraft.core.results import (
    CONVERSION_WARNING,
    NOISE_WARNING,
    LatencyStats,
    ModelRecord,
    ResultRow,
    RunResults,
    ScenarioResult,
)
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.reports.analysis import FLOAT_SLACK, cis_overlap
from edgecraft.reports.results_file import ResultsError, check_results
from edgecraft.reports.settings import GateThresholds, report_settings, with_overrides

Key = tuple[str, str, str]
Kind = Literal["regression", "inconclusive", "missing"]
KINDS: tuple[Kind, ...] = ("regression", "inconclusive", "missing")  # by gravity: a row's verdict is its worst
ThresholdSource = Literal["command line", "baseline recipe", "default"]
MIN_TIMED_RUNS = 100  # below this (e.g. --quick's 20) a median's CI says little about the next run


@dataclass(frozen=True)
class Gate:
    """The thresholds a comparison enforces and where each value came from."""

    thresholds: GateThresholds
    sources: dict[str, ThresholdSource]

    def describe(self) -> str:
        t, source = self.thresholds, self.sources
        return (
            f"p50 latency +{100 * t.max_latency_increase:g} % ({source['max_latency_increase']}), "
            f"size +{100 * t.max_size_increase:g} % ({source['max_size_increase']}), "
            f"accuracy −{100 * t.max_accuracy_drop:g} pt ({source['max_accuracy_drop']})"
        )


def resolve_gate(baseline: RunResults, command_line: Mapping[str, float | None]) -> Gate:
    """Each threshold from ``command_line`` where given (not None), else from the baseline recipe's ``report.gate``,
    else the default. A recipe value equal to the default is reported as the default."""
    recipe = report_settings(baseline.recipe).gate
    thresholds = with_overrides(recipe, **command_line)
    defaults = GateThresholds()
    sources: dict[str, ThresholdSource] = {
        name: "command line"
        if command_line.get(name) is not None
        else "baseline recipe"
        if getattr(recipe, name) != getattr(defaults, name)
        else "default"
        for name in GateThresholds.model_fields
    }
    return Gate(thresholds, sources)


@dataclass(frozen=True)
class Finding:
    """One reason a row fails the gate; ``allowed``: a missing row the user accepted (``--allow-missing``)."""

    kind: Kind
    why: str
    allowed: bool = False


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
    findings: list[Finding]
    latency_not_compared: str | None = None  # why the row has no latency verdict (an emulated device)

    @property
    def failures(self) -> list[Finding]:
        return [finding for finding in self.findings if not finding.allowed]

    @property
    def verdict(self) -> str:
        """The gravest failing kind; else "missing (allowed)", "new" (only in the candidate) or "ok"."""
        kinds = {finding.kind for finding in self.failures}
        worst = next((kind for kind in KINDS if kind in kinds), None)
        if worst:
            return worst
        if self.findings:
            return "missing (allowed)"
        return "new" if self.baseline is None else "ok"


@dataclass(frozen=True)
class Comparison:
    baseline: RunResults
    candidate: RunResults
    gate: Gate
    rows: list[RowDiff]
    caveats: list[str]

    @property
    def failing(self) -> list[RowDiff]:
        return [row for row in self.rows if row.failures]

    @property
    def outcome(self) -> Literal["PASS", "FAIL"]:
        return "FAIL" if self.failing else "PASS"

    def tally(self) -> str:
        """How many rows have each failing verdict, e.g. "1 regression, 2 missing of 6 row(s)"."""
        counts = Counter(row.verdict for row in self.rows)
        failing = ", ".join(f"{counts[kind]} {kind}" for kind in KINDS if counts[kind]) or "nothing fails"
        untimed = sum(1 for row in self.rows if row.latency_not_compared)
        emulated = f" (latency not compared for {untimed}: emulated device)" if untimed else ""
        return f"{failing} of {len(self.rows)} row(s){emulated}"


def _key(row: ResultRow) -> Key:
    return row.model, row.variant, row.target


def _relative(new: float | None, old: float | None) -> float | None:
    return new / old - 1 if new is not None and old else None


def _half_width(stats: LatencyStats) -> float:
    """Half the width of the p50's 95 % CI, relative to the p50."""
    return (stats.p50_ci95[1] - stats.p50_ci95[0]) / 2 / stats.p50


def _latency(base: ResultRow, cand: ResultRow, change: float, overlap: bool, limit: float) -> Finding | None:
    """A p50 increase beyond ``limit`` is a regression, or inconclusive where the CIs overlap. Below it, a row passes
    when even its pessimistic bound (the candidate's CI top over the baseline's CI bottom) stays within ``limit``:
    then no noise can hide a regression. Otherwise a "noisy" warning, or a CI wider than ``limit``, makes it
    inconclusive."""
    assert base.measurement is not None and cand.measurement is not None  # only measured rows are compared
    b, c = base.measurement.latency_ms, cand.measurement.latency_ms
    shift = f"p50 latency {100 * change:+.1f} % ({b.p50:.3f} → {c.p50:.3f} ms)"
    if change > limit + FLOAT_SLACK:
        if not overlap:
            return Finding("regression", f"{shift}, 95 % CIs do not overlap, exceeds +{100 * limit:g} %")
        return Finding(
            "inconclusive",
            f"{shift} exceeds +{100 * limit:g} % but the 95 % CIs overlap "
            f"(±{100 * _half_width(b):.1f} % and ±{100 * _half_width(c):.1f} %): "
            "it cannot be told from noise; measure again",
        )
    if c.p50_ci95[1] / b.p50_ci95[0] - 1 <= limit + FLOAT_SLACK:
        return None
    noisy = next(
        (
            f"{side}: {warning}"
            for side, row in (("baseline", base), ("candidate", cand))
            for warning in row.warnings
            if warning.startswith(NOISE_WARNING)
        ),
        None,
    )
    if noisy:
        return Finding("inconclusive", f"{shift} cannot be judged, the row is noisy ({noisy}); measure again")
    side, width = max((("baseline", _half_width(b)), ("candidate", _half_width(c))), key=lambda item: item[1])
    if width > limit + FLOAT_SLACK:
        return Finding(
            "inconclusive",
            f"{shift} cannot be judged: the {side}'s 95 % CI is ±{100 * width:.1f} %, "
            f"wider than the +{100 * limit:g} % threshold; measure again",
        )
    return None


def _diff(
    key: Key,
    base: ResultRow | None,
    cand: ResultRow | None,
    gate: GateThresholds,
    allow_missing: bool,
    model_failure: str | None,
) -> RowDiff:
    """Compare one row; ``model_failure``: why the candidate could not prepare this row's model where the baseline
    could."""
    findings = []
    bm = base.measurement if base else None
    cm = cand.measurement if cand else None
    if base and model_failure:  # a broken model is a failure, not a row the user chose to drop
        findings.append(Finding("regression", f"the candidate could not prepare model {key[0]}: {model_failure}"))
    elif base and not cand:
        findings.append(Finding("missing", "absent from the candidate run", allow_missing))
    elif bm and cand and cand.status == "skipped":
        findings.append(
            Finding("missing", f"measured in the baseline but skipped in the candidate: {cand.reason}", allow_missing)
        )
    elif bm and cand and not cm:
        findings.append(
            Finding("regression", f"measured in the baseline but {cand.status} in the candidate: {cand.reason}")
        )
    latency = overlap = accuracy = untimed = None
    emulated = next(
        (f"{side}: {row.emulated}" for side, row in (("baseline", base), ("candidate", cand)) if row and row.emulated),
        None,
    )
    if bm and cm and emulated:
        untimed = f"latency not compared: emulated device ({emulated}); its timings are not device timings"
    elif bm and cm:
        assert base is not None and cand is not None  # bm and cm are their measurements
        latency = _relative(cm.latency_ms.p50, bm.latency_ms.p50)
        assert latency is not None  # LatencyStats refuses a p50 of zero
        overlap = cis_overlap(bm.latency_ms, cm.latency_ms)
        if finding := _latency(base, cand, latency, overlap, gate.max_latency_increase):
            findings.append(finding)
    if bm and cm:
        metric = bm.quality.metric
        if bm.accuracy is not None and cm.accuracy is None:
            findings.append(
                Finding(
                    "regression",
                    f"{metric} measured in the baseline but not in the candidate: "
                    f"{cm.quality.not_measured or 'no value'}",
                )
            )
        elif bm.accuracy is not None and cm.accuracy is not None:
            accuracy = cm.accuracy - bm.accuracy
            if -accuracy > gate.max_accuracy_drop + FLOAT_SLACK:
                findings.append(
                    Finding(
                        "regression",
                        f"{metric} {100 * accuracy:+.2f} pt ({100 * bm.accuracy:.2f} → "
                        f"{100 * cm.accuracy:.2f} %) exceeds −{100 * gate.max_accuracy_drop:g} pt",
                    )
                )
    if bm and cm and not emulated:
        findings.extend(_scenario_findings(bm.scenarios, cm.scenarios, gate.max_latency_increase, allow_missing))
    base_size, cand_size = (base.size_bytes if base else None), (cand.size_bytes if cand else None)
    size = _relative(cand_size, base_size)
    if size is not None and size > gate.max_size_increase + FLOAT_SLACK:
        findings.append(
            Finding(
                "regression",
                f"size +{100 * size:.1f} % ({base_size:,} → {cand_size:,} "
                f"bytes) exceeds +{100 * gate.max_size_increase:g} %",
            )
        )
    if base and cand and not any(w.startswith(CONVERSION_WARNING) for w in base.warnings):
        findings.extend(
            Finding("regression", f"new in the candidate: {warning}")
            for warning in cand.warnings
            if warning.startswith(CONVERSION_WARNING)
        )
    return RowDiff(*key, base, cand, latency, overlap, size, accuracy, findings, untimed)


def _scenario_findings(
    baseline: list[ScenarioResult], candidate: list[ScenarioResult], limit: float, allow_missing: bool
) -> list[Finding]:
    """A LoadGen scenario fails the gate when the candidate's is INVALID, missing where the baseline ran it, or its
    headline worse than the baseline's beyond the latency threshold (a latency risen, a rate fallen). LoadGen's
    validity rules are the headline's confidence: there is no CI to overlap."""
    findings = []
    before = {result.scenario: result for result in baseline}
    for result in candidate:
        if result.valid is False:
            findings.append(Finding("regression", f"{result.scenario}: LoadGen said INVALID ({result.invalid_reason})"))
    for name, old in before.items():
        if name == "accuracy":  # the row's accuracy is gated by max_accuracy_drop already
            continue
        new = next((result for result in candidate if result.scenario == name), None)
        if new is None or new.value is None:
            if old.value is not None:
                reason = new.not_measured if new else "not run"
                findings.append(
                    Finding("missing", f"{name}: measured in the baseline, {reason} in the candidate", allow_missing)
                )
            continue
        change = _relative(new.value, old.value)
        if old.value is None or change is None or not new.valid:
            continue
        worse = change if new.unit == "ms" else -change
        if worse > limit + FLOAT_SLACK:
            findings.append(
                Finding(
                    "regression",
                    f"{name} {new.headline} {old.value:.4g} → {new.value:.4g} {new.unit} ({100 * change:+.1f} %) "
                    f"is worse than the {100 * limit:g} % threshold",
                )
            )
    return findings


def _describe(signature: Signature) -> str:
    def side(specs: list[TensorSpec]) -> str:
        return ", ".join(spec.describe() for spec in specs) or "none"

    return f"inputs {side(signature.inputs)}; outputs {side(signature.outputs)}"


def _model_differences(base: ModelRecord, cand: ModelRecord) -> list[str]:
    """What makes two runs' rows of one model measure different things (checked only where both prepared it)."""
    name = base.name
    differences = []
    if base.source != cand.source:
        differences.append(f"model {name}'s source differs: {base.source} vs {cand.source}")
    if base.signature != cand.signature:
        differences.append(
            f"model {name}'s signature differs: {_describe(base.signature)} vs {_describe(cand.signature)}"
        )
    if base.data_shapes and cand.data_shapes and base.data_shapes != cand.data_shapes:
        differences.append(f"model {name}'s evaluation input shapes differ: {base.data_shapes} vs {cand.data_shapes}")
    if base.evaluation_data and cand.evaluation_data and base.evaluation_data != cand.evaluation_data:
        differences.append(
            f"model {name}'s evaluation data differs: digest {base.evaluation_data[:12]} vs {cand.evaluation_data[:12]}"
        )
    evaluators = [f"{model.reference.evaluator} ({model.reference.metric})" for model in (base, cand)]
    if evaluators[0] != evaluators[1]:
        differences.append(f"model {name}'s evaluator differs: {evaluators[0]} vs {evaluators[1]}")
    return differences


def _prepared_pairs(baseline: RunResults, candidate: RunResults) -> list[tuple[ModelRecord, ModelRecord]]:
    """The models both runs prepared, as (baseline, candidate) records."""
    candidates = {model.name: model for model in candidate.models if model.failure is None}
    return [
        (model, candidates[model.name])
        for model in baseline.models
        if model.failure is None and model.name in candidates
    ]


def _caveats(baseline: RunResults, candidate: RunResults) -> list[str]:
    """Differences between the runs' conditions that make the comparison less than like-for-like."""
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
    unchecked = [
        base.name
        for base, cand in _prepared_pairs(baseline, candidate)
        if not (base.evaluation_data and cand.evaluation_data)
    ]
    if unchecked:
        caveats.append(
            f"no evaluation data digest in both runs for {', '.join(unchecked)} (older results?): "
            "not checked that both evaluated the same data"
        )
    return caveats


def compare_runs(
    baseline: RunResults,
    candidate: RunResults,
    command_line: Mapping[str, float | None] | None = None,
    allow_missing: bool = False,
) -> Comparison:
    """Match rows by (model, variant, target) and judge each (see the module docstring). ``command_line``: threshold
    overrides by field name; the rest come from the baseline's recipe. ``ResultsError`` when the runs are not
    comparable or hold an impossible number."""
    for side, results in (("baseline", baseline), ("candidate", candidate)):
        check_results(results, f"{side} run {results.name!r}")
    differences = [d for base, cand in _prepared_pairs(baseline, candidate) for d in _model_differences(base, cand)]
    if differences:
        raise ResultsError("not comparable: " + "; ".join(differences))
    base = {_key(row): row for row in baseline.rows}
    cand = {_key(row): row for row in candidate.rows}
    prepared = {model.name for model in baseline.models if model.failure is None}
    failures = {model.name: model.failure for model in candidate.models if model.failure and model.name in prepared}
    if not base.keys() & cand.keys() and not failures:
        raise ResultsError(
            f"mismatched runs: {baseline.name} and {candidate.name} have no (model, variant, target) row in common"
        )
    gate = resolve_gate(baseline, command_line or {})
    rows = [
        _diff(key, base.get(key), cand.get(key), gate.thresholds, allow_missing, failures.get(key[0]))
        for key in dict.fromkeys([*base, *cand])
    ]
    return Comparison(baseline, candidate, gate, rows, _caveats(baseline, candidate))
