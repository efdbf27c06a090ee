"""Each registered pass on the trained digits-cnn: what it writes, and that accuracy survives."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from edgecraft.compress import registry
from edgecraft.compress.base import PassContext
from edgecraft.compress.cpu import int8_saturates
from tests.conftest import images, labels, onnx_logits


def apply(name: str, digits_cnn: dict, tmp_path, **options):
    context = PassContext(**{**vars(digits_cnn["context"]), "work_dir": tmp_path})
    pass_ = registry.get(name)
    config = pass_.config_model(type=name, **options)
    return pass_.apply(digits_cnn["onnx"], config, context)


def ops(path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def accuracy(path, splits) -> float:
    x, y = images(splits), labels(splits)
    return float((onnx_logits(path, x).argmax(1) == y).mean())


def test_registry_finds_passes_and_rejects_unknown_names() -> None:
    assert {"quantize.static", "quantize.dynamic"} <= set(registry.passes())
    with pytest.raises(KeyError, match=r"known passes: .*quantize\.static"):
        registry.get("quantize.magic")


@pytest.mark.parametrize("method", ["minmax", "entropy"])
def test_static_int8_is_qdq_smaller_and_as_accurate(digits_cnn: dict, tmp_path, method: str) -> None:
    outcome = apply("quantize.static", digits_cnn, tmp_path, calibration_method=method, calibration_samples=64)
    quantized, original = outcome.artifact.path, digits_cnn["onnx"].path
    assert outcome.artifact.format == "onnx" and quantized.parent == tmp_path
    counts = ops(quantized)
    assert counts["QuantizeLinear"] > 0 and counts["DequantizeLinear"] >= counts["Conv"]
    assert original.stat().st_size / quantized.stat().st_size >= 3
    assert accuracy(quantized, digits_cnn["splits"]) >= accuracy(original, digits_cnn["splits"]) - 0.01
    assert outcome.details == {
        "calibration_samples": 64,
        "calibration_method": method,
        "reduce_range": int8_saturates(),
    }


def test_static_int8_activation_type_is_honoured(digits_cnn: dict, tmp_path) -> None:
    signed = apply("quantize.static", digits_cnn, tmp_path, activation_type="int8", calibration_samples=16)
    graph = onnx.load(str(signed.artifact.path)).graph
    zero_points = {init.name: init for init in graph.initializer if "zero_point" in init.name}
    activation_zero = next(z for name, z in zero_points.items() if "input" in name)
    assert activation_zero.data_type == onnx.TensorProto.INT8


def test_dynamic_int8_quantizes_weights_without_calibration(digits_cnn: dict, tmp_path) -> None:
    outcome = apply("quantize.dynamic", digits_cnn, tmp_path)
    counts = ops(outcome.artifact.path)
    assert counts["ConvInteger"] > 0 or counts["DynamicQuantizeLinear"] > 0
    assert digits_cnn["onnx"].path.stat().st_size / outcome.artifact.path.stat().st_size >= 3
    assert (
        accuracy(outcome.artifact.path, digits_cnn["splits"])
        >= accuracy(digits_cnn["onnx"].path, digits_cnn["splits"]) - 0.01
    )


def test_quantized_outputs_stay_close_to_fp32(digits_cnn: dict, tmp_path) -> None:
    outcome = apply("quantize.static", digits_cnn, tmp_path, calibration_samples=64)
    x = images(digits_cnn["splits"], 64)
    reference, quantized = onnx_logits(digits_cnn["onnx"].path, x), onnx_logits(outcome.artifact.path, x)
    assert (reference.argmax(1) == quantized.argmax(1)).mean() >= 0.95
    assert np.abs(reference - quantized).mean() < 0.5


def test_importing_one_pass_module_first_still_registers_every_pass() -> None:
    """A fresh process that imports one pass module directly must still see the whole table (and the targets')."""
    import subprocess
    import sys

    code = (
        "import edgecraft.compress.passes.export, edgecraft.targets.runtimes.litert\n"
        "from edgecraft.compress import registry\nfrom edgecraft.targets import registry as targets\n"
        "print(len(registry.passes()), len(targets.runtimes()))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    passes, runtimes = map(int, completed.stdout.split())
    assert passes == len(registry.passes()) and passes >= 10
    assert runtimes == 4
