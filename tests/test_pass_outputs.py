"""Every pass's output file is loaded in its format's runtime before the pass counts as done (compress.verify),
and ONNX Runtime's int8 passes first raise a model to the opset their output needs (per-channel: 13)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecraft.compress import registry
from edgecraft.compress.base import Artifact, Dataset, PassContext, PassOutcome
from edgecraft.compress.verify import OutputCheckFailed, verify_artifact
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.signature import Signature, TensorSpec

SIGNATURE = Signature(
    inputs=[TensorSpec(name="image", dtype="float32", shape=["batch", 3, 8, 8], layout="NCHW")],
    outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
)


def opset12_model(path: Path) -> Path:
    """Conv + Relu + Reshape + Gemm with weights, at ONNX opset 12 (as older detector exports are)."""
    rng = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8 * 8 * 8, 10)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
        numpy_helper.from_array(np.array([-1, 8 * 8 * 8], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv_w", "conv_b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("Reshape", ["relu", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "opset12",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


def context(work_dir: Path) -> PassContext:
    images = np.random.default_rng(1).uniform(0, 1, (16, 3, 8, 8)).astype(np.float32)
    data = Dataset({"image": images})
    work_dir.mkdir(parents=True, exist_ok=True)
    return PassContext(train=data, calibration=data, evaluation=data, work_dir=work_dir)


def apply(name: str, source: Path, work_dir: Path, **options) -> PassOutcome:
    pass_ = registry.get(name)
    return pass_.apply(
        Artifact("onnx", SIGNATURE, path=source), pass_.config_model(type=name, **options), context(work_dir)
    )


def opset(path: Path) -> int:
    return next(entry.version for entry in onnx.load(str(path)).opset_import if entry.domain in ("", "ai.onnx"))


def logits(path: Path, images: np.ndarray) -> np.ndarray:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]


def test_static_per_channel_int8_upgrades_an_opset12_model_and_its_output_loads(tmp_path: Path) -> None:
    source = opset12_model(tmp_path / "detector.onnx")
    outcome = apply("quantize.static", source, tmp_path / "static", per_channel=True, calibration_samples=16)
    quantized = outcome.artifact.path
    assert quantized is not None
    assert verify_artifact(outcome.artifact, "quantize.static") == []  # loads in ONNX Runtime, passes the checker
    assert outcome.details["opset_upgrade"].startswith("12 → 13: per-channel int8")
    assert opset(quantized) >= 13 and opset(source) == 12  # the user's file is left as it was
    graph = onnx.load(str(quantized)).graph
    assert any(a.name == "axis" for node in graph.node if node.op_type == "DequantizeLinear" for a in node.attribute)
    images = context(tmp_path).calibration.inputs["image"]
    reference, int8 = logits(source, images), logits(quantized, images)
    assert np.abs(reference - int8).max() < 0.1 * np.abs(reference).max()


def test_dynamic_per_channel_records_the_upgrade_and_per_tensor_leaves_the_opset(tmp_path: Path) -> None:
    source = opset12_model(tmp_path / "detector.onnx")
    per_channel = apply("quantize.dynamic", source, tmp_path / "per-channel", per_channel=True)
    assert per_channel.details == {"opset_upgrade": per_channel.details["opset_upgrade"]}
    assert per_channel.details["opset_upgrade"].startswith("12 → 13")
    assert verify_artifact(per_channel.artifact, "quantize.dynamic") == []
    per_tensor = apply("quantize.dynamic", source, tmp_path / "per-tensor")
    assert per_tensor.artifact.path is not None
    assert per_tensor.details == {} and opset(per_tensor.artifact.path) == 12


def test_an_upgrade_that_fails_fails_the_pass_with_the_converters_reason(tmp_path: Path, monkeypatch) -> None:
    from onnx import version_converter

    def refuse(*_args, **_kwargs):
        raise RuntimeError("no adapter for Frobnicate from opset 12 to 13")

    monkeypatch.setattr(version_converter, "convert_version", refuse)
    source = opset12_model(tmp_path / "detector.onnx")
    with pytest.raises(EdgecraftError) as raised:
        apply("quantize.static", source, tmp_path / "static", calibration_samples=4)
    message = str(raised.value)
    assert message.startswith("quantize.static: the model is at ONNX opset 12, but per-channel int8")
    assert "no adapter for Frobnicate from opset 12 to 13" in message


def test_a_per_channel_model_at_opset12_is_refused_by_the_check_with_onnx_runtimes_words(tmp_path: Path) -> None:
    """What the pass wrote before it upgraded: ONNX Runtime's own quantizer, per-channel, on the opset-12 model."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(context(tmp_path).calibration.samples())

        def get_next(self):
            return next(self.feeds, None)

    output = tmp_path / "model.onnx"
    quantize_static(
        str(opset12_model(tmp_path / "detector.onnx")), str(output), Reader(), quant_format=QuantFormat.QDQ,
        per_channel=True,
    )  # fmt: skip
    with pytest.raises(OutputCheckFailed) as raised:
        verify_artifact(Artifact("onnx", SIGNATURE, path=output), "quantize.static")
    message = str(raised.value)
    assert message.startswith(f"quantize.static wrote a model that onnxruntime cannot load ({output}): ")
    assert "Unrecognized attribute: axis for operator DequantizeLinear" in message  # the runtime's full text
    assert raised.value.runtime == "onnxruntime" and raised.value.path == output


