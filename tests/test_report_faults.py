"""The report writers under faults: text matplotlib would read as math, a chart that breaks, a model that could not
be prepared, and a write interrupted halfway. Each must still leave a complete report (or the previous one)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from edgecraft.core.files import write_atomic
from edgecraft.core.results import ModelRecord
from edgecraft.reports import charts
from edgecraft.reports.compare import compare_runs
from edgecraft.reports.html import write_comparison, write_report
from edgecraft.reports.results_file import load_results
from tests.results_factory import not_measured, ok, run, save

DOLLARS = "$a$ b $c$"
BAD_MATH = "exit 1: a $x^^$ b"  # not valid mathtext: matplotlib raised ValueError on it


def dollar_run():
    rows = [
        ok("fp32", 1.0, 0.98, 400_000, model=DOLLARS),
        ok("$}$", 0.5, 0.97, 100_000, model=DOLLARS),
        not_measured("int8", "failed", BAD_MATH, model=DOLLARS),
    ]
    return run(rows, models=(DOLLARS,))


def test_dollar_signs_in_names_and_errors_are_drawn_as_text(tmp_path: Path) -> None:
    html = write_report(dollar_run(), tmp_path).read_text()
    assert html.count("<svg") == 4 and "could not be drawn" not in html
    # svg.fonttype "none" keeps text as text: the name is there literally, not typeset as math.
    svg = html[html.index("<svg") :]
    assert DOLLARS in svg and "$}$" in svg and "a $x^^$ b" in svg

    comparison = compare_runs(dollar_run(), dollar_run())
    assert "<svg" in write_comparison(comparison, tmp_path).read_text()


def test_a_chart_that_fails_leaves_the_report_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(analysis) -> str:
        raise RuntimeError("no usable font")

    monkeypatch.setattr(charts, "size_per_variant", broken)
    with caplog.at_level(logging.WARNING, logger="edgecraft.reports.charts"):
        html = write_report(dollar_run(), tmp_path).read_text()
    assert html.count("<svg") == 3
    figure = html[html.index('id="chart-size"') : html.index("</figure>", html.index('id="chart-size"'))]
    assert "This chart could not be drawn (RuntimeError: no usable font)" in figure
    assert "could not be drawn: RuntimeError: no usable font" in caplog.text
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "summary.md").is_file()


def test_a_failing_comparison_chart_leaves_compare_html(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(comparison) -> str:
        raise ValueError("bad layout")

    monkeypatch.setattr(charts, "latency_change", broken)
    html = write_comparison(compare_runs(dollar_run(), dollar_run()), tmp_path).read_text()
    assert "This chart could not be drawn (ValueError: bad layout)" in html and "<svg" not in html


def failed_model_run():
    broken = ModelRecord(
        name="broken", source="tests.helpers:raising_factory", failure="factory raised ValueError: boom"
    )
    results = run(
        [ok("fp32", 1.0, 0.98, 400_000), not_measured("fp32", "failed", "model not prepared", model="broken")],
        models=("net", "broken"),
    )
    results.models[1] = broken
    return results


def test_a_model_record_with_only_a_failure_validates_and_round_trips(tmp_path: Path) -> None:
    record = ModelRecord(name="m", source="pkg:fn", failure="factory raised ValueError: boom")
    assert record.signature.inputs == [] and record.reference_accuracy is None and record.reference.not_measured
    assert record.evaluation_data is None
    assert load_results(save(failed_model_run(), tmp_path)).models[1] == failed_model_run().models[1]


def test_a_model_that_could_not_be_prepared_renders_everywhere(tmp_path: Path) -> None:
    html = write_report(failed_model_run(), tmp_path).read_text()
    alert = html[html.index('id="model-failures"') : html.index("</div>", html.index('id="model-failures"'))]
    assert "broken" in alert and "factory raised ValueError: boom" in alert
    models = html[html.index('<table id="models"') : html.index("</table>", html.index('<table id="models"'))]
    assert "not prepared" in models and "factory raised ValueError: boom" in models
    assert html.count("<svg") == 4

    with (tmp_path / "results.csv").open() as handle:
        lines = list(csv.DictReader(handle))
    assert [(line["model"], line["status"], line["model_failure"]) for line in lines] == [
        ("net", "ok", ""),
        ("broken", "failed", "factory raised ValueError: boom"),
    ]
    summary = (tmp_path / "summary.md").read_text()
    assert "- :x: **broken** could not be prepared: factory raised ValueError: boom" in summary


# --- atomic writes ---------------------------------------------------------------------------------------------------


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_atomic(tmp_path / "results.json", "old and complete")

    def killed(_: int) -> None:  # the new text is in the temporary file, not yet in place
        raise KeyboardInterrupt

    monkeypatch.setattr("edgecraft.core.files.os.fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new " * 10_000)
    assert path.read_text() == "old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_a_report_that_fails_to_write_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = failed_model_run()
    write_report(results, tmp_path)
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("edgecraft.core.files.os.replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_report(run([ok("fp32", 2.0, 0.9, 1)]), tmp_path)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before
