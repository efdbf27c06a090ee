"""Reports of rows measured on remote devices (no ML): an emulated device's timings are never shown or compared,
its accuracy and fidelity are; the device is named and described."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import pytest

from edgecraft.core.results import OperatorProfile, OperatorTime, ResultRow, RunResults, Throughput
from edgecraft.reports.analysis import analyse
from edgecraft.reports.compare import compare_runs
from edgecraft.reports.csv_table import results_csv
from edgecraft.reports.html import render_html, render_summary, write_comparison, write_report
from edgecraft.reports.settings import ReportSettings
from tests.results_factory import not_measured, ok, run

NATIVE = "onnxruntime:cpu"
EMULATED = "onnxruntime:arm@box"
WHY = "qemu-user aarch64 on x86_64"
BOX = {
    "python": "3.11.2",
    "platform": "Linux-6.1-aarch64-with-glibc2.36",
    "cpu": {
        "machine": "aarch64",
        "model": "Emulated Cortex-A72",
        "flags": ["asimd", "asimddp"],
        "logical_cores": 4,
        "memory_mb": 7812,
    },
    "packages": {"onnxruntime": "1.19.2", "numpy": "1.26.4"},
    "targets": {"onnxruntime:cpu": None, "openvino:cpu": "openvino is not installed"},
    "agent": {"version": "0.9.0"},
    "emulated": WHY,
}
# Latencies the emulated rows must never show: a number no native row has.
EMULATED_P50 = {"fp32": 41.234, "int8": 23.456}


def remote(row: ResultRow, device: str = "box", emulated: str | None = WHY) -> ResultRow:
    """``row`` as measured by device ``device``'s agent (emulated when ``emulated`` says why)."""
    return row.model_copy(update={"device": device, "emulated": emulated})


def with_profile(row: ResultRow, ms: float) -> ResultRow:
    """``row`` with a quantized operator profile and a throughput pass (both timed on its device)."""
    profile = OperatorProfile(
        source="onnxruntime profiler",
        runs=10,
        total_ms=ms,
        quantized=True,
        ops=[
            OperatorTime(op_type="QLinearConv", nodes=2, ms=ms * 0.7, share=0.7),
            OperatorTime(op_type="QuantizeLinear", nodes=5, ms=ms * 0.3, share=0.3),
        ],
    )
    m = row.measurement.model_copy(
        update={
            "operator_profile": profile,
            "throughput": [Throughput(batch_size=8, parallel=1, items_per_s=987.6, batch_latency_ms=8.1, seconds=1.0)],
        }
    )
    return row.model_copy(update={"measurement": m})


def remote_run(
    name: str = "remote",
    emulated_int8_p50: float = EMULATED_P50["int8"],
    emulated_int8_accuracy: float = 0.975,
    report: dict | None = None,
) -> RunResults:
    """A native fp32 + int8 pair on this machine and an emulated fp32 + int8 pair on device "box"; the emulated
    int8 is slower than its fp32 (an emulator's artefact) and barely faster rows would get an operator panel."""
    results = run(
        [
            ok("fp32", 1.0, 0.98, 400_000, target=NATIVE),
            ok("int8", 0.5, 0.975, 110_000, target=NATIVE),
            remote(ok("fp32", EMULATED_P50["fp32"], 0.98, 400_000, target=EMULATED)),
            remote(
                with_profile(
                    ok("int8", emulated_int8_p50, emulated_int8_accuracy, 110_000, target=EMULATED), emulated_int8_p50
                )
            ),
        ],
        report=report,
        name=name,
    )
    return results.model_copy(update={"devices": {"box": BOX}})


def settings() -> ReportSettings:
    return ReportSettings(max_accuracy_drop=0.01, price_per_hour=1.0)


# --- analysis -------------------------------------------------------------------------------------------------------


def test_emulated_rows_get_no_speed_figures_but_keep_accuracy_and_size() -> None:
    analysis = analyse(remote_run(emulated_int8_p50=60.0), settings())
    emulated = [f for f in analysis.facts if f.row.target == EMULATED]
    for fact in emulated:
        assert (
            fact.timing_not_measured
            and "emulated device box" in fact.timing_not_measured
            and WHY in fact.timing_not_measured
        )
        assert (fact.speedup, fact.slower_than_fp32, fact.on_front, fact.cost_per_million, fact.throughput) == (
            None,
            False,
            False,
            None,
            [],
        )
        assert fact.device_label == "box · aarch64 · Emulated Cortex-A72"
    int8 = emulated[1]
    assert int8.accuracy_drop == pytest.approx(0.005) and int8.within_budget
    assert int8.size_reduction == pytest.approx(400 / 110)  # sizes are real on any device
    assert all(gap.fact.row.target == NATIVE for gap in analysis.operator_gaps)
    assert analysis.best_speedup.row.target == NATIVE


