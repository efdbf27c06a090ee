"""Model files as they come from the wild (issue 25, findings 1-3): inputs whose batch is not on axis 0 or that
have none, a fixed batch of 1, dynamic axes besides the batch. Small ONNX graphs written with onnx.helper stand
in for the real files (the corpus in tests/wild runs the real ones): each has the interface that broke."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.reports.results_file import load_results
from edgecraft.targets import feeds
from tests.conftest import edgecraft
from tests.fixtures_models import write_stateful_vad


def _image_model(path: Path, shape: list[int | str]) -> Path:
    """A conv + global-average-pool classifier on an NCHW image input of ``shape`` (ints fixed, names dynamic)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    kernel = helper.make_tensor("k", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32))
    dense = helper.make_tensor("d", TensorProto.FLOAT, [4, 5], rng.standard_normal(20).astype(np.float32))
    nodes = [
        helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "d"], ["scores"]),
    ]
    batch = shape[0]
    graph = helper.make_graph(
        nodes,
        "image",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, 5])],
        [kernel, dense],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _run_folder(completed: subprocess.CompletedProcess) -> Path:
    assert completed.returncode == 0, completed.stderr[-3000:]
    return Path(completed.stdout.strip().splitlines()[-1]).parent


def test_batch_axes_are_read_from_the_files_shapes() -> None:
    signature = Signature(
        inputs=[
            TensorSpec(name="input", dtype="float32", shape=["batch", "samples"]),
            TensorSpec(name="state", dtype="float32", shape=[2, "batch", 128]),
            TensorSpec(name="sr", dtype="int64", shape=[]),
        ],
        outputs=[TensorSpec(name="output", shape=["batch", 1]), TensorSpec(name="stateN", shape=[2, "batch", 128])],
    )
    read = feeds.infer_batch_axes(signature)
    assert [spec.batch_axis for spec in read.inputs] == [1 - 1, 1, None]
    assert [spec.batch_axis for spec in read.outputs] == [0, 1]
    # Exporters that name no dimension: a state that leads with a fixed size holds the batch at its one open axis.
    unnamed = Signature(
        inputs=[
            TensorSpec(name="input", dtype="float32", shape=[None, None]),
            TensorSpec(name="state", dtype="float32", shape=[2, None, 128]),
        ],
        outputs=[],
    )
    assert [spec.batch_axis for spec in feeds.infer_batch_axes(unnamed).inputs] == [0, 1]
    fixed = Signature(
        inputs=[TensorSpec(name="image", dtype="float32", shape=[1, 128, 128, 3])],
        outputs=[TensorSpec(name="boxes", shape=[1, 896, 16])],
    )
    layout = feeds.layout(feeds.infer_batch_axes(fixed))
    assert (layout.max_batch, layout.exact, layout.limit) == (1, True, "fixed batch 1")
    # Vectors of fixed size are values, not samples: a model of them has no batch at all.
    vectors = Signature(
        inputs=[TensorSpec(name="x", dtype="float32", shape=[2]), TensorSpec(name="sr", dtype="int64", shape=[])],
        outputs=[TensorSpec(name="y", shape=[2])],
    )
    read = feeds.infer_batch_axes(vectors)
    assert [spec.batch_axis for spec in [*read.inputs, *read.outputs]] == [None, None, None]


def test_a_sequence_of_calls_carries_the_state_and_splits_back_per_sample() -> None:
    layout = feeds.Layout(
        inputs={"x": 0, "state": 1, "sr": None},
        outputs={"y": 0, "stateN": 1},
        max_batch=1,
        limit="stateful",
        state_from={"state": "stateN"},
    )
    samples = {
        "x": np.arange(3, dtype=np.float32)[:, None],
        "state": np.zeros((3, 2, 1), np.float32),
        "sr": np.full(3, 16000),
    }
    seen = []

    def run(fed: feeds.Feeds) -> feeds.Feeds:
        seen.append((fed["state"].shape, fed["sr"].shape, float(fed["state"].sum())))
        return {"y": fed["x"] * 2, "stateN": fed["state"] + fed["x"][None]}

    outputs = feeds.concatenate(layout.run_all(run, samples, batch_size=64))
    # Each call takes [2, 1, 1] state (batch on axis 1) and a scalar sr; the state accumulates 0, 1, 2.
    assert seen == [((2, 1, 1), (), 0.0), ((2, 1, 1), (), 0.0), ((2, 1, 1), (), 2.0)]
    assert outputs["y"].ravel().tolist() == [0.0, 2.0, 4.0] and outputs["stateN"].shape == (3, 2, 1)


def test_a_stateful_model_with_a_scalar_input_runs_from_the_command_line(tmp_path: Path) -> None:
    model = write_stateful_vad(tmp_path / "vad.onnx")
    out = tmp_path / "runs"
    synthetic = edgecraft("bench", model, "--input", "sr=16000", "--quick", "--output-dir", out)
    run = _run_folder(synthetic)
    assert "vad.onnx: measured at input [1, 8], state [2, 1, 4], sr []" in synthetic.stderr
    results = load_results(run)
    assert results.rows[0].status == "ok", results.rows[0].reason
    assert results.models[0].data_shapes == {"input": [1, 8], "state": [2, 1, 4], "sr": []}

    # Real data in the model's own layout: the state with its samples on axis 1, the sample rate given once.
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "real.npz",
        input=rng.standard_normal((40, 8)).astype(np.float32),
        state=np.zeros((2, 40, 4), np.float32),
        sr=np.array(16000),
    )
    stateful = edgecraft(
        "bench", model, "--inputs", tmp_path / "real.npz", "--state", "state=stateN", "--quick", "--output-dir", out
    )
    row = load_results(_run_folder(stateful)).rows[0]
    assert row.status == "ok", row.reason
    assert row.measurement.fidelity.max_abs_diff == 0.0  # the same file, the same sequence of states
    assert "throughput at batch 8 × 1: not measured (stateful: each call takes the state of the one before)" in (
        stateful.stderr
    )


