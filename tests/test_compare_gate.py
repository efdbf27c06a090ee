"""The compare gate under every case that used to let a regression through: each test checks the exit code (0 pass,
1 regression / inconclusive / missing, 2 bad input) and the line that says why. Runs are hand-built
(``tests.results_factory``) and the command runs in process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgecraft.cli import main
from edgecraft.core.results import CONVERSION_WARNING, ModelRecord, ResultRow, RunResults, ScenarioResult
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.reports.compare import compare_runs
from edgecraft.reports.results_file import ResultsError
from tests.results_factory import SIGNATURE, measurement, not_measured, ok, run, save, tamper

CPU = "onnxruntime:cpu"
BASE = [ok("fp32", 1.0, 0.98, 400_000), ok("int8", 0.5, 0.975, 110_000)]


class Gate:
    """``edgecraft report compare BASELINE CANDIDATE`` in process: its exit code and what it printed."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        self.lines = out.splitlines()

    def why(self, kind: str) -> list[str]:
        return [line for line in self.lines if line.startswith(f"{kind}: ")]


@pytest.fixture
def gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    def compare(baseline: RunResults | Path, candidate: RunResults | Path, *options: object) -> Gate:
        base = baseline if isinstance(baseline, Path) else save(baseline, tmp_path / "base")
        cand = candidate if isinstance(candidate, Path) else save(candidate, tmp_path / "cand")
        code = main(["report", "compare", str(base), str(cand), *map(str, options)])
        out, err = capsys.readouterr()
        return Gate(code, out, err)

    return compare


def bad_input(result: Gate, message: str) -> None:
    assert result.code == 2, result.out + result.err
    err = result.err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err


def with_warning(row: ResultRow, warning: str) -> ResultRow:
    return row.model_copy(update={"warnings": [*row.warnings, warning]})


def with_model(results: RunResults, **changes: object) -> RunResults:
    results.models[0] = results.models[0].model_copy(update=changes)
    return results


# --- pass, and the summary line --------------------------------------------------------------------------------------


def test_identical_runs_pass_and_say_where_the_thresholds_came_from(gate, tmp_path: Path) -> None:
    result = gate(run(BASE), run(BASE, name="cand"))
    assert result.code == 0, result.out + result.err
    assert result.lines[-1].startswith(
        "PASS: nothing fails of 2 row(s); thresholds: p50 latency +10 % (default), "
        "size +5 % (default), accuracy −1 pt (default); report: "
    )


# --- missing rows ----------------------------------------------------------------------------------------------------


def test_a_row_absent_from_the_candidate_fails_unless_allowed(gate, tmp_path: Path) -> None:
    result = gate(run(BASE), run([BASE[0]]))
    assert result.code == 1
    assert result.why("missing") == [f"missing: net · int8 · {CPU}: absent from the candidate run"]
    assert result.lines[-1].startswith("FAIL: 1 missing of 2 row(s)")

    allowed = gate(tmp_path / "base", tmp_path / "cand", "--allow-missing")
    assert allowed.code == 0 and allowed.why("missing") == [] and allowed.lines[-1].startswith("PASS")
    assert (
        "missing (allowed): **net · int8 · onnxruntime:cpu**: absent" in (tmp_path / "cand" / "compare.md").read_text()
    )


def test_a_row_skipped_where_the_baseline_measured_it_is_missing(gate, tmp_path: Path) -> None:
    result = gate(run(BASE), run([BASE[0], not_measured("int8", "skipped", "VNNI not available")]))
    assert result.code == 1
    assert result.why("missing") == [
        f"missing: net · int8 · {CPU}: measured in the baseline but skipped in the candidate: VNNI not available",
    ]
    assert gate(tmp_path / "base", tmp_path / "cand", "--allow-missing").code == 0


def test_a_row_that_failed_where_the_baseline_measured_it_fails_even_with_allow_missing(gate) -> None:
    result = gate(run(BASE), run([BASE[0], not_measured("int8", "failed", "crash")]), "--allow-missing")
    assert result.code == 1
    assert result.why("regression") == [
        f"regression: net · int8 · {CPU}: measured in the baseline but failed in the candidate: crash"
    ]


