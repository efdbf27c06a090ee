"""The ONNX export and the ONNX Runtime target: export, load, run, agree with PyTorch, report what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from edgecraft.compress.onnx_export import export_torch
from edgecraft.compress.zoo import image_classifier
from edgecraft.targets import registry
from edgecraft.targets.base import TargetSpec
from tests.conftest import images, torch_logits
from tests.helpers import tiny_net


def test_target_spec_parsing() -> None:
    assert TargetSpec.parse("OnnxRuntime:CPU") == TargetSpec("onnxruntime", "cpu")
    assert str(TargetSpec.parse("onnxruntime")) == "onnxruntime:cpu"


def test_export_has_dynamic_batch_and_matches_pytorch(digits_cnn: dict, tmp_path) -> None:
    target = registry.get("onnxruntime")
    runnable = target.export(digits_cnn["onnx"].path, "onnx", tmp_path)
    assert runnable.exists() and runnable.parent == tmp_path
    session = target.load(runnable, "cpu", 1, target.options_model())
    x = images(digits_cnn["splits"], 37)
    outputs = target.run(session, {"input": x})
    assert list(outputs) == ["logits"]
    assert outputs["logits"].shape == (37, 10) and outputs["logits"].dtype == np.float32
    assert np.abs(outputs["logits"] - torch_logits(digits_cnn["model"], x)).max() <= 1e-4
    assert target.run(session, {"input": x[:1]})["logits"].shape == (1, 10)
    signature = target.signature(runnable)
    assert [spec.describe() for spec in signature.inputs] == ["input: float32 [batch×1×32×32] NCHW"]
    assert signature.output_names == ["logits"]
    assert target.describe(session)["providers"] == ["CPUExecutionProvider"]


def test_export_of_a_user_model_with_a_sequential_forward(tmp_path) -> None:
    import torch

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).eval()
    path = export_torch(model, image_classifier((1, 4, 4)), tmp_path / "seq.onnx")
    target = registry.get("onnxruntime")
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    outputs = target.run(target.load(path, "cpu", 1, target.options_model()), {"input": x})["logits"]
    assert np.abs(outputs - torch_logits(model, x)).max() <= 1e-5


def test_unavailable_device_gives_a_reason() -> None:
    import onnxruntime

    target = registry.get("onnxruntime")
    assert target.unavailable_reason("cpu") is None
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the reason is only given where it is missing")
    assert "CUDAExecutionProvider" in target.unavailable_reason("cuda")


def test_unknown_device_and_runtime_are_reported() -> None:
    assert "no device 'tpu'" in registry.get("onnxruntime").unavailable_reason("tpu")
    with pytest.raises(KeyError, match="known runtimes: executorch, litert, onnxruntime, openvino"):
        registry.get("tensorrt")


def test_tiny_user_model_round_trip(tmp_path) -> None:
    model = tiny_net().eval()
    path = export_torch(model, image_classifier((1, 16, 16)), tmp_path / "tiny.onnx")
    target = registry.get("onnxruntime")
    x = np.ones((2, 1, 16, 16), np.float32)
    outputs = target.run(target.load(path, "cpu", 2, target.options_model()), {"input": x})["logits"]
    assert np.allclose(outputs, torch_logits(model, x), atol=1e-4)
