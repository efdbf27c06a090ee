"""Fidelity warnings in the verdict: a lossy row whose output is far from fp32 (low SNR, or a top-1 agreement far
below its model's other lossy rows) is named, with the output, whatever its headline metric says. Hand-built
results, no ML."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgecraft.core.results import Fidelity, OutputFidelity, ResultRow
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.reports.analysis import analyse
from edgecraft.reports.html import render_summary, write_report
from edgecraft.reports.settings import ReportSettings, report_settings
from tests.results_factory import ok, run

FACE = Signature(
    inputs=[TensorSpec(name="image", dtype="float32", shape=["batch", 3, 48, 48], layout="NCHW")],
    outputs=[
        TensorSpec(name="face_prob", shape=["batch", 2]),
        TensorSpec(name="boxes", shape=["batch", 4]),
        TensorSpec(name="landmarks", shape=["batch", 10]),
    ],
)


def with_fidelity(row: ResultRow, agreement: float | None = 0.99, **snr: float | None) -> ResultRow:
    """``row`` with per-output SNRs (dB; None: exact) and a top-1 agreement with fp32."""
    assert row.measurement is not None
    fidelity = Fidelity(
        top1_agreement=agreement,
        max_abs_diff=0.1,
        mean_abs_diff=0.01,
        outputs={
            name: OutputFidelity(max_abs_diff=0.1, mean_abs_diff=0.01, snr_db=value) for name, value in snr.items()
        },
    )
    return row.model_copy(update={"measurement": row.measurement.model_copy(update={"fidelity": fidelity})})


def face_run(report: dict | None = None, int8_landmarks: float = 1.8):
    results = run(
        [
            with_fidelity(ok("fp32", 1.0, 0.98, 400_000), face_prob=None, boxes=None, landmarks=None),
            # int8: 2× faster, within the accuracy budget, and its landmarks ruined.
            with_fidelity(ok("int8", 0.5, 0.975, 110_000), face_prob=35.0, boxes=24.0, landmarks=int8_landmarks),
            with_fidelity(ok("dyn", 0.8, 0.98, 105_000), face_prob=41.0, boxes=30.0, landmarks=28.0),
        ],
        report=report,
    )
    results.models[0] = results.models[0].model_copy(update={"signature": FACE})
    return results


def test_a_low_snr_output_is_warned_about_even_on_the_recommended_row() -> None:
    results = face_run()
    analysis = analyse(results, ReportSettings())
    assert analysis.recommendations[0].choice is not None and analysis.recommendations[0].choice.row.variant == "int8"
    assert [(w.fact.row.variant, w.output) for w in analysis.fidelity_warnings] == [("int8", "landmarks")]
    assert analysis.fidelity_warnings[0].text == (
        "row net · int8 on onnxruntime:cpu: output 'landmarks' SNR 1.8 dB (below 20 dB) — the headline top-1 "
        "accuracy (97.5 %, within the budget) does not show it"
    )


def test_lossless_rows_and_exact_outputs_are_never_warned_about() -> None:
    results = run(
        [
            with_fidelity(ok("fp32", 1.0, 0.98, 400_000), logits=3.0),  # lossless: its own reference
            with_fidelity(ok("int8", 0.5, 0.975, 110_000), logits=None),  # exact: no SNR
        ]
    )
    assert analyse(results, ReportSettings()).fidelity_warnings == []


def test_the_threshold_is_the_recipes_report_setting() -> None:
    results = face_run(report={"min_output_snr_db": 25})
    settings = report_settings(results.recipe)
    assert settings.min_output_snr_db == 25
    warned = {(w.fact.row.variant, w.output) for w in analyse(results, settings).fidelity_warnings}
    assert warned == {("int8", "landmarks"), ("int8", "boxes")}
    assert analyse(face_run(int8_landmarks=20.0), ReportSettings()).fidelity_warnings == []  # 20 is not below 20
    with pytest.raises(ValidationError):
        ReportSettings(min_output_snr_db=-1)


def test_an_agreement_far_below_the_other_lossy_rows_is_warned_about() -> None:
    results = run(
        [
            with_fidelity(ok("fp32", 1.0, 0.98, 400_000), agreement=1.0),
            with_fidelity(ok("int8", 0.5, 0.90, 110_000), agreement=0.62),
            with_fidelity(ok("dyn", 0.8, 0.98, 105_000), agreement=0.97),
        ]
    )
    warnings = analyse(results, ReportSettings()).fidelity_warnings
    assert [w.text for w in warnings] == [
        "row net · int8 on onnxruntime:cpu: output 'logits' top-1 agreement with fp32 62.0 %, 35.0 pt below dyn on "
        "onnxruntime:cpu (97.0 %) — besides the headline top-1 accuracy (90.0 %)"
    ]
    assert analyse(results, ReportSettings(max_agreement_gap=0.4)).fidelity_warnings == []


def test_the_warnings_are_in_the_html_verdict_and_the_markdown_summary(tmp_path: Path) -> None:
    results = face_run()
    write_report(results, tmp_path)
    html = (tmp_path / "report.html").read_text()
    verdict = html[html.index('<section id="verdict">') : html.index("</section>", html.index('id="verdict"'))]
    assert 'id="fidelity-warnings"' in verdict
    assert "output &#39;landmarks&#39; SNR 1.8 dB (below 20 dB)" in verdict
    summary = render_summary(analyse(results, ReportSettings()))
    assert "- :warning: row net · int8 on onnxruntime:cpu: output 'landmarks' SNR 1.8 dB (below 20 dB)" in summary
    assert (tmp_path / "summary.md").read_text() == summary


def test_no_warning_no_block() -> None:
    results = face_run(int8_landmarks=30.0)
    analysis = analyse(results, ReportSettings())
    assert analysis.fidelity_warnings == [] and ":warning:" not in render_summary(analysis)