def test_rows_only_in_the_candidate_are_shown_as_new(gate, tmp_path: Path) -> None:
    result = gate(run(BASE), run([*BASE, ok("dyn", 2.0, 0.98, 100_000)]))
    assert result.code == 0, result.out
    assert f"| net | dyn | {CPU} | absent → ok |" in (tmp_path / "cand" / "compare.md").read_text()
    assert "| new |" in (tmp_path / "cand" / "compare.md").read_text()


def test_a_model_the_candidate_could_not_prepare_fails_every_row(gate) -> None:
    broken = run([not_measured("fp32", "failed", "model not prepared")])
    broken.models[0] = ModelRecord(name="net", source="net", failure="factory raised ValueError: boom")
    result = gate(run(BASE), broken, "--allow-missing")
    assert result.code == 1
    assert result.why("regression") == [
        f"regression: net · {variant} · {CPU}: the candidate could not prepare model net: factory raised "
        "ValueError: boom"
        for variant in ("fp32", "int8")
    ]


def test_a_failed_model_without_rows_still_fails_rather_than_mismatch(gate) -> None:
    broken = run([])
    broken.models[0] = ModelRecord(name="net", source="net", failure="data raised OSError: gone")
    result = gate(run(BASE), broken)
    assert result.code == 1 and len(result.why("regression")) == 2


# --- thresholds: from the command line, else the baseline, never the candidate ---------------------------------------

SLOWER = [ok("fp32", 1.3, 0.98, 400_000), BASE[1]]  # +30 %, CIs apart


def test_the_candidates_own_thresholds_are_ignored(gate, tmp_path: Path) -> None:
    lenient = run(SLOWER, report={"gate": {"max_latency_increase": 0.5, "max_accuracy_drop": 0.2}})
    result = gate(run(BASE), lenient)
    assert result.code == 1
    assert result.why("regression")[0].startswith(f"regression: net · fp32 · {CPU}: p50 latency +30.0 %")
    assert "thresholds: p50 latency +10 % (default)" in result.lines[-1]
    for report in ("compare.md", "compare.html"):
        assert (
            "p50 latency +10 % (default), size +5 % (default), accuracy −1 pt (default)"
            in (tmp_path / "cand" / report).read_text()
        )


def test_the_candidate_cannot_switch_its_gate_off(gate, tmp_path: Path) -> None:
    """The issue's candidate recipe: an unbounded gate is refused as bad input, not obeyed."""
    off = tamper(
        save(run(SLOWER), tmp_path / "off"),
        "recipe.report",
        {"gate": {"max_latency_increase": 1.0e9, "max_size_increase": math.inf, "max_accuracy_drop": 1.0}},
    )
    bad_input(gate(run(BASE), off), "recipe.report.gate.max_latency_increase: Input should be less than or equal to 1")


def test_thresholds_from_the_baseline_recipe(gate, tmp_path: Path) -> None:
    baseline = run(
        BASE, report={"gate": {"max_latency_increase": 0.5, "max_size_increase": 0.2, "max_accuracy_drop": 0.03}}
    )
    worse = run([ok("fp32", 1.3, 0.98, 400_000), ok("int8", 0.5, 0.95, 130_000)])  # +30 %, −2.5 pt, +18 % size
    result = gate(baseline, worse)
    assert result.code == 0, result.out
    assert (
        "thresholds: p50 latency +50 % (baseline recipe), size +20 % (baseline recipe), accuracy −3 pt "
        "(baseline recipe)"
    ) in result.lines[-1]

    tighter = gate(tmp_path / "base", tmp_path / "cand", "--max-size-increase", "0.1")
    assert tighter.code == 1
    assert tighter.why("regression") == [
        f"regression: net · int8 · {CPU}: size +18.2 % (110,000 → 130,000 bytes) exceeds +10 %"
    ]
    assert "size +10 % (command line)" in tighter.lines[-1]


def test_max_accuracy_drop_option(gate, tmp_path: Path) -> None:
    result = gate(run(BASE), run([BASE[0], ok("int8", 0.5, 0.95, 110_000)]))
    assert result.code == 1
    assert result.why("regression") == [
        f"regression: net · int8 · {CPU}: top-1 accuracy -2.50 pt (97.50 → 95.00 %) exceeds −1 pt"
    ]
    loosened = gate(tmp_path / "base", tmp_path / "cand", "--max-accuracy-drop", "0.03")
    assert loosened.code == 0 and "accuracy −3 pt (command line)" in loosened.lines[-1]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-latency-increase", "1.5", "less than or equal to 1"),
        ("--max-latency-increase", "0", "greater than or equal to 0.01"),
        ("--max-latency-increase", "nan", "a finite number"),
        ("--max-size-increase", "inf", "a finite number"),
        ("--max-size-increase", "-0.1", "greater than or equal to 0"),
        ("--max-accuracy-drop", "0.5", "less than or equal to 0.2"),
    ],
)
def test_thresholds_out_of_bounds_are_bad_input(gate, option: str, value: str, message: str) -> None:
    bad_input(gate(run(BASE), run(BASE), option, value), f"{option}: Input should be {message}")


