"""A reduced quickstart through the real CLI, and a run in which some rows fail or are skipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft


def test_quickstart_measures_every_row(quickstart_run: Path) -> None:
    results = load_results(quickstart_run)
    assert [(r.model, r.variant, r.target) for r in results.rows] == [
        (model, variant, "onnxruntime:cpu")
        for model in ("digits-cnn", "digits-mobilenet")
        for variant in ("fp32", "int8-static", "int8-dynamic")
    ]
    for row in results.rows:
        assert row.status == "ok", row.reason
        m = row.measurement
        assert row.size_bytes > 0 and (quickstart_run / row.artifact).stat().st_size == row.size_bytes
        # --quick: at least 20 timed runs and 0.1 s in one process
        assert m.latency_ms.runs >= 20 and len(m.repetitions) == 1 and m.repetitions[0].measure_s >= 0.1
        assert 0 < m.latency_ms.p50 <= m.latency_ms.p95 <= m.latency_ms.p99
        assert m.load_s > 0 and m.first_inference_ms > 0 and m.model_memory_mb > 0
        assert 0.9 <= m.accuracy <= 1 and m.fidelity.top1_agreement >= 0.97
    assert results.environment["packages"]["onnxruntime"]
    assert results.environment["cpu"]["logical_cores"] >= 1
    assert results.benchmark["profile"] == "quick" and results.benchmark["threads"] == 1
    assert "quantize.static" in results.recipe_text


def test_quickstart_models_reach_their_accuracy(quickstart_run: Path) -> None:
    accuracy = {m.name: m.reference_accuracy for m in load_results(quickstart_run).models}
    assert accuracy["digits-cnn"] >= 0.97
    assert accuracy["digits-mobilenet"] >= 0.95


@pytest.mark.parametrize("model", ["digits-cnn", "digits-mobilenet"])
def test_static_int8_is_3x_smaller_and_within_one_point(quickstart_run: Path, model: str) -> None:
    rows = {r.variant: r for r in load_results(quickstart_run).rows if r.model == model}
    fp32, int8 = rows["fp32"], rows["int8-static"]
    assert fp32.size_bytes / int8.size_bytes >= 3
    assert int8.measurement.accuracy >= fp32.measurement.accuracy - 0.01
    # The fp32 export must agree with PyTorch: a conversion bug would show here first.
    assert fp32.measurement.fidelity.max_abs_diff <= 1e-4


def test_report_is_self_contained_and_has_every_row(quickstart_run: Path) -> None:
    html = (quickstart_run / "report.html").read_text()
    results = load_results(quickstart_run)
    body = html[html.index('<table id="results"') : html.index("</table>", html.index('<table id="results"'))]
    assert body.count('<tr class="status-ok"') == len(results.rows)
    for row in results.rows:
        assert f'data-key="{row.model}|{row.variant}|{row.target}"' in body
    for chart in ("accuracy-latency", "size", "latency", "memory"):
        assert re.search(f'<figure class="chart" id="chart-{chart}"><figcaption>[^<]*</figcaption><svg', html), chart
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "the report must not load anything remotely"
    assert "<script src" not in html
    assert len(html) < 3_000_000
    assert (quickstart_run / "results.csv").read_text().count("\n") == len(results.rows) + 1
    assert (quickstart_run / "summary.md").read_text().count("ship **") == len(results.models)


def test_report_flags_int8_slower_than_fp32(quickstart_run: Path) -> None:
    """ONNX Runtime's dynamic int8 is usually far slower than fp32 on these CNNs: the report must say so, not hide
    it. Which rows are slower depends on the CPU, so the measured numbers decide what must be flagged."""
    html = (quickstart_run / "report.html").read_text()
    start = html.find('id="slower-than-fp32"')
    alert = html[start : html.index("</div>", start)] if start >= 0 else ""
    rows = {(r.model, r.variant): r.measurement.latency_ms for r in load_results(quickstart_run).rows}
    for (model, variant), latency in rows.items():
        slower = latency.p50_ci95[0] > rows[(model, "fp32")].p50_ci95[1]
        assert (f"{model} · <strong>{variant}</strong>" in alert) == slower, (model, variant)


def test_report_re_renders_from_results_alone(quickstart_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(quickstart_run / "results.json", copy)
    completed = edgecraft("report", str(copy))
    assert completed.returncode == 0, completed.stderr
    assert (copy / "report.html").read_text().count('<tr class="status-ok"') == 6
    assert (copy / "results.csv").is_file() and (copy / "summary.md").is_file()


def test_failed_pass_and_unavailable_target_keep_the_other_rows(tmp_path: Path, monkeypatch) -> None:
    import onnxruntime

    from edgecraft.compress.passes.onnx_quantization import DynamicQuantization
    from edgecraft.runner import run_recipe

    def broken(*_args, **_kwargs):
        raise RuntimeError("simulated quantizer crash")

    monkeypatch.setattr(DynamicQuantization, "apply", broken)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: partial\nmodels: [{builtin: digits-cnn}]\n"
        "variants: [{name: fp32}, {name: dyn, passes: [{type: quantize.dynamic}]}]\n"
        "targets: [onnxruntime:cpu, onnxruntime:cuda]\n"
    )
    # Without the step cache: an earlier test may have finished this very quantize.dynamic step, and reusing it
    # would (rightly) never call the broken pass.
    run_dir = run_recipe(recipe, output_dir=tmp_path / "runs", quick=True, use_cache=False)
    rows = {(r.variant, r.target): r for r in load_results(run_dir).rows}
    assert rows[("fp32", "onnxruntime:cpu")].status == "ok"
    for target in ("onnxruntime:cpu", "onnxruntime:cuda"):
        assert rows[("dyn", target)].status == "failed"
        assert "simulated quantizer crash" in rows[("dyn", target)].reason
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        cuda = rows[("fp32", "onnxruntime:cuda")]
        assert cuda.status == "skipped" and "CUDAExecutionProvider" in cuda.reason
    html = (run_dir / "report.html").read_text()
    assert "simulated quantizer crash" in html and html.count('<tr class="status-failed"') == 2


def test_an_export_failure_and_a_drifting_reference_mark_their_own_rows(tmp_path: Path, monkeypatch) -> None:
    """A converter that crashes fails its row with the reason; a lossless row whose outputs drift from the
    reference carries the conversion-bug warning, measured, not asserted by the code about itself."""
    from edgecraft.compress import torch_io
    from edgecraft.runner import run_recipe
    from edgecraft.targets.runtimes.openvino import OpenVino

    def crashing_export(*_args, **_kwargs):
        raise RuntimeError("simulated converter crash")

    real_predict = torch_io.predict

    def drifted_reference(*args, **kwargs):  # the fp32 reference 1e-3 off: every lossless row must be flagged
        return {name: values + 1e-3 for name, values in real_predict(*args, **kwargs).items()}

    monkeypatch.setattr(OpenVino, "export", crashing_export)
    monkeypatch.setattr(torch_io, "predict", drifted_reference)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: faults\nmodels: [{builtin: digits-cnn}]\nvariants: [{name: fp32}]\n"
        "targets: [onnxruntime:cpu, openvino:cpu]\n"
    )
    rows = {r.target: r for r in load_results(run_recipe(recipe, output_dir=tmp_path / "runs", quick=True)).rows}
    assert rows["openvino:cpu"].status == "failed"
    assert rows["openvino:cpu"].reason == "export failed: RuntimeError: simulated converter crash"
    ort = rows["onnxruntime:cpu"]
    assert ort.status == "ok" and ort.measurement.fidelity.max_abs_diff == pytest.approx(1e-3, rel=0.01)
    drift = [w for w in ort.warnings if w.startswith("conversion bug?")]
    assert len(drift) == 1 and re.fullmatch(
        r"conversion bug\? fp32 outputs differ from the reference by 1\.0\de-03 \(tolerance 0\.0001\)", drift[0]
    )
