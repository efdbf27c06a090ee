"""Issue 25's findings 5 and 7 through the command line, on small stand-ins for the files that showed them: an
opset-12 detector quantized per channel, and a three-head face network with class labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft
from tests.test_model_layouts import _image_model, _run_folder


def _three_heads(path: Path) -> Path:
    """features [N, 8] → boxes [N, 4], landmarks [N, 10], face_prob [N, 2] (softmax): an MTCNN O-Net's interface."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    heads = {"boxes": 4, "landmarks": 10, "logits": 2}
    weights = [
        helper.make_tensor(f"w_{name}", TensorProto.FLOAT, [8, width], rng.standard_normal(8 * width))
        for name, width in heads.items()
    ]
    nodes = [helper.make_node("MatMul", ["features", f"w_{name}"], [name]) for name in heads]
    nodes.append(helper.make_node("Softmax", ["logits"], ["face_prob"], axis=1))
    graph = helper.make_graph(
        nodes,
        "onet",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 8])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 4]),
            helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("face_prob", TensorProto.FLOAT, ["N", 2]),
        ],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_evaluator_asks_which_of_three_heads_holds_the_scores(tmp_path: Path) -> None:
    model = _three_heads(tmp_path / "onet.onnx")
    features = np.random.default_rng(1).standard_normal((60, 8)).astype(np.float32)
    np.savez(tmp_path / "faces.npz", features=features, targets=np.arange(60) % 2)
    asked = edgecraft("bench", model, "--inputs", tmp_path / "faces.npz", "--output-dir", tmp_path / "runs")
    assert asked.returncode == 2
    assert asked.stderr.strip().splitlines() == [
        "error: the default evaluator: evaluator 'classification': the model has 3 outputs that could hold class "
        "scores (boxes [N, 4], landmarks [N, 10], face_prob [N, 2]); say which with evaluator.outputs: [NAME] in "
        "the recipe, or --evaluator-output NAME on bench"
    ]
    assert not (tmp_path / "runs").exists()  # asked before anything was measured

    said = edgecraft(
        "bench",
        model,
        "--inputs",
        tmp_path / "faces.npz",
        "--evaluator-output",
        "face_prob",
        "--quick",
        "--output-dir",
        tmp_path / "runs",
    )
    row = load_results(_run_folder(said)).rows[0]
    quality = row.measurement.quality
    assert (quality.evaluator, quality.metric) == ("classification", "top-1 accuracy") and quality.value is not None


def test_per_channel_int8_on_an_opset_12_file_is_upgraded_and_loads(tmp_path: Path) -> None:
    import onnx

    model = _image_model(tmp_path / "detector.onnx", ["batch", 3, 16, 16])
    proto = onnx.load(str(model))
    proto.opset_import[0].version = 12
    onnx.save(proto, str(model))
    np.savez(tmp_path / "images.npz", x=np.random.default_rng(2).random((40, 3, 16, 16), dtype=np.float32))
    (tmp_path / "recipe.yaml").write_text(
        f"""name: old-opset
models: [{{onnx: {model}}}]
data: {{source: {tmp_path / "images.npz"}, splits: {{train: 0.0, calibration: 0.5, evaluation: 0.5}}}}
variants:
  - name: int8
    passes: [{{type: quantize.static, per_channel: true}}]
targets: [onnxruntime:cpu, openvino:cpu]
"""
    )
    completed = edgecraft("run", tmp_path / "recipe.yaml", "--quick", "--output-dir", tmp_path / "runs")
    results = load_results(_run_folder(completed))
    assert [row.status for row in results.rows] == ["ok", "ok"], [row.reason for row in results.rows]
    (record,) = [record for record in results.passes if record.name == "quantize.static"]
    assert record.details["opset_upgrade"].startswith("12 → 13: per-channel int8")


def _branching(path: Path) -> Path:
    """x [batch, 8] → If (max(x) > 0) → MatMul in either branch: all the compute sits in subgraphs,
    where ONNX Runtime's quantizers do not reach (silero VAD's LSTM and convolutions sit inside If branches)."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)

    def branch(name: str) -> onnx.GraphProto:
        weight = helper.make_tensor(f"w_{name}", TensorProto.FLOAT, [8, 4], rng.standard_normal(32))
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"])],
            name,
            [],
            [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT, ["batch", 4])],
            [weight],
        )

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["x"], ["peak"], keepdims=0),
            helper.make_node("Greater", ["peak", "zero"], ["flag"]),
            helper.make_node("If", ["flag"], ["scores"], then_branch=branch("then"), else_branch=branch("other")),
        ],
        "branching",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_int8_pass_that_quantizes_nothing_fails_instead_of_passing_off_the_fp32_graph(tmp_path: Path) -> None:
    model = _branching(tmp_path / "branching.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(4).standard_normal((20, 8)).astype(np.float32))
    (tmp_path / "recipe.yaml").write_text(
        f"""name: branching
models: [{{onnx: {model}}}]
data: {{source: {tmp_path / "x.npz"}, splits: {{train: 0.0, calibration: 0.5, evaluation: 0.5}}}}
variants:
  - name: fp32
  - name: int8
    passes: [{{type: quantize.dynamic}}]
targets: [onnxruntime:cpu]
"""
    )
    completed = edgecraft("run", tmp_path / "recipe.yaml", "--quick", "--output-dir", tmp_path / "runs")
    rows = {row.variant: row for row in load_results(_run_folder(completed)).rows}
    assert rows["fp32"].status == "ok" and rows["int8"].status == "failed"
    assert rows["int8"].reason == (
        "pass failed: EdgecraftError: quantize.dynamic quantized no operator of this model: ONNX Runtime's quantizer "
        "found nothing it quantizes; 2 of its 4 operators are inside If/Loop subgraphs, which it leaves in float. The "
        "file would be the fp32 graph under an int8 name; use another int8 path (quantize.nncf on OpenVINO, "
        "convert.tflite int8) or leave the variant out"
    )
    assert "failed: branching · int8 · onnxruntime:cpu: pass failed: EdgecraftError: quantize.dynamic quantized no" in (
        completed.stderr
    )