def test_a_baseline_recipe_with_thresholds_out_of_bounds_is_bad_input(gate, tmp_path: Path) -> None:
    baseline = tamper(save(run(BASE), tmp_path / "b"), "recipe.report", {"gate": {"max_size_increase": 3}})
    bad_input(gate(baseline, run(BASE)), "recipe.report.gate.max_size_increase: Input should be less than or equal")


# --- boundaries: exactly at a threshold passes, just past it fails ---------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "code"),
    [
        ([ok("fp32", 1.1, 0.98, 400_000, ci=0.001), BASE[1]], 0),  # +10 % exactly
        ([ok("fp32", 1.1011, 0.98, 400_000, ci=0.001), BASE[1]], 1),  # +10.11 %
        ([BASE[0], ok("int8", 0.5, 0.975, 115_500)], 0),  # +5 % size exactly
        ([BASE[0], ok("int8", 0.5, 0.975, 115_501)], 1),
        ([BASE[0], ok("int8", 0.5, 0.965, 110_000)], 0),  # −1 pt exactly
        ([BASE[0], ok("int8", 0.5, 0.9649, 110_000)], 1),
    ],
    ids=["latency-at", "latency-past", "size-at", "size-past", "accuracy-at", "accuracy-past"],
)
def test_threshold_boundaries(gate, candidate: list[ResultRow], code: int) -> None:
    baseline = run([ok("fp32", 1.0, 0.98, 400_000, ci=0.001), BASE[1]])
    result = gate(baseline, run(candidate))
    assert result.code == code, result.out
    assert len(result.why("regression")) == code


# --- corrupt numbers: zero p50, NaN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p50", [0, -1.0])
def test_a_non_positive_baseline_p50_is_bad_input(gate, tmp_path: Path, p50: float) -> None:
    baseline = tamper(save(run(BASE), tmp_path / "b"), "rows.0.measurement.latency_ms.p50", p50)
    bad_input(
        gate(baseline, run(BASE)),
        f"{baseline / 'results.json'}: not a valid results file: rows.0.measurement.latency_ms.p50: "
        "Input should be greater than 0",
    )


def test_nan_cannot_enter_results() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        measurement(math.nan, 0.9)
    with pytest.raises(ValidationError, match="finite number"):
        measurement(1.0, math.nan)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "rows.1.measurement.latency_ms.p50",
            math.nan,
            "rows.1.measurement.latency_ms.p50: Input should be a finite number",
        ),
        (
            "rows.1.measurement.quality.metrics.top1",
            math.inf,
            "rows.1.measurement.quality.metrics.top1: Input should be a finite number",
        ),
        (
            "rows.1.measurement.latency_ms.p50",
            None,
            "rows.1.measurement.latency_ms.p50: Input should be a valid number (null: a NaN or an infinity?)",
        ),
    ],
    ids=["nan", "inf", "null"],
)
def test_a_non_finite_number_in_a_results_file_is_bad_input(
    gate, tmp_path: Path, field: str, value: object, message: str
) -> None:
    candidate = tamper(save(run(BASE), tmp_path / "c"), field, value)
    bad_input(gate(run(BASE), candidate), message)


def test_a_nan_handed_to_the_gate_in_memory_never_passes() -> None:
    """pydantic does not validate assignments: a NaN set after validation is caught before any verdict."""
    candidate = run([ok("fp32", 1.0, 0.98, 400_000), ok("int8", 0.5, 0.975, 110_000)])
    candidate.rows[1].measurement.quality.value = math.nan
    with pytest.raises(
        ResultsError,
        match=r"candidate run 'run': not a valid results file: "
        r"rows.1.measurement.quality.value: Input should be a finite number",
    ):
        compare_runs(run(BASE), candidate)
    baseline = run([ok("fp32", 1.0, 0.98, 400_000), ok("int8", 0.5, 0.975, 110_000)])
    baseline.rows[0].measurement.latency_ms.p50 = 0.0
    with pytest.raises(ResultsError, match=r"baseline run 'run': .*latency_ms.p50: Input should be greater than 0"):
        compare_runs(baseline, run(BASE))


