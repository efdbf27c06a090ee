"""``results.csv``: one line per (model, variant, target) with raw numbers (no units in cells, empty when absent),
for spreadsheets and scripts. A row from an emulated device (``emulated`` says why) has empty timing columns: its
accuracy and fidelity are real, its timings the emulator's."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from edgecraft.reports.analysis import Analysis, RowFacts


def _measured(read: Callable[[Any], Any]) -> Callable[[RowFacts], Any]:
    return lambda fact: read(fact.row.measurement) if fact.row.measurement else None


def _timed(read: Callable[[Any], Any]) -> Callable[[RowFacts], Any]:
    """A timing figure of the measurement: empty where the row's timings are not device timings."""
    return lambda fact: read(fact.row.measurement) if fact.row.measurement and not fact.timing_not_measured else None


def _speed(read: Callable[[RowFacts], Any]) -> Callable[[RowFacts], Any]:
    """A figure derived from timings (a flag included): empty where the row's timings are not device timings."""
    return lambda fact: None if fact.timing_not_measured else read(fact)


def _op_types(profile: Any, timed: bool) -> str:
    """The top op types with their share of op time, or their node counts (most first) where time is not measured
    or means nothing."""
    if timed:
        return ";".join(
            f"{op.op_type}:{op.share:.4f}" if op.share is not None else f"{op.op_type}:x{op.nodes}"
            for op in profile.top(5)
        )
    by_nodes = sorted(profile.ops, key=lambda op: (-op.nodes, op.op_type))
    return ";".join(f"{op.op_type}:x{op.nodes}" for op in by_nodes[:5])


def _profiled(read: Callable[[Any], Any]) -> Callable[[RowFacts], Any]:
    def cell(fact: RowFacts) -> Any:
        m = fact.row.measurement
        return read(m.operator_profile) if m and m.operator_profile else None

    return cell


COLUMNS: list[tuple[str, Callable[[RowFacts], Any]]] = [
    ("model", lambda f: f.row.model),
    ("variant", lambda f: f.row.variant),
    ("target", lambda f: f.row.target),
    ("device", lambda f: f.row.device),
    ("emulated", lambda f: f.row.emulated),
    ("status", lambda f: f.row.status),
    ("reason", lambda f: f.row.reason),
    ("model_failure", lambda f: f.model_failure),
    ("size_bytes", lambda f: f.row.size_bytes),
    ("size_reduction_vs_fp32", lambda f: f.size_reduction),
    ("parameters_fp32_model", lambda f: f.parameters),
    ("model_memory_mb", _timed(lambda m: m.model_memory_mb)),
    ("runtime_import_mb", _timed(lambda m: m.runtime_import_mb)),
    ("process_peak_mb", _timed(lambda m: m.process_peak_mb)),
    ("import_ms", _timed(lambda m: 1000 * m.import_s)),
    ("load_ms", _timed(lambda m: 1000 * m.load_s)),
    ("first_inference_ms", _timed(lambda m: m.first_inference_ms)),
    ("p50_ms", _timed(lambda m: m.latency_ms.p50)),
    ("p50_ci95_low_ms", _timed(lambda m: m.latency_ms.p50_ci95[0])),
    ("p50_ci95_high_ms", _timed(lambda m: m.latency_ms.p50_ci95[1])),
    ("iqr_ms", _timed(lambda m: m.latency_ms.iqr)),
    ("p90_ms", _timed(lambda m: m.latency_ms.p90)),
    ("p95_ms", _timed(lambda m: m.latency_ms.p95)),
    ("p99_ms", _timed(lambda m: m.latency_ms.p99)),
    ("mean_ms", _timed(lambda m: m.latency_ms.mean)),
    ("timed_runs", _measured(lambda m: m.latency_ms.runs)),
    ("process_repetitions", _measured(lambda m: len(m.repetitions) or None)),
    ("cv_across_repetitions", _timed(lambda m: m.latency_ms.cv_across_repetitions)),
    ("throughput_per_s", _timed(lambda m: m.throughput_per_s)),
    ("speedup_vs_fp32", lambda f: f.speedup),
    ("slower_than_fp32", _speed(lambda f: f.slower_than_fp32)),
    ("metric", lambda f: f.metric),
    ("accuracy", _measured(lambda m: m.accuracy)),
    ("accuracy_not_measured", _measured(lambda m: m.quality.not_measured)),
    ("accuracy_drop_vs_fp32_reference", lambda f: f.accuracy_drop),
    ("top1_agreement_with_fp32", _measured(lambda m: m.fidelity.top1_agreement)),
    ("max_abs_diff_vs_fp32", _measured(lambda m: m.fidelity.max_abs_diff)),
    ("cost_per_1m_predictions", lambda f: f.cost_per_million),
    ("pareto_front", _speed(lambda f: f.on_front)),
    ("top_op_types", lambda f: _profiled(lambda p: _op_types(p, not f.timing_not_measured))(f)),
    ("qdq_nodes", _profiled(lambda p: sum(p.qdq_nodes.values()))),
    ("float_ops_in_quantized_model", _profiled(lambda p: ";".join(f"{k}:{v}" for k, v in sorted(p.float_ops.items())))),
    ("sha256", lambda f: f.row.sha256),
]


def results_csv(analysis: Analysis) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(name for name, _ in COLUMNS)
    for fact in analysis.facts:
        writer.writerow("" if (value := read(fact)) is None else value for _, read in COLUMNS)
    return buffer.getvalue()
