"""What a run's numbers mean: per-row comparisons with fp32, the Pareto front and the verdict under constraints.

Every derived number of the report (HTML, CSV, Markdown) is computed here once, from results.json alone.

Baselines: accuracy drop is measured against the model's fp32 reference accuracy (``ModelRecord.reference_accuracy``,
the PyTorch model on the evaluation split, after any shared passes), because it exists for every row even when the
fp32 variant failed or was skipped on a target. Speed-up and size reduction compare with the model's fp32 row (the
variant without passes) on the same target, since they only mean something on one runtime and device.

Rows measured on an emulated device (``ResultRow.emulated``, e.g. qemu-user) have real fidelity and accuracy but no
device timings: ``RowFacts.timing_not_measured`` says why, and nothing speed-related (speed-up, "slower than fp32",
the Pareto front, cost, operator gaps, a fastest variant) is derived from them. Renderers read that field rather than
testing ``row.emulated`` themselves.

Fidelity warnings (``FidelityWarning``): the headline metric reads one output, or summarises several, and a lossy
row can hold it while another output is ruined (a face net's landmarks after int8, scored on its face
probability). Every lossy row with an output whose SNR against fp32 is below ``report.min_output_snr_db``, or whose
top-1 agreement with fp32 is far below its model's other lossy rows (``report.max_agreement_gap``), is warned
about in the verdict, naming the output, whether or not it is recommended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgecraft.core.results import (
    LatencyStats,
    Measurement,
    OperatorProfile,
    PassRecord,
    ResultRow,
    RunResults,
    Throughput,
)
from edgecraft.reports.settings import ReportSettings

FLOAT_SLACK = 1e-9  # 0.98 - 0.97 is 0.010000000000000009 in floats: that drop is still within a 0.01 budget
# A quantized row below this speed-up over its fp32 row gets an operator panel: int8 that is slower, or barely
# faster, than fp32 is rarely worth its accuracy cost, and the profile says which op types ate the gain.
BARELY_FASTER = 1.2


@dataclass(frozen=True)
class ThroughputFacts:
    """One throughput configuration of a row, with what a million predictions cost at that rate."""

    entry: Throughput
    cost_per_million: float | None


@dataclass(frozen=True)
class RowFacts:
    """One result row with what the report derives from it; None where a number cannot be had."""

    row: ResultRow
    model_failure: str | None  # why the row's model could not be prepared (then the row failed)
    parameters: int | None
    reference_accuracy: float | None
    metric: str
    baseline: ResultRow | None
    accuracy_drop: float | None
    within_budget: bool
    speedup: float | None
    size_reduction: float | None
    slower_than_fp32: bool
    cost_per_million: float | None
    on_front: bool
    throughput: list[ThroughputFacts] = field(default_factory=list)
    # Why the row's timings (latency, memory, load, throughput, cost) are not device timings: its device is emulated.
    timing_not_measured: str | None = None
    # The remote device that measured the row, described: "pi5 · aarch64 · Cortex-A76"; None: this machine.
    device_label: str | None = None


@dataclass(frozen=True)
class OpChange:
    """One op type's time per inference in a quantized row and in its fp32 row (0 where absent)."""

    op_type: str
    ms: float
    fp32_ms: float
    share: float  # of the quantized row's summed op time
    nodes: int
    fp32_nodes: int

    @property
    def delta_ms(self) -> float:
        return self.ms - self.fp32_ms


@dataclass(frozen=True)
class OperatorGap:
    """Why a quantized row is slower than fp32, or barely faster: per op type, the profiled time of the row
    against its fp32 row on the same target. ``grown`` are the op types that account for the difference (their
    time grew, or they only exist in the quantized graph), the most first; ``shrunk`` those that got faster.
    ``not_measured`` says why there is no per-op comparison (a runtime without per-op time, no fp32 profile)."""

    fact: RowFacts
    profile: OperatorProfile
    fp32_profile: OperatorProfile | None
    grown: list[OpChange]
    shrunk: list[OpChange]
    not_measured: str | None

    @property
    def delta_ms(self) -> float | None:
        if self.fp32_profile is None or self.fp32_profile.total_ms is None or self.profile.total_ms is None:
            return None
        return self.profile.total_ms - self.fp32_profile.total_ms

    @property
    def grown_share(self) -> float:
        """The quantized row's share of op time held by the op types whose time grew."""
        return sum(change.share for change in self.grown)