# --- noise: inconclusive fails ---------------------------------------------------------------------------------------


def test_ten_times_slower_with_a_wide_ci_is_inconclusive(gate) -> None:
    result = gate(run(BASE), run([ok("fp32", 10.0, 0.98, 400_000, ci=0.95), BASE[1]]))
    assert result.code == 1
    assert result.why("inconclusive") == [
        (
            f"inconclusive: net · fp32 · {CPU}: p50 latency +900.0 % (1.000 → 10.000 ms) exceeds +10 % but the 95 % "
            "CIs overlap (±2.0 % and ±95.0 %): it cannot be told from noise; measure again"
        )
    ]
    assert result.lines[-1].startswith("FAIL: 1 inconclusive of 2 row(s)")


def test_a_noisy_warning_makes_the_latency_inconclusive(gate) -> None:
    noisy = with_warning(
        ok("fp32", 1.05, 0.98, 400_000, ci=0.07), "noisy: the 95 % CI of the median is ±7.0 % (over 5 %)"
    )
    result = gate(run(BASE), run([noisy, BASE[1]]))
    assert result.code == 1
    assert result.why("inconclusive") == [
        (
            f"inconclusive: net · fp32 · {CPU}: p50 latency +5.0 % (1.000 → 1.050 ms) cannot be judged, "
            "the row is noisy (candidate: noisy: the 95 % CI of the median is ±7.0 % (over 5 %)); measure again"
        )
    ]


def test_a_ci_wider_than_the_threshold_is_inconclusive(gate) -> None:
    result = gate(run(BASE), run([ok("fp32", 1.0, 0.98, 400_000, ci=0.3), BASE[1]]))
    assert result.code == 1
    assert result.why("inconclusive") == [
        (
            f"inconclusive: net · fp32 · {CPU}: p50 latency +0.0 % (1.000 → 1.000 ms) cannot be judged: "
            "the candidate's 95 % CI is ±30.0 %, wider than the +10 % threshold; measure again"
        )
    ]


def test_a_noisy_row_whose_ci_cannot_reach_the_threshold_passes(gate) -> None:
    """Twice as fast with ±30 %: even the CI's slow end is faster than the baseline, so no regression can hide."""
    noisy = with_warning(ok("fp32", 0.5, 0.98, 400_000, ci=0.3), "noisy: the 95 % CI of the median is ±30.0 %")
    result = gate(run(BASE), run([noisy, BASE[1]]))
    assert result.code == 0, result.out


def test_a_clear_regression_on_a_noisy_row_is_a_regression(gate) -> None:
    noisy = with_warning(ok("fp32", 2.0, 0.98, 400_000), "noisy: the 3 process repetitions' medians vary by 6 %")
    result = gate(run(BASE), run([noisy, BASE[1]]))
    assert result.code == 1 and result.why("regression")[0].startswith(
        f"regression: net · fp32 · {CPU}: p50 latency +100.0 %"
    )


# --- comparable runs -------------------------------------------------------------------------------------------------

OTHER_SIGNATURE = Signature(
    inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", 3, 8, 8], layout="NCHW")],
    outputs=SIGNATURE.outputs,
)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"source": "pkg:other"}, "not comparable: model net's source differs: net vs pkg:other"),
        (
            {"signature": OTHER_SIGNATURE},
            (
                "not comparable: model net's signature differs: inputs input: float32 [batch×1×8×8] NCHW; "
                "outputs logits: float32 [batch×10] vs inputs input: float32 [batch×3×8×8] NCHW"
            ),
        ),
        (
            {"evaluation_data": "b" * 64},
            "not comparable: model net's evaluation data differs: digest aaaaaaaaaaaa vs bbbbbbbbbbbb",
        ),
        ({"data_shapes": {"input": [1, 1, 16, 16]}}, "not comparable: model net's evaluation input shapes differ"),
    ],
    ids=["source", "signature", "evaluation-data", "data-shapes"],
)
def test_runs_that_measure_different_things_are_not_comparable(gate, changes: dict, message: str) -> None:
    baseline = with_model(run(BASE), evaluation_data="a" * 64, data_shapes={"input": [1, 1, 8, 8]})
    candidate = with_model(run(BASE), evaluation_data="a" * 64, data_shapes={"input": [1, 1, 8, 8]})
    assert gate(baseline, candidate).code == 0
    bad_input(gate(baseline, with_model(candidate, **changes)), message)


