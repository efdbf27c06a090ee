"""The two real pretrained built-ins through their shipped recipes, on every runtime (slow: `pytest -m slow`).

These prove on networks nobody here trained, with their own inputs, outputs and data, what the digits models
prove in the default suite: fp32 exports that reproduce PyTorch on every output, and int8 rows measured beside
them on ONNX Runtime, OpenVINO and LiteRT.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecraft.core.results import RunResults
from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft

pytestmark = pytest.mark.slow

RUNTIMES = ("onnxruntime:cpu", "openvino:cpu", "litert:cpu", "executorch:cpu")


def run(recipe: str, tmp_path: Path) -> tuple[RunResults, Path]:
    completed = edgecraft("run", recipe, "--quick", "--output-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    return load_results(run_dir), run_dir


def test_minilm_fp32_and_int8_on_every_runtime(tmp_path: Path) -> None:
    results, run_dir = run("recipes/minilm.yaml", tmp_path)
    model = results.models[0]
    assert model.signature.input_names == ["input_ids", "attention_mask"]
    assert [spec.shape for spec in model.signature.inputs] == [["batch", "sequence"]] * 2
    assert model.data_shapes["input_ids"][0] == 1 and any("(padded)" in note for note in model.data_notes)
    rows = [row for row in results.rows if row.status == "ok"]
    assert len(rows) == len(results.rows), [(r.variant, r.target, r.reason) for r in results.rows if r.status != "ok"]
    for runtime in RUNTIMES:
        measured = [row for row in rows if row.target == runtime]
        assert any(row.lossless for row in measured) and any(not row.lossless for row in measured), runtime
    for row in rows:
        if row.lossless:  # fp32 on every runtime reproduces PyTorch on every output
            assert all(o.max_abs_diff <= 1e-4 for o in row.measurement.fidelity.outputs.values()), row.target
    int8 = [row for row in rows if not row.lossless]
    assert max(row.measurement.quality.metrics["mean_cosine"] for row in int8) >= 0.99
    html = (run_dir / "report.html").read_text()
    assert "sequence length" in html and "mean cosine to fp32" in html


def test_efficientnet_lite0_fp32_and_int8_on_every_runtime(tmp_path: Path) -> None:
    results, _ = run("recipes/efficientnet-lite0.yaml", tmp_path)
    assert results.models[0].reference.metric == "top-1 agreement with fp32"
    assert all(row.status == "ok" for row in results.rows), [(r.variant, r.target, r.reason) for r in results.rows]
    for row in results.rows:
        fidelity = row.measurement.fidelity
        if row.lossless:
            assert fidelity.max_abs_diff <= 1e-4, row.target
        else:  # int8 of a real ImageNet net: measured, and far from noise (the thresholds are the report's job)
            assert 0.5 <= row.measurement.accuracy < 1.0, (row.variant, row.target)
