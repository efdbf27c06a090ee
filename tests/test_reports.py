"""Reports from hand-built results (no ML): Pareto front, verdict under constraints, rendering of failed and skipped
rows, CSV / Markdown, and the compare gate's exit codes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgecraft.reports.analysis import analyse, pareto_front
from edgecraft.reports.compare import compare_runs
from edgecraft.reports.html import write_report
from edgecraft.reports.results_file import ResultsError
from edgecraft.reports.settings import ReportSettings
from tests.conftest import REPO, edgecraft
from tests.results_factory import mixed_run, ok, run, save


def report_cli(*args: object) -> subprocess.CompletedProcess:
    return edgecraft("report", *args)


# --- Pareto front -------------------------------------------------------------------------------------------------


def test_pareto_front_keeps_only_undominated_points() -> None:
    # (latency, accuracy): b is faster and as accurate as a; c is slower and less accurate than b; d is the most
    # accurate but slowest; e duplicates b exactly (equal points do not dominate each other).
    points = [(2.0, 0.90), (1.0, 0.90), (3.0, 0.85), (5.0, 0.95), (1.0, 0.90)]
    assert pareto_front(points) == [False, True, False, True, True]


def test_pareto_front_of_one_point_and_of_none() -> None:
    assert pareto_front([(1.0, 0.5)]) == [True]
    assert pareto_front([]) == []


def test_front_is_per_model_and_target_and_ignores_unmeasured_rows() -> None:
    facts = analyse(mixed_run(), ReportSettings()).facts
    assert [(f.row.variant, f.row.target, f.on_front) for f in facts if f.on_front] == [
        ("fp32", "onnxruntime:cpu", True),
        ("int8", "onnxruntime:cpu", True),
    ]  # dyn: slower than fp32 at the same accuracy


# --- verdict --------------------------------------------------------------------------------------------------------


def test_verdict_picks_the_fastest_variant_within_the_accuracy_budget() -> None:
    analysis = analyse(mixed_run(), ReportSettings(max_accuracy_drop=0.01))
    cpu, cuda = analysis.recommendations
    assert (cpu.model, cpu.target, cpu.choice.row.variant) == ("net", "onnxruntime:cpu", "int8")
    assert cpu.choice.speedup == pytest.approx(2.0) and cpu.choice.size_reduction == pytest.approx(400 / 110)
    assert cuda.choice is None and "no variant was measured" in cuda.reason
    assert analysis.best_speedup.row.variant == "int8"
    assert analysis.best_size_reduction.row.variant == "dyn"  # smallest within budget, even though it is slow


def test_a_tighter_budget_changes_the_verdict() -> None:
    # int8 loses 0.5 pt: out at 0.4 pt, so fp32 is the fastest variant left (dyn is slower).
    analysis = analyse(mixed_run(), ReportSettings(max_accuracy_drop=0.004))
    assert analysis.recommendations[0].choice.row.variant == "fp32"
    assert analysis.best_speedup is None  # within budget only fp32 itself and dyn, which is 10× slower
    no_budget = analyse(run([ok("fp32", 1.0, 0.90, 100), ok("int8", 0.5, 0.85, 30)]), ReportSettings())
    assert no_budget.recommendations[0].choice is None
    assert "no variant is within 1 pt" in no_budget.recommendations[0].reason


def test_accuracy_drop_is_against_the_models_fp32_reference() -> None:
    facts = analyse(mixed_run(), ReportSettings()).facts  # reference 0.98
    assert [f.accuracy_drop for f in facts[:3]] == pytest.approx([0.0, 0.005, 0.0])
    assert all(f.accuracy_drop is None and not f.within_budget for f in facts[3:])


def test_int8_slower_than_fp32_is_flagged_only_when_the_cis_separate() -> None:
    facts = analyse(mixed_run(), ReportSettings()).facts
    assert [f.row.variant for f in facts if f.slower_than_fp32] == ["dyn"]
    noisy = analyse(run([ok("fp32", 1.0, 0.98, 100, ci=0.1), ok("int8", 1.05, 0.98, 30, ci=0.1)]), ReportSettings())
    assert not noisy.facts[1].slower_than_fp32


def test_cost_per_million_predictions_only_with_a_price() -> None:
    assert analyse(mixed_run(), ReportSettings()).facts[0].cost_per_million is None
    priced = analyse(mixed_run(), ReportSettings(price_per_hour=3.6)).facts
    assert priced[0].cost_per_million == pytest.approx(3.6 / 3600 / 1000 * 1e6)  # 1 ms → 1000/s → 1.0 per 1M


# --- rendering ------------------------------------------------------------------------------------------------------


def test_report_of_a_run_with_failed_and_skipped_rows(tmp_path: Path) -> None:
    results = mixed_run()
    html = write_report(results, tmp_path, ReportSettings(price_per_hour=1.0)).read_text()
    table = html[html.index('<table id="results"') : html.index("</table>", html.index('<table id="results"'))]
    assert table.count('<tr class="status-') == len(results.rows) == 6
    assert table.count('class="status-skipped"') == 1 and table.count('class="status-failed"') == 2
    for row in results.rows:
        assert f'data-key="{row.model}|{row.variant}|{row.target}"' in table
        if row.reason:
            assert row.reason in table  # the reason is in the table and listed under the verdict
    assert html.count("<svg") == 4 and "slower than fp32" in html and "cost / 1M" in html
    assert "nothing to ship" in html and "ship int8" in html

    with (tmp_path / "results.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert [(r["variant"], r["target"], r["status"]) for r in lines] == [
        (r.variant, r.target, r.status) for r in results.rows
    ]
    assert lines[1]["speedup_vs_fp32"] == "2.0" and lines[3]["p50_ms"] == "" and lines[2]["slower_than_fp32"] == "True"

    summary = (tmp_path / "summary.md").read_text()
    assert "ship **int8**" in summary and "nothing to ship" in summary and ":warning:" in summary
    assert summary.count("\n| net |") == len(results.rows)


def test_results_without_per_output_fidelity_get_no_fidelity_warning() -> None:
    """Older results (and these hand-built ones) carry no per-output SNR: nothing to warn about, and a stored
    ``report`` section without the fidelity thresholds reads their defaults (tests/test_verdict_snr.py has more)."""
    from edgecraft.reports.settings import report_settings

    settings = report_settings({"report": {"max_accuracy_drop": 0.02}})
    assert (settings.min_output_snr_db, settings.max_agreement_gap) == (20, 0.1)
    assert analyse(mixed_run(), settings).fidelity_warnings == []


def test_report_renders_results_without_samples_or_report_section(tmp_path: Path) -> None:
    """Older results.json files (no samples, no recipe ``report``) still render."""
    results = mixed_run()
    results.rows[0].measurement.samples_ms.clear()
    results.recipe.pop("report", None)
    assert "<svg" in write_report(results, tmp_path).read_text()


def test_report_command_rerenders_with_a_price(tmp_path: Path) -> None:
    save(mixed_run(), tmp_path)
    completed = report_cli(tmp_path, "--price-per-hour", "0.5")
    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()) == tmp_path / "report.html"
    assert "cost_per_1m_predictions" in (tmp_path / "results.csv").read_text()
    assert "cost / 1M" in (tmp_path / "report.html").read_text()


# --- compare and the gate -------------------------------------------------------------------------------------------

BASE = [ok("fp32", 1.0, 0.98, 400_000), ok("int8", 0.5, 0.975, 110_000)]


def test_mismatched_runs_are_bad_input() -> None:
    with pytest.raises(ResultsError, match="no \\(model, variant, target\\) row in common"):
        compare_runs(run(BASE), run([ok("fp32", 1.0, 0.98, 1, model="other")], models=("other",)))


def test_gate_exit_codes_through_the_real_command_line(tmp_path: Path) -> None:
    """The gate's cases are in test_compare_gate.py (in process); this runs the installed entry point once each way."""
    baseline = save(run(BASE), tmp_path / "base")
    same = save(run(BASE, name="same"), tmp_path / "same")
    slower = save(run([ok("fp32", 1.3, 0.98, 400_000), BASE[1]], name="slower"), tmp_path / "slower")

    passed = report_cli("compare", baseline, same)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.startswith("PASS") and (same / "compare.html").is_file() and (same / "compare.md").is_file()

    failed = report_cli("compare", baseline, slower, "--output-dir", tmp_path / "o")
    assert failed.returncode == 1, failed.stderr
    assert "regression: net · fp32 · onnxruntime:cpu: p50 latency +30.0 %" in failed.stdout
    assert "FAIL" in (tmp_path / "o" / "compare.md").read_text()


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda d: d.mkdir(), ["compare", "{base}", "{d}"], "results.json: not found"),
        (lambda d: (d.mkdir(), (d / "results.json").write_text("{")), ["{d}"], "not a valid results file"),
        (
            lambda d: (
                save(run(BASE), d)
                .joinpath("results.json")
                .write_text(json.dumps({**json.loads(run(BASE).model_dump_json()), "rows": [{"model": "net"}]}))
            ),
            ["{d}"],
            "rows.0.variant: Field required",
        ),
        (lambda d: save(run(BASE, report={"price_per_hour": -1}), d), ["{d}"], "recipe.report.price_per_hour"),
        (
            lambda d: save(run([ok("fp32", 1, 0.9, 1, model="x")], models=("x",)), d),
            ["compare", "{base}", "{d}"],
            "mismatched runs",
        ),
        (
            lambda d: save(run(BASE), d),
            ["compare", "{base}", "{d}", "--max-size-increase", "-1"],
            "--max-size-increase: Input should be greater than or equal to 0",
        ),
        (
            lambda d: save(run(BASE), d),
            ["compare", "{base}", "{d}", "--max-latency-increase", "1e9"],
            "--max-latency-increase: Input should be less than or equal to 1",
        ),
        (lambda d: save(run(BASE), d), ["compare", "{d}"], "usage: edgecraft report compare"),
    ],
    ids=[
        "no-results",
        "malformed-json",
        "missing-field",
        "bad-report-section",
        "mismatched",
        "bad-threshold",
        "huge-threshold",
        "one-run",
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, make, args: list[str], message: str) -> None:
    base = save(run(BASE), tmp_path / "base")
    folder = tmp_path / "input"
    make(folder)
    completed = report_cli(*(a.format(base=base, d=folder) for a in args))
    assert completed.returncode == 2, completed.stdout + completed.stderr
    err = completed.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err


