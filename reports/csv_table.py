"""``results.csv``: one line per (model, variant, target) with raw numbers (no units in cells, empty when absent),
for spreadsheets and scripts."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

from reports.analysis import Analysis, RowFacts


def _measured(read: Callable[[Any], Any]) -> Callable[[RowFacts], Any]:
    return lambda fact: read(fact.row.measurement) if fact.row.measurement else None


def _profiled(read: Callable[[Any], Any]) -> Callable[[RowFacts], Any]:
    def cell(fact: RowFacts) -> Any:
        m = fact.row.measurement
        return read(m.operator_profile) if m and m.operator_profile else None
    return cell


COLUMNS: list[tuple[str, Callable[[RowFacts], Any]]] = [
    ("model", lambda f: f.row.model),
    ("variant", lambda f: f.row.variant),
    ("target", lambda f: f.row.target),
    ("status", lambda f: f.row.status),
    ("reason", lambda f: f.row.reason),
    ("model_failure", lambda f: f.model_failure),
    ("size_bytes", lambda f: f.row.size_bytes),
    ("size_reduction_vs_fp32", lambda f: f.size_reduction),
    ("parameters_fp32_model", lambda f: f.parameters),
    ("model_memory_mb", _measured(lambda m: m.model_memory_mb)),
    ("runtime_import_mb", _measured(lambda m: m.runtime_import_mb)),
    ("process_peak_mb", _measured(lambda m: m.process_peak_mb)),
    ("import_ms", _measured(lambda m: 1000 * m.import_s)),
    ("load_ms", _measured(lambda m: 1000 * m.load_s)),
    ("first_inference_ms", _measured(lambda m: m.first_inference_ms)),
    ("p50_ms", _measured(lambda m: m.latency_ms.p50)),
    ("p50_ci95_low_ms", _measured(lambda m: m.latency_ms.p50_ci95[0])),
    ("p50_ci95_high_ms", _measured(lambda m: m.latency_ms.p50_ci95[1])),
    ("iqr_ms", _measured(lambda m: m.latency_ms.iqr)),
    ("p90_ms", _measured(lambda m: m.latency_ms.p90)),
    ("p95_ms", _measured(lambda m: m.latency_ms.p95)),
    ("p99_ms", _measured(lambda m: m.latency_ms.p99)),
    ("mean_ms", _measured(lambda m: m.latency_ms.mean)),
    ("timed_runs", _measured(lambda m: m.latency_ms.runs)),
    ("process_repetitions", _measured(lambda m: len(m.repetitions) or None)),
    ("cv_across_repetitions", _measured(lambda m: m.latency_ms.cv_across_repetitions)),
    ("throughput_per_s", _measured(lambda m: m.throughput_per_s)),
    ("speedup_vs_fp32", lambda f: f.speedup),
    ("slower_than_fp32", lambda f: f.slower_than_fp32),
    ("metric", lambda f: f.metric),
    ("accuracy", _measured(lambda m: m.accuracy)),
    ("accuracy_not_measured", _measured(lambda m: m.quality.not_measured)),
    ("accuracy_drop_vs_fp32_reference", lambda f: f.accuracy_drop),
    ("top1_agreement_with_fp32", _measured(lambda m: m.fidelity.top1_agreement)),
    ("max_abs_diff_vs_fp32", _measured(lambda m: m.fidelity.max_abs_diff)),
    ("cost_per_1m_predictions", lambda f: f.cost_per_million),
    ("pareto_front", lambda f: f.on_front),
    ("top_op_types", _profiled(lambda p: ";".join(f"{op.op_type}:{op.share:.4f}" if op.share is not None
                                                   else f"{op.op_type}:x{op.nodes}" for op in p.top(5)))),
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
