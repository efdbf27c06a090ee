"""The shipped all-targets recipe on both built-in models (slow: ~10 minutes on 2 cores; `pytest -m slow`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecraft.core.results import RunResults
from tests.conftest import edgecraft

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def all_targets(tmp_path_factory: pytest.TempPathFactory) -> RunResults:
    out = tmp_path_factory.mktemp("runs")
    completed = edgecraft("run", "recipes/all-targets.yaml", "--quick", "--output-dir", str(out))
    assert completed.returncode == 0, completed.stderr
    return RunResults.model_validate_json(
        (Path(completed.stdout.strip().splitlines()[-1]).parent / "results.json").read_text()
    )


@pytest.mark.parametrize("model", ["digits-cnn", "digits-mobilenet"])
def test_every_format_within_one_point_and_fp32_exports_agree(all_targets: RunResults, model: str) -> None:
    reference = next(m.reference_accuracy for m in all_targets.models if m.name == model)
    rows = [r for r in all_targets.rows if r.model == model]
    measured = {(r.variant, r.target) for r in rows if r.status == "ok"}
    for runtime, variants in {
        "onnxruntime:cpu": ("fp32", "onnx-fp16", "onnx-int8"),
        "openvino:cpu": ("ov-fp32", "ov-fp16", "ov-int8", "fp32", "onnx-int8"),
        "litert:cpu": ("tflite-fp32", "tflite-fp16", "tflite-dynamic-int8", "tflite-int8"),
        "executorch:cpu": ("et-fp32", "et-fp16", "et-int8"),
    }.items():
        assert {(v, runtime) for v in variants} <= measured
    for row in rows:
        assert row.status in ("ok", "skipped"), row.reason
        if row.status == "ok":
            assert row.measurement.accuracy >= reference - 0.01, (row.variant, row.target)
            assert not [w for w in row.warnings if w.startswith("conversion bug?")], row.warnings
        if row.variant in ("fp32", "ov-fp32", "tflite-fp32", "et-fp32") and row.status == "ok":
            assert row.measurement.fidelity.max_abs_diff <= 1e-4, (row.variant, row.target)