@dataclass(frozen=True)
class Recommendation:
    """The variant to ship for one model on one target, or why there is none."""

    model: str
    target: str
    choice: RowFacts | None
    reason: str
    # Where speed cannot be judged: why (an emulated device), and the measured variants within the accuracy budget.
    timing_not_measured: str | None = None
    within_budget: list[RowFacts] = field(default_factory=list)


@dataclass(frozen=True)
class FidelityWarning:
    """A lossy row whose outputs drifted from fp32 more than its headline metric may show: ``output`` is the output
    it names (None where it is not known), ``text`` the whole warning, one line."""

    fact: RowFacts
    output: str | None
    text: str


@dataclass(frozen=True)
class PassFacts:
    """A pass record with the accuracy around its chain: before the first pass of a variant (the fp32 reference)
    and after its last (the variant's first measured row). Intermediate steps are not measured separately."""

    record: PassRecord
    accuracy_before: float | None
    accuracy_after: float | None
    after_target: str | None


@dataclass(frozen=True)
class Analysis:
    results: RunResults
    settings: ReportSettings
    facts: list[RowFacts]
    passes: list[PassFacts]
    recommendations: list[Recommendation]
    best_speedup: RowFacts | None
    best_size_reduction: RowFacts | None
    baseline_variants: list[str]
    operator_gaps: list[OperatorGap] = field(default_factory=list)
    fidelity_warnings: list[FidelityWarning] = field(default_factory=list)


def cis_overlap(a: LatencyStats, b: LatencyStats) -> bool:
    """Whether the bootstrap 95 % CIs of two medians overlap: if they do, the difference may be noise."""
    return a.p50_ci95[0] <= b.p50_ci95[1] and b.p50_ci95[0] <= a.p50_ci95[1]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points, whether each is on the front: no other point is as fast and as accurate
    and strictly better in one of the two. Written out because it is four lines for a handful of variants."""
    return [not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in points) for x, y in points]


def baseline_variants(results: RunResults) -> list[str]:
    """Names of the lossless variants (fp32 export or pure format conversion), in recipe order."""
    return list(dict.fromkeys(row.variant for row in results.rows if row.lossless))


def served_rate(measurement: Measurement) -> float:
    """The rate a row's cost is priced at: the Server scenario's VALID QPS where LoadGen found one (what a service
    sustains within its latency bound), else single-stream throughput."""
    server = next((s for s in measurement.scenarios if s.scenario == "server" and s.valid and s.value), None)
    return server.value if server and server.value else measurement.throughput_per_s


def cost_per_million(price_per_hour: float | None, throughput_per_s: float | None) -> float | None:
    """What a million predictions at ``throughput_per_s`` cost on a machine billed ``price_per_hour``."""
    if price_per_hour is None or not throughput_per_s:
        return None
    return price_per_hour / 3600 / throughput_per_s * 1e6


def timing_not_measured(row: ResultRow) -> str | None:
    """Why ``row``'s timings mean nothing on its device (it is emulated), else None."""
    if not row.emulated:
        return None
    device = f"emulated device {row.device}" if row.device else "emulated device"
    return f"{device} ({row.emulated}): timings are not device timings"


def device_label(row: ResultRow, devices: dict[str, dict[str, Any]]) -> str | None:
    """The remote device of ``row`` in a few words from its own description: "pi5 · aarch64 · Cortex-A76"."""
    if row.device is None:
        return None
    cpu = (devices.get(row.device) or {}).get("cpu") or {}
    return " · ".join(str(part) for part in (row.device, cpu.get("machine"), cpu.get("model")) if part)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def _measurement(row: ResultRow) -> Measurement:
    """The measurement of a row known to have one (every row with status "ok" has)."""
    assert row.measurement is not None, f"{row.model}/{row.variant} on {row.target} has no measurement"
    return row.measurement


def _known(value: float | None) -> float:
    """A number the caller has already checked is there."""
    assert value is not None
    return value