def test_an_evaluation_data_digest_on_one_side_only_is_a_caveat(gate, tmp_path: Path) -> None:
    result = gate(run(BASE), with_model(run(BASE), evaluation_data="a" * 64))
    assert result.code == 0
    assert "no evaluation data digest in both runs for net" in (tmp_path / "cand" / "compare.md").read_text()


# --- warnings --------------------------------------------------------------------------------------------------------

DRIFT = f"{CONVERSION_WARNING} fp32 outputs differ from the reference by 3.10e-02 (tolerance 0.001)"


def test_a_new_conversion_bug_warning_is_a_regression(gate) -> None:
    result = gate(run(BASE), run([with_warning(BASE[0], DRIFT), BASE[1]]))
    assert result.code == 1
    assert result.why("regression") == [f"regression: net · fp32 · {CPU}: new in the candidate: {DRIFT}"]


def test_a_conversion_bug_warning_the_baseline_had_too_is_not_new(gate) -> None:
    flagged = run([with_warning(BASE[0], DRIFT), BASE[1]])
    assert gate(flagged, run([with_warning(BASE[0], DRIFT.replace("3.10", "3.20")), BASE[1]])).code == 0


def test_caveats_name_every_condition_that_differs_between_the_runs() -> None:
    """Not failures, but printed next to the verdict: another CPU, other benchmark settings, another library
    version, and too few timed runs for a latency gate to mean much."""
    baseline, candidate = run(BASE, name="base"), run(BASE, name="cand")
    candidate.environment["cpu"]["model"] = "Other CPU"
    candidate.environment.setdefault("packages", {})["onnxruntime"] = "9.9.9"
    candidate.recipe["benchmark"]["threads"] = 2
    caveats = compare_runs(baseline, candidate).caveats
    assert "different CPUs: Test CPU vs Other CPU" in caveats
    assert "benchmark.threads: 1 vs 2" in caveats
    assert any(c.startswith("onnxruntime ") and c.endswith(" vs 9.9.9") for c in caveats), caveats
    assert any(c.startswith("only 20 timed runs per row") for c in caveats), caveats
    alike = compare_runs(run(BASE, name="a"), run(BASE, name="b")).caveats
    assert not any(c.startswith(("different CPUs", "benchmark.", "onnxruntime ")) for c in alike), alike


def with_scenarios(row: ResultRow, *scenarios: ScenarioResult) -> ResultRow:
    assert row.measurement is not None
    return row.model_copy(update={"measurement": row.measurement.model_copy(update={"scenarios": list(scenarios)})})


def server(qps: float, valid: bool = True) -> ScenarioResult:
    reason = None if valid else "latency bound not met"
    return ScenarioResult(
        scenario="server", valid=valid, invalid_reason=reason, headline="scheduled QPS", value=qps, unit="queries/s"
    )


def single_stream(p90: float) -> ScenarioResult:
    return ScenarioResult(scenario="single_stream", valid=True, headline="p90 latency", value=p90, unit="ms")


def test_a_scenario_headline_worse_beyond_the_latency_threshold_fails_the_gate(gate) -> None:
    """A rate fallen or a latency risen by more than max_latency_increase; LoadGen's rules stand in for a CI."""
    base = run([with_scenarios(BASE[0], server(100.0), single_stream(1.0)), BASE[1]])
    within = gate(base, run([with_scenarios(BASE[0], server(95.0), single_stream(1.05)), BASE[1]]))
    assert within.code == 0, within.out
    worse = gate(base, run([with_scenarios(BASE[0], server(80.0), single_stream(1.2)), BASE[1]]))
    assert worse.code == 1
    reasons = "\n".join(worse.why("regression"))
    assert (
        "server scheduled QPS 100 → 80 queries/s (-20.0 %)" in reasons
        and "single_stream p90 latency 1 → 1.2 ms" in reasons
    )
    gone = gate(base, run([with_scenarios(BASE[0], single_stream(1.0)), BASE[1]]))
    assert gone.code == 1 and "server: measured in the baseline, not run in the candidate" in gone.out