def test_native_rows_are_unaffected_by_emulated_ones() -> None:
    analysis = analyse(remote_run(), settings())
    native = {f.row.variant: f for f in analysis.facts if f.row.target == NATIVE}
    assert native["int8"].speedup == pytest.approx(2.0) and native["int8"].on_front and native["fp32"].on_front
    assert native["int8"].cost_per_million == pytest.approx(1.0 / 3600 / 2000 * 1e6)
    assert all(f.timing_not_measured is None and f.device_label is None for f in native.values())
    cpu = next(r for r in analysis.recommendations if r.target == NATIVE)
    assert cpu.choice.row.variant == "int8" and "fastest" in cpu.reason and cpu.timing_not_measured is None


def test_the_emulated_group_names_no_fastest_variant_and_says_why() -> None:
    analysis = analyse(remote_run(), settings())
    rec = next(r for r in analysis.recommendations if r.target == EMULATED)
    assert rec.choice is None and rec.timing_not_measured
    assert "emulated device box" in rec.reason and "not device timings" in rec.reason
    assert "fastest" not in rec.reason and rec.reason.endswith("top-1 accuracy: fp32, int8")
    assert [f.row.variant for f in rec.within_budget] == ["fp32", "int8"]
    # Accuracy is still judged: an int8 beyond the budget is not listed.
    rec = next(
        r for r in analyse(remote_run(emulated_int8_accuracy=0.9), settings()).recommendations if r.target == EMULATED
    )
    assert [f.row.variant for f in rec.within_budget] == ["fp32"] and rec.reason.endswith(": fp32")


# --- HTML, Markdown, CSV --------------------------------------------------------------------------------------------


def _row_html(page: str, variant: str, target: str) -> str:
    start = page.index(f'data-key="net|{variant}|{target}"')
    return page[start : page.index("</tr>", start)]


def test_html_says_not_measured_for_emulated_timings_and_describes_the_device() -> None:
    page = render_html(analyse(remote_run(), settings()))
    for variant, p50 in EMULATED_P50.items():
        row = _row_html(page, variant, EMULATED)
        assert "not measured: emulated device box (qemu-user aarch64 on x86_64)" in row
        assert f"{p50:.3f}" not in row and f"{p50:.3f}" not in page  # not in a chart, a card or a table either
        assert 'badge emulated" title="emulated device box' in row and ">emulated</span>" in row
        assert "on box · aarch64 · Emulated Cortex-A72" in row
        assert "98.00 %" in row or "97.50 %" in row  # accuracy shows as usual
        assert "Pareto" not in row and "recommended" not in row
    native = _row_html(page, "int8", NATIVE)
    assert "0.500" in native and "2.00×" in native and "not measured" not in native
    assert "no speed verdict" in page
    environment = page[page.index('<section id="environment">') :]
    devices = environment[environment.index('id="devices"') : environment.index("Benchmark settings")]
    for fact in (
        "Emulated Cortex-A72",
        "aarch64",
        "7,812 MB memory",
        "asimd, asimddp",
        "4 logical cores",
        "3.11.2",
        "onnxruntime 1.19.2",
        "openvino:cpu</code>: no: openvino is not installed",
        "0.9.0",
        WHY,
    ):
        assert fact in devices, fact
    # Operators: the emulated row's op time reads not measured; its node counts stay.
    operators = page[page.index('id="operators-table"') : page.index('id="pass-history"')]
    assert "QuantizeLinear ×5 · QLinearConv ×2" in operators and "op times not measured" in operators
    assert "987.6" not in page and "988" not in page  # the emulated throughput pass is not shown
    assert "1 row(s) measured on an emulated device are left out" not in page
    assert "2 row(s) measured on an emulated device are left out" in page


def test_summary_shows_no_emulated_latency() -> None:
    summary = render_summary(analyse(remote_run(), settings()))
    assert "not measured: emulated device box" in summary and "no speed verdict" in summary
    assert all(f"{p50:.3f}" not in summary for p50 in EMULATED_P50.values())


HOSTILE = "<img src=x onerror=alert(1)> [x](javascript:alert(2)) `a|b` *c* <script>"