def _row_facts(results: RunResults, settings: ReportSettings) -> list[RowFacts]:
    models = {model.name: model for model in results.models}
    baselines: dict[tuple[str, str], ResultRow] = {}
    for r in results.rows:  # per target, the first measured lossless row (an ONNX model may run on OpenVINO too)
        if r.lossless and r.status == "ok":
            baselines.setdefault((r.model, r.target), r)
    ok = [r for r in results.rows if r.status == "ok"]
    front: set[int] = set()
    for key in {(r.model, r.target) for r in ok}:
        # Rows whose quality could not be measured, or whose timings are an emulator's, have no place on an
        # accuracy/latency front.
        group = [
            (r, accuracy)
            for r in ok
            if (r.model, r.target) == key and (accuracy := _measurement(r).accuracy) is not None and not r.emulated
        ]
        marks = pareto_front([(_measurement(r).latency_ms.p50, accuracy) for r, accuracy in group])
        front.update(id(r) for (r, _), mark in zip(group, marks) if mark)
    facts = []
    for row in results.rows:
        model = models[row.model]
        baseline = baselines.get((row.model, row.target))
        compared = baseline if baseline is not row else None  # the fp32 row is not compared with itself
        m, base = row.measurement, compared.measurement if compared else None
        accuracy = m.accuracy if m is not None else None
        reference = model.reference_accuracy
        drop = reference - accuracy if accuracy is not None and reference is not None else None
        untimed = timing_not_measured(row) or (timing_not_measured(compared) if compared else None)
        timed, base_timed = (None, None) if untimed else (m, base)  # what speed figures may be derived from
        slower = bool(
            timed
            and base_timed
            and timed.latency_ms.p50 > base_timed.latency_ms.p50
            and not cis_overlap(timed.latency_ms, base_timed.latency_ms)
        )
        facts.append(
            RowFacts(
                row=row,
                model_failure=model.failure,
                parameters=model.parameters,
                reference_accuracy=model.reference_accuracy,
                metric=model.reference.metric,
                baseline=baseline,
                accuracy_drop=drop,
                within_budget=drop is not None and drop <= settings.max_accuracy_drop + FLOAT_SLACK,
                speedup=_ratio(base_timed.latency_ms.p50, timed.latency_ms.p50) if timed and base_timed else None,
                size_reduction=_ratio(compared.size_bytes, row.size_bytes) if compared else None,
                slower_than_fp32=slower,
                cost_per_million=cost_per_million(settings.price_per_hour, served_rate(timed)) if timed else None,
                on_front=id(row) in front,
                throughput=[
                    ThroughputFacts(t, cost_per_million(settings.price_per_hour, t.items_per_s))
                    for t in (m.throughput if m and not timing_not_measured(row) else [])
                ],
                timing_not_measured=timing_not_measured(row),
                device_label=device_label(row, results.devices),
            )
        )
    return facts


def _recommend(facts: list[RowFacts], settings: ReportSettings) -> list[Recommendation]:
    """Per (model, target): the fastest measured variant within the accuracy budget (then the more accurate, then
    the smaller). The fastest such row is always on the Pareto front. Rows whose timings are not device timings (an
    emulated device) are never picked for speed: a group of only such rows names no fastest variant, says why, and
    lists the variants within the budget (their accuracy is real)."""
    recommendations = []
    for model, target in dict.fromkeys((f.row.model, f.row.target) for f in facts):
        group = [f for f in facts if (f.row.model, f.row.target) == (model, target)]
        every_measured = [f for f in group if f.row.measurement]
        measured = [f for f in every_measured if not f.timing_not_measured]
        eligible = [f for f in measured if f.within_budget]
        budget = f"{100 * settings.max_accuracy_drop:g} pt of the fp32 {group[0].metric}"
        if every_measured and not measured:
            untimed = every_measured[0].timing_not_measured
            within = [f for f in every_measured if f.within_budget]
            if within:
                judged = f"within {budget}: {', '.join(f.row.variant for f in within)}"
            elif all(_measurement(f.row).accuracy is None for f in every_measured):
                judged = "quality not measured either: no variant can be recommended"
            else:
                judged = f"no variant is within {budget}"
            reason = f"{untimed}, so no variant is picked for speed; {judged}"
            recommendations.append(Recommendation(model, target, None, reason, untimed, within))
            continue
        if eligible:
            choice = min(
                eligible,
                # Within the budget: the accuracy was measured.
                key=lambda f: (
                    _measurement(f.row).latency_ms.p50,
                    -_known(_measurement(f.row).accuracy),
                    f.row.size_bytes or 0,
                ),
            )
            reason = f"fastest variant within {budget}"
        elif measured and all(_measurement(f.row).accuracy is None for f in measured):
            # Nothing can be judged on quality: say which is fastest, and that it is only that.
            choice = None
            fastest = min(measured, key=lambda f: _measurement(f.row).latency_ms.p50)
            why = _measurement(fastest.row).quality.not_measured or "quality not measured"
            reason = f"{why}: no variant can be recommended on quality; the fastest is {fastest.row.variant}"
        elif measured:
            choice, reason = None, f"no variant is within {budget}"
        else:
            choice, reason = None, "no variant was measured on this target (see the failed and skipped rows)"
        recommendations.append(Recommendation(model, target, choice, reason))
    return recommendations