def test_report_section_in_a_recipe_is_checked_with_its_line(tmp_path: Path) -> None:
    from edgecraft.core.errors import EdgecraftError
    from edgecraft.recipe.load import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nmodels: [{builtin: digits-cnn}]\nvariants: [{name: fp32}]\n"
        "report:\n  max_accuracy_drop: 0.02\n  gate:\n    max_size_increase: -0.1\n"
    )
    with pytest.raises(EdgecraftError, match=r"r.yaml:7: report.gate.max_size_increase"):
        load_recipe(recipe)
    recipe.write_text(
        "name: r\nmodels: [{builtin: digits-cnn}]\nvariants: [{name: fp32}]\n"
        "report: {max_accuracy_drop: 0.02, price_per_hour: 0.4}\n"
    )
    assert load_recipe(recipe)[0].report.price_per_hour == 0.4


def test_report_commands_import_no_ml_framework(tmp_path: Path) -> None:
    baseline, candidate = save(run(BASE), tmp_path / "a"), save(run(BASE), tmp_path / "b")
    code = (
        "import sys\nfrom edgecraft.cli import main\n"
        f"assert main(['report', {str(baseline)!r}]) == 0\n"
        f"assert main(['report', 'compare', {str(baseline)!r}, {str(candidate)!r}]) == 0\n"
        "loaded = {'torch', 'onnx', 'onnxruntime', 'tensorflow'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stderr


def test_each_target_is_compared_with_its_own_lossless_baseline() -> None:
    """A TFLite int8 row is compared with the TFLite fp32 conversion, not with an ONNX row it never ran beside."""
    from edgecraft.reports.settings import ReportSettings
    from tests.results_factory import ok, run

    tflite_fp32 = ok("tflite-fp32", 2.0, 0.98, 400_000, target="litert:cpu").model_copy(update={"lossless": True})
    tflite_int8 = ok("tflite-int8", 0.5, 0.98, 100_000, target="litert:cpu")
    facts = {
        f.row.variant: f
        for f in analyse(run([ok("fp32", 1.0, 0.98, 400_000), tflite_fp32, tflite_int8]), ReportSettings()).facts
    }
    assert facts["tflite-int8"].baseline is tflite_fp32
    assert facts["tflite-int8"].speedup == 4.0 and facts["tflite-int8"].size_reduction == 4.0
    assert facts["fp32"].baseline.variant == "fp32" and facts["tflite-fp32"].speedup is None


def _controlled(final: float, interval: tuple[float, float] | None = (0.97, 1.0)):
    from edgecraft.core.results import AccuracyControl, PassRecord

    control = AccuracyControl(
        metric="top-1 agreement with fp32",
        max_drop=0.01,
        measure="share of the output error",
        fp32=0.98,
        all_int8=0.9,
        final=final,
        final_interval=interval,
        met=True,
        layers=60,
        float_layers=["conv_stem"],
    )
    return PassRecord(
        model="net", variant="int8", name="quantize.static", config={}, seconds=1.0, accuracy_control=control
    )


def test_a_budget_met_on_calibration_but_missed_on_evaluation_is_flagged_with_both_figures(tmp_path: Path) -> None:
    results = run([ok("fp32", 10, 0.98, 100), ok("int8", 5, 0.95, 30)])  # 3 pt below fp32 on evaluation
    results.passes = [_controlled(final=0.975)]
    warnings = [w.text for w in analyse(results, ReportSettings()).fidelity_warnings]
    assert warnings == [
        "row net · int8 on onnxruntime:cpu: quantize.static met its budget of 1 pt on the calibration split "
        "(top-1 agreement with fp32 97.5 % (95 % interval 97.0–100.0 %), fp32 98.0 %) but not on the evaluation "
        "split: 3.0 pt below fp32"
    ]
    report = write_report(results, tmp_path, ReportSettings()).read_text()
    assert "but not on the evaluation split" in report and "97.00 % – 100.00 %" in report


def test_a_budget_met_on_both_splits_is_not_flagged() -> None:
    results = run([ok("fp32", 10, 0.98, 100), ok("int8", 5, 0.975, 30)])
    results.passes = [_controlled(final=0.975, interval=None)]
    assert analyse(results, ReportSettings()).fidelity_warnings == []
