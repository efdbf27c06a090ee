"""``edgecraft bench MODEL_FILE``: a ready model file measured without a recipe, and its input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft, images, labels, onnx_logits


def test_bench_an_onnx_file_on_two_targets(digits_cnn: dict, tmp_path: Path) -> None:
    model = digits_cnn["onnx"].path
    completed = edgecraft(
        "bench",
        model,
        "--target",
        "onnxruntime:cpu",
        "--target",
        "openvino:cpu",
        "--quick",
        "--price-per-hour",
        "0.36",
        "--output-dir",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = load_results(run_dir)
    assert [(r.variant, r.target, r.status) for r in results.rows] == [
        ("fp32.onnx", "onnxruntime:cpu", "ok"),
        ("fp32.onnx", "openvino:cpu", "ok"),
    ]
    ort, ov = (row.measurement for row in results.rows)
    # No data given: synthetic inputs drawn from the file's signature, so latency and memory only.
    model_record = results.models[0]
    assert [i.describe() for i in model_record.signature.inputs] == ["input: float32 [batch×1×32×32] NCHW"]
    assert model_record.signature.output_names == ["logits"] and model_record.data_shapes == {"input": [1, 1, 32, 32]}
    for measured in (ort, ov):
        assert measured.accuracy is None and measured.quality.not_measured == "not measured (no labelled data)"
        assert measured.quality.metrics == {}
    assert model_record.reference_accuracy is None
    assert (
        ort.fidelity.max_abs_diff == 0
        and ov.fidelity.max_abs_diff < 1e-4
        and ov.runtime_info["inference_precision"] == "f32"
    )
    assert ov.runtime_info["performance_hint"] == "LATENCY" and ov.runtime_info["streams"] == 1
    assert results.rows[1].artifact.endswith("model.xml")  # converted to IR for OpenVINO, like a recipe row
    assert results.benchmark["profile"] == "quick" and "edgecraft bench" in results.recipe_text
    html = (run_dir / "report.html").read_text()
    assert 'id="throughput-table"' in html and "cost / 1M" in html
    assert "not measured (no labelled data)" in html


def test_bench_with_inputs_from_an_npz(digits_cnn: dict, tmp_path: Path) -> None:
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    data = tmp_path / "data.npz"
    np.savez(data, inputs=x[:50], labels=y[:50])
    completed = edgecraft("bench", digits_cnn["onnx"].path, "--inputs", data, "--quick", "--output-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr
    results = load_results(Path(completed.stdout.strip()).parent)
    assert results.rows[0].target == "onnxruntime:cpu" and results.rows[0].status == "ok"
    expected = float((onnx_logits(digits_cnn["onnx"].path, x[:50]).argmax(1) == y[:50]).mean())
    assert results.rows[0].measurement.accuracy == pytest.approx(expected)  # on the 50 given inputs
    assert results.rows[0].measurement.quality.metric == "top-1 accuracy"


@pytest.mark.parametrize(
    ("make", "args", "expected"),
    [
        (lambda d: d / "absent.onnx", [], "model file not found"),
        (lambda d: _touch(d / "model.pt"), [], "unknown model format '.pt'"),
        (lambda d: _touch(d / "model.xml"), [], "needs its weights file model.bin"),
        (None, ["--target", "tensorrt:gpu"], "unknown runtime 'tensorrt'"),
        (None, ["--target", "onnxruntime:tpu"], "onnxruntime has no device 'tpu'"),
        (None, ["--target", "litert:cpu"], "litert runs tflite models, not fp32.onnx (onnx)"),
        (None, ["--inputs", "data.csv"], "expected an .npz file"),
        (None, ["--evaluator", "magic"], "unknown evaluator 'magic'"),
        (None, ["--pin", "4096"], "CPU 4096 does not exist here"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(digits_cnn: dict, tmp_path: Path, make, args, expected) -> None:
    model = make(tmp_path) if make else digits_cnn["onnx"].path
    completed = edgecraft("bench", model, *args, "--quick", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 2, completed.stdout + completed.stderr
    err = completed.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_npz_without_labels_measures_speed_and_says_accuracy_is_not_measured(digits_cnn: dict, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, input=images(digits_cnn["splits"], 8))
    completed = edgecraft("bench", digits_cnn["onnx"].path, "--inputs", data, "--quick", "--output-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr
    row = load_results(Path(completed.stdout.strip()).parent).rows[0]
    assert row.status == "ok" and row.measurement.accuracy is None
    assert row.measurement.quality.not_measured == "not measured (no labelled data)"


def test_npz_whose_names_do_not_match_the_model_is_one_line(digits_cnn: dict, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, image=images(digits_cnn["splits"], 8), mask=np.ones((8, 4), np.int64))
    completed = edgecraft("bench", digits_cnn["onnx"].path, "--inputs", data, "--quick", "--output-dir", tmp_path)
    err = completed.stderr.strip()
    assert completed.returncode == 2 and len(err.splitlines()) == 1, err
    assert "input(s) ['input'] are missing from the data; it has ['image', 'mask']" in err


def _touch(path: Path) -> Path:
    path.write_bytes(b"")
    return path