def _pass_facts(results: RunResults) -> list[PassFacts]:
    reference = {model.name: model.reference_accuracy for model in results.models}
    chains: dict[tuple[str, str | None], list[PassRecord]] = {}
    for record in results.passes:
        chains.setdefault((record.model, record.variant), []).append(record)
    facts = []
    for (model, variant), records in chains.items():
        measured = next((r for r in results.rows if (r.model, r.variant) == (model, variant) and r.measurement), None)
        if variant is None:  # shared PyTorch passes: the reference accuracy is taken after them
            before, after, target = None, reference[model], None
        else:
            before = reference[model]
            after, target = (_measurement(measured).accuracy, measured.target) if measured else (None, None)
        for index, record in enumerate(records):
            last = index == len(records) - 1
            facts.append(
                PassFacts(record, before if index == 0 else None, after if last else None, target if last else None)
            )
    return facts


def op_changes(profile: OperatorProfile, fp32: OperatorProfile) -> list[OpChange]:
    """Every op type of either timed profile with its time in both, the largest growth first."""
    mine = {op.op_type: op for op in profile.ops}
    theirs = {op.op_type: op for op in fp32.ops}
    changes = [
        OpChange(
            op_type=name,
            ms=mine[name].ms or 0.0 if name in mine else 0.0,
            fp32_ms=theirs[name].ms or 0.0 if name in theirs else 0.0,
            share=mine[name].share or 0.0 if name in mine else 0.0,
            nodes=mine[name].nodes if name in mine else 0,
            fp32_nodes=theirs[name].nodes if name in theirs else 0,
        )
        for name in dict.fromkeys([*mine, *theirs])
    ]
    return sorted(changes, key=lambda change: (-change.delta_ms, change.op_type))


def operator_gap(fact: RowFacts) -> OperatorGap | None:
    """The operator panel of a quantized row that is slower than its fp32 row, or faster by less than
    ``BARELY_FASTER``; None for any other row."""
    m = fact.row.measurement
    profile = m.operator_profile if m else None
    if (
        profile is None
        or not profile.quantized
        or fact.timing_not_measured
        or fact.speedup is None
        or fact.speedup >= BARELY_FASTER
    ):
        return None
    fp32 = fact.baseline.measurement.operator_profile if fact.baseline and fact.baseline.measurement else None
    if fp32 is None:
        reason = f"the fp32 row ({fact.baseline.variant}) has no operator profile" if fact.baseline else "no fp32 row"
    elif not profile.timed or not fp32.timed:
        reason = (profile.not_measured if not profile.timed else fp32.not_measured) or "per-op time not measured"
    else:
        changes = op_changes(profile, fp32)
        return OperatorGap(
            fact,
            profile,
            fp32,
            [c for c in changes if c.delta_ms > 0],
            sorted((c for c in changes if c.delta_ms < 0), key=lambda c: c.delta_ms),
            None,
        )
    return OperatorGap(fact, profile, fp32, [], [], reason)


def _headline_note(fact: RowFacts) -> str:
    """What the row's headline metric says beside a fidelity warning."""
    accuracy = fact.row.measurement.accuracy if fact.row.measurement else None
    if accuracy is None:
        return f" — the headline {fact.metric} was not measured"
    if fact.within_budget:
        return f" — the headline {fact.metric} ({100 * accuracy:.1f} %, within the budget) does not show it"
    return f" — besides the headline {fact.metric} ({100 * accuracy:.1f} %)"