def test_summary_carries_outside_strings_as_text() -> None:
    """An agent's reason, an emulator's description and a variant name reach summary.md (a pull-request comment) as
    literal text: no HTML, no link, no code span, and every table row keeps its columns."""
    results = remote_run()
    rows = [r.model_copy(update={"emulated": HOSTILE}) if r.emulated else r for r in results.rows]
    rows.append(remote(not_measured("v|<b>", "failed", f"device box: {HOSTILE}", target=EMULATED), emulated=None))
    results = results.model_copy(update={"rows": rows, "parallel_devices": ["box", "pi<5>"]})
    summary = render_summary(analyse(results, settings()))
    for raw in ("<img", "<script>", "<b>", "<5>"):
        assert raw not in summary, raw
    for unescaped in (r"(?<!\\)\]\(javascript:", r"(?<!\\)`a", r"(?<!\\)\*c"):
        assert not re.search(unescaped, summary), unescaped
    assert (
        "&lt;img src=x onerror=alert(1)&gt; \\[x\\](javascript:alert(2)) \\`a\\|b\\` \\*c\\* &lt;script&gt;" in summary
    )
    assert "| net | v\\|&lt;b&gt; |" in summary
    assert "Measured in parallel: box, pi&lt;5&gt; (one job at a time per device)." in summary
    table = [line for line in summary.splitlines() if line.startswith("| ")]
    columns = {len(re.findall(r"(?<!\\)\|", line)) for line in table}
    assert len(table) == 6 and len(columns) == 1, table


def test_csv_has_the_device_and_empty_timings_for_emulated_rows() -> None:
    lines = list(csv.DictReader(io.StringIO(results_csv(analyse(remote_run(), settings())))))
    assert {"device", "emulated"} <= set(lines[0])
    timing = [
        "model_memory_mb",
        "process_peak_mb",
        "load_ms",
        "first_inference_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "throughput_per_s",
        "speedup_vs_fp32",
        "slower_than_fp32",
        "cost_per_1m_predictions",
        "pareto_front",
    ]
    for line in lines:
        if line["target"] == EMULATED:
            assert (line["device"], line["emulated"]) == ("box", WHY)
            assert all(line[column] == "" for column in timing), line
            assert line["accuracy"] and line["top1_agreement_with_fp32"]
        else:
            assert (line["device"], line["emulated"]) == ("", "")
            assert line["p50_ms"] and line["pareto_front"] == "True"
    assert lines[3]["top_op_types"] == "QuantizeLinear:x5;QLinearConv:x2"  # node counts, no time shares


def test_a_run_of_only_emulated_rows_renders(tmp_path: Path) -> None:
    results = remote_run()
    results = results.model_copy(update={"rows": [r for r in results.rows if r.emulated]})
    page = write_report(results, tmp_path).read_text()
    assert "could not be drawn" not in page and "no row with device timings" in page
    assert "best speed-up within budget<strong>–" in page


# --- compare gate ---------------------------------------------------------------------------------------------------


def test_the_gate_never_compares_an_emulated_latency_but_gates_its_accuracy(tmp_path: Path) -> None:
    base = remote_run("base")
    slower = remote_run("cand", emulated_int8_p50=2 * EMULATED_P50["int8"])
    comparison = compare_runs(base, slower)
    assert comparison.outcome == "PASS", [f.why for row in comparison.failing for f in row.failures]
    row = next(r for r in comparison.rows if (r.variant, r.target) == ("int8", EMULATED))
    assert row.latency_change is None and row.cis_overlap is None and row.verdict == "ok"
    assert row.latency_not_compared.startswith("latency not compared: emulated device")
    assert "latency not compared for 2: emulated device" in comparison.tally()
    write_comparison(comparison, tmp_path)
    page = (tmp_path / "compare.html").read_text()
    assert "latency not compared: emulated device" in page and f"{2 * EMULATED_P50['int8']:.3f}" not in page
    assert "not compared (emulated)" in (tmp_path / "compare.md").read_text()

    dropped = compare_runs(
        base, remote_run("cand", emulated_int8_p50=2 * EMULATED_P50["int8"], emulated_int8_accuracy=0.9)
    )
    assert dropped.outcome == "FAIL"
    [failing] = dropped.failing
    assert (failing.variant, failing.target) == ("int8", EMULATED)
    assert [f.kind for f in failing.failures] == ["regression"]
    assert re.search(r"top-1 accuracy -7\.50 pt", failing.failures[0].why)


def test_a_row_native_in_one_run_and_emulated_in_the_other_gets_no_latency_verdict() -> None:
    base = remote_run("base")
    native_box = base.model_copy(
        update={"rows": [r.model_copy(update={"emulated": None}) if r.emulated else r for r in base.rows]}
    )
    comparison = compare_runs(native_box, remote_run("cand", emulated_int8_p50=3 * EMULATED_P50["int8"]))
    assert comparison.outcome == "PASS"
    row = next(r for r in comparison.rows if (r.variant, r.target) == ("int8", EMULATED))
    assert "candidate: " + WHY in row.latency_not_compared