def test_data_whose_shape_does_not_fit_names_the_batch_axis(tmp_path: Path) -> None:
    model = write_stateful_vad(tmp_path / "vad.onnx")
    np.savez(
        tmp_path / "wrong.npz",
        input=np.zeros((40, 8), np.float32),
        state=np.zeros((2, 40, 5), np.float32),
        sr=np.array(16000),
    )
    completed = edgecraft("bench", model, "--inputs", tmp_path / "wrong.npz", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines() == [
        f"error: --inputs {tmp_path / 'wrong.npz'}: input 'state' has shape [2, 40, 5]; the model takes [2, batch, 4] "
        "(3 dimensions, the batch on axis 1; dimension 2 must be 4)"
    ]


def test_a_fixed_batch_of_one_runs_sample_by_sample_and_says_what_it_cannot_measure(tmp_path: Path) -> None:
    model = _image_model(tmp_path / "fixed.onnx", [1, 3, 8, 8])
    np.savez(tmp_path / "real.npz", x=np.random.default_rng(0).random((30, 3, 8, 8), dtype=np.float32))
    for extra in ([], ["--inputs", tmp_path / "real.npz"]):
        completed = edgecraft("bench", model, *extra, "--quick", "--output-dir", tmp_path / "runs")
        row = load_results(_run_folder(completed)).rows[0]
        assert row.status == "ok", row.reason
        batched = [entry for entry in row.measurement.throughput if entry.batch_size > 1]
        assert batched and all(entry.not_measured == "not measured (fixed batch 1)" for entry in batched)
        assert all(entry.error is None for entry in row.measurement.throughput)
        assert "throughput at batch 8 × 1: not measured (fixed batch 1)" in completed.stderr


def test_dynamic_height_and_width_are_asked_for_then_measured_where_said(tmp_path: Path) -> None:
    model = _image_model(tmp_path / "detector.onnx", ["batch", 3, "height", "width"])
    asked = edgecraft("bench", model, "--output-dir", tmp_path / "runs")
    assert asked.returncode == 2
    assert asked.stderr.strip().splitlines() == [
        f"error: {model}: input 'x' [batch, 3, height, width] has dynamic axes 2, 3 besides the batch: say the shape "
        "to measure at with --shape x=1,3,N,N"
    ]
    said = edgecraft("bench", model, "--shape", "x=1,3,48,320", "--quick", "--output-dir", tmp_path / "runs")
    results = load_results(_run_folder(said))
    assert "detector.onnx: measured at x [1, 3, 48, 320]" in said.stderr
    assert results.models[0].data_shapes == {"x": [1, 3, 48, 320]} and results.rows[0].status == "ok"
    wrong = edgecraft("bench", model, "--shape", "x=1,4,48,320", "--output-dir", tmp_path / "runs")
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "error: --shape x=1,4,48,320: dimension 1 is fixed at 3 in the file"


def test_a_recipe_says_batch_axes_and_state_for_a_model_file(tmp_path: Path) -> None:
    model = write_stateful_vad(tmp_path / "vad.onnx")
    rng = np.random.default_rng(1)
    np.savez(
        tmp_path / "audio.npz",
        input=rng.standard_normal((60, 8)).astype(np.float32),
        state=np.zeros((2, 60, 4), np.float32),
        sr=np.array(16000),
    )
    (tmp_path / "recipe.yaml").write_text(
        f"""name: vad
models:
  - onnx: {model}
    inputs: [{{name: state, batch_axis: 1}}, {{name: sr, batch_axis: null}}]
    state_from: {{state: stateN}}
    evaluator: {{type: regression}}
data: {{source: {tmp_path / "audio.npz"}, splits: {{train: 0.0, calibration: 0.5, evaluation: 0.5}}}}
variants:
  - {{name: fp32}}
  - name: int8-dynamic
    passes: [{{type: quantize.dynamic}}]
targets: [onnxruntime:cpu]
"""
    )
    completed = edgecraft("run", tmp_path / "recipe.yaml", "--quick", "--output-dir", tmp_path / "runs")
    results = load_results(_run_folder(completed))
    assert {row.variant: row.status for row in results.rows} == {"fp32": "ok", "int8-dynamic": "ok"}, [
        row.reason for row in results.rows
    ]
    assert results.models[0].signature.state_from == {"state": "stateN"}
    assert "vad: inputs measured at input [1, 8], state [2, 1, 4], sr []" in completed.stderr


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("{name: h, batch_axis: 1}", "batch_axis names input 'h'; the model's inputs are ['input', 'state', 'sr']"),
        ("{name: state, batch_axis: 3}", "batch_axis 3 of input 'state': it has 3 dimensions [2, batch, 4]"),
    ],
)
def test_a_recipe_that_names_what_the_file_lacks_is_one_line(tmp_path: Path, entry: str, message: str) -> None:
    model = write_stateful_vad(tmp_path / "vad.onnx")
    np.savez(tmp_path / "audio.npz", input=np.zeros((10, 8), np.float32), state=np.zeros((2, 10, 4), np.float32))
    (tmp_path / "recipe.yaml").write_text(
        f"""name: vad
models: [{{onnx: {model}, inputs: [{entry}]}}]
data: {{source: {tmp_path / "audio.npz"}}}
variants: [{{name: fp32}}]
targets: [onnxruntime:cpu]
"""
    )
    completed = edgecraft("run", tmp_path / "recipe.yaml", "--quick", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 2
    assert completed.stderr.strip() == f"error: model 'vad': {message}"