def fidelity_warnings(results: RunResults, facts: list[RowFacts], settings: ReportSettings) -> list[FidelityWarning]:
    """Every measured lossy row (not ``lossless``): each output with an SNR below ``settings.min_output_snr_db``,
    and a top-1 agreement with fp32 more than ``settings.max_agreement_gap`` below the best other lossy row of the
    same model (on any target). An exact output has no SNR (None) and is never warned about."""
    first_output = {model.name: next(iter(model.signature.output_names), None) for model in results.models}
    lossy = [f for f in facts if not f.row.lossless and f.row.status == "ok" and f.row.measurement is not None]
    warnings = []
    for fact in lossy:
        row, fidelity = fact.row, _measurement(fact.row).fidelity
        where = f"row {row.model} · {row.variant} on {row.target}"
        for name, drift in fidelity.outputs.items():
            if drift.snr_db is not None and drift.snr_db < settings.min_output_snr_db:
                text = (
                    f"{where}: output {name!r} SNR {drift.snr_db:.1f} dB (below {settings.min_output_snr_db:g} "
                    f"dB){_headline_note(fact)}"
                )
                warnings.append(FidelityWarning(fact, name, text))
        agreement = fidelity.top1_agreement
        others = [
            f
            for f in lossy
            if f is not fact and f.row.model == row.model and _measurement(f.row).fidelity.top1_agreement is not None
        ]
        if agreement is None or not others:
            continue
        best = max(others, key=lambda f: _known(_measurement(f.row).fidelity.top1_agreement))
        best_agreement = _known(_measurement(best.row).fidelity.top1_agreement)
        if best_agreement - agreement > settings.max_agreement_gap + FLOAT_SLACK:
            output = first_output.get(row.model)
            named = f"output {output!r} " if output else ""
            text = (
                f"{where}: {named}top-1 agreement with fp32 {100 * agreement:.1f} %, "
                f"{100 * (best_agreement - agreement):.1f} pt below {best.row.variant} on {best.row.target} "
                f"({100 * best_agreement:.1f} %){_headline_note(fact)}"
            )
            warnings.append(FidelityWarning(fact, output, text))
    return warnings


def budget_warnings(results: RunResults, facts: list[RowFacts]) -> list[FidelityWarning]:
    """Rows of an accuracy-aware int8 pass that met ``max_drop`` on the calibration split, where the search chose
    its float layers, but not on the evaluation split: the choice fitted a hundred samples, and the row says so
    with both figures."""
    warnings = []
    for record in results.passes:
        control = record.accuracy_control
        if control is None or control.max_drop is None or not control.met:
            continue
        interval = control.final_interval
        spread = f" (95 % interval {100 * interval[0]:.1f}–{100 * interval[1]:.1f} %)" if interval else ""
        for fact in facts:
            row = fact.row
            if (row.model, row.variant) != (record.model, record.variant) or fact.accuracy_drop is None:
                continue
            if fact.accuracy_drop > control.max_drop + FLOAT_SLACK:
                text = (
                    f"row {row.model} · {row.variant} on {row.target}: {record.name} met its budget of "
                    f"{100 * control.max_drop:g} pt on the calibration split ({control.metric} "
                    f"{100 * control.final:.1f} %{spread}, fp32 {100 * control.fp32:.1f} %) but not on the "
                    f"evaluation split: {100 * fact.accuracy_drop:.1f} pt below fp32"
                )
                warnings.append(FidelityWarning(fact, None, text))
    return warnings


def analyse(results: RunResults, settings: ReportSettings) -> Analysis:
    facts = _row_facts(results, settings)
    budget = [f for f in facts if f.within_budget]
    # A 0.1× "best speed-up" would be no headline; an emulated row never has one.
    faster = [f for f in budget if f.speedup and f.speedup > 1 and not f.timing_not_measured]
    smaller = [f for f in budget if f.size_reduction and f.size_reduction > 1]
    return Analysis(
        results=results,
        settings=settings,
        facts=facts,
        passes=_pass_facts(results),
        recommendations=_recommend(facts, settings),
        best_speedup=max(faster, key=lambda f: _known(f.speedup), default=None),
        best_size_reduction=max(smaller, key=lambda f: _known(f.size_reduction), default=None),
        baseline_variants=baseline_variants(results),
        operator_gaps=[gap for fact in facts if (gap := operator_gap(fact)) is not None],
        fidelity_warnings=fidelity_warnings(results, facts, settings) + budget_warnings(results, facts),
    )