def test_a_pytorch_model_is_not_checked_and_a_missing_runtime_is_noted(tmp_path: Path, monkeypatch) -> None:
    assert verify_artifact(Artifact("torch", SIGNATURE, model=object()), "prune.structured") == []
    from edgecraft.targets.runtimes.onnxruntime import OnnxRuntime

    monkeypatch.setattr(OnnxRuntime, "unavailable_reason", lambda self, device: "onnxruntime is not installed")
    source = opset12_model(tmp_path / "detector.onnx")
    assert verify_artifact(Artifact("onnx", SIGNATURE, path=source), "convert.fp16") == [
        "not loaded in onnxruntime: onnxruntime is not installed"
    ]


def _corrupt(self, artifact, config, context):
    output = context.work_dir / "model.onnx"
    output.write_bytes(b"\x08\x07 this is not a protobuf model")
    return PassOutcome(Artifact("onnx", artifact.signature, path=output))


def test_the_step_runner_fails_a_pass_whose_file_does_not_load(tmp_path: Path, monkeypatch) -> None:
    from rich.progress import Progress

    from edgecraft.compress.passes.onnx_fp16 import Fp16Conversion
    from edgecraft.step_cache import StepCache
    from edgecraft.steps import Keyed, StepRunner

    monkeypatch.setattr(Fp16Conversion, "apply", _corrupt)
    source = opset12_model(tmp_path / "detector.onnx")
    runner = StepRunner(StepCache(tmp_path / "cache"), Progress(disable=True))
    entry = Fp16Conversion.config_model(type="convert.fp16")
    with pytest.raises(OutputCheckFailed) as raised:
        runner.apply(
            "m", "v", Keyed(Artifact("onnx", SIGNATURE, path=source), "k"), [entry], context(tmp_path), tmp_path
        )
    message = str(raised.value)
    assert message.startswith("convert.fp16 wrote a model that onnxruntime cannot load (")
    assert "0-convert.fp16/model.onnx" in message and "INVALID_PROTOBUF" in message
    assert runner.records == [] and not any((tmp_path / "cache").rglob("*.onnx"))  # neither recorded nor cached


RECIPE = """\
name: unloadable
models:
  - factory: tests.helpers:tiny_net
data: {source: "tests.helpers:random_data"}
variants:
  - name: fp32
  - name: broken
    passes: [{type: convert.fp16}]
targets: [onnxruntime:cpu]
"""


def test_a_recipe_row_whose_pass_wrote_an_unloadable_file_is_failed_with_the_reason(
    tmp_path: Path, monkeypatch
) -> None:
    from edgecraft.compress.passes.onnx_fp16 import Fp16Conversion
    from edgecraft.reports.results_file import load_results
    from edgecraft.runner import run_recipe

    monkeypatch.setattr(Fp16Conversion, "apply", _corrupt)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    run_dir = run_recipe(recipe, output_dir=tmp_path / "runs", quick=True, use_cache=False)
    rows = {row.variant: row for row in load_results(run_dir).rows}
    assert rows["fp32"].status == "ok"
    broken = rows["broken"]
    assert broken.status == "failed" and broken.measurement is None and broken.reason is not None
    assert broken.reason.startswith("pass failed: OutputCheckFailed: convert.fp16 wrote a model that onnxruntime")
    assert "cannot load" in broken.reason
