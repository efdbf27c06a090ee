"""quantize.weight_rounding: learned int8 rounding (AdaRound) and bias correction, on digits-cnn's trained layers
(default suite) and on a layer of the pretrained EfficientNet-Lite0 (slow)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgecraft.compress.base import Artifact, Dataset, PassContext
from edgecraft.compress.passes.weight_rounding import (
    QMAX,
    WeightRounding,
    WeightRoundingConfig,
    channel_means,
    channel_scales,
    learned_integers,
    nearest_integers,
    output_error,
    weighted_layers,
)
from tests.conftest import accuracy, images, onnx_logits, torch_logits


def batches_of(x: np.ndarray, size: int = 16) -> list[list]:
    import torch

    return [[torch.from_numpy(x[i : i + size])] for i in range(0, len(x), size)]


def layer_inputs(model, layer, x: np.ndarray):
    """``layer``'s input on every sample of ``x``."""
    import torch

    captured = []
    handle = layer.module.register_forward_pre_hook(lambda _module, inputs: captured.append(inputs[0].detach()))
    try:
        torch_logits(model, x)
    finally:
        handle.remove()
    return torch.cat(captured)


def learned_against_nearest(model, layer_name: str, fit: np.ndarray, held_out: np.ndarray) -> dict[str, float]:
    """The layer's relative output error with nearest and with learned rounding, on the inputs it learned from
    and on held-out ones."""
    import torch

    layers, _ = weighted_layers(model, batches_of(fit[:1])[0])
    layer = next(layer for layer in layers if layer.name == layer_name)
    seen, unseen = layer_inputs(model, layer, fit), layer_inputs(model, layer, held_out)
    weight = layer.effective_weight()
    scale = channel_scales(weight, 127)
    nearest = nearest_integers(weight, 127) * scale
    generator = torch.Generator().manual_seed(0)
    learned = learned_integers(layer, weight, seen, 127, iterations=200, batch_size=8, generator=generator) * scale
    return {
        f"{rounding}_{split}": output_error(layer, weight, rounded, inputs)
        for rounding, rounded in (("nearest", nearest), ("learned", learned))
        for split, inputs in (("seen", seen), ("held_out", unseen))
    }


def test_learned_rounding_lowers_the_output_error_of_a_trained_layer(digits_cnn) -> None:
    splits = digits_cnn["splits"]
    errors = learned_against_nearest(
        digits_cnn["model"], "features.1.0", images(splits, 64, "calibration"), images(splits, 64)
    )
    # AdaRound cut this conv's (BatchNorm folded) output error 3-5x here; half is a margin any CPU keeps.
    assert errors["learned_seen"] < 0.5 * errors["nearest_seen"], errors
    assert errors["learned_held_out"] < 0.7 * errors["nearest_held_out"], errors


@pytest.mark.slow
def test_learned_rounding_lowers_the_output_error_of_a_pretrained_efficientnet_layer() -> None:
    from edgecraft.compress.pretrained import efficientnet_lite
    from edgecraft.compress.zoo import REFERENCE_MODELS

    photos = efficientnet_lite.dataset()[0]["image"]
    model = REFERENCE_MODELS["efficientnet-lite0"].build()
    for name in ("_blocks.1._expand_conv", "_blocks.1._depthwise_conv"):  # a 1x1 and a depthwise conv
        errors = learned_against_nearest(model, name, photos[0:256:8], photos[4:256:8])
        # Measured here: 0.64-0.73x (1x1) and 0.44-0.67x (depthwise) of nearest rounding's error, seen and held out.
        assert errors["learned_seen"] < 0.85 * errors["nearest_seen"], (name, errors)
        assert errors["learned_held_out"] < 0.9 * errors["nearest_held_out"], (name, errors)


@pytest.fixture(scope="module")
def rounded(digits_cnn):
    """digits-cnn after the pass with its defaults (7-bit weights on x86 CPUs without VNNI, as quantize.static's)."""
    return WeightRounding().apply(digits_cnn["torch"], WeightRoundingConfig(), digits_cnn["context"])


def test_rounded_weights_lie_on_the_grid_and_onnx_runtime_stores_those_integers(digits_cnn, rounded, tmp_path) -> None:
    import onnx
    from onnx import numpy_helper

    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.compress.passes.onnx_quantization import StaticQuantization, StaticQuantizationConfig

    model, qmax = rounded.artifact.model, QMAX[WeightRoundingConfig().bits()]
    layers, _ = weighted_layers(model, batches_of(images(digits_cnn["splits"], 1))[0])
    expected = {}
    for layer in layers:
        weight = layer.effective_weight()
        integers = weight / channel_scales(weight, qmax)
        assert (integers - integers.round()).abs().max() < 1e-3, layer.name  # on the grid
        assert (integers.abs().reshape(len(integers), -1).amax(1).round() == qmax).all(), layer.name  # scale kept
        expected[tuple(integers.shape)] = integers.round().numpy().astype(np.int8)
    signature = digits_cnn["signature"]
    exported = Artifact("onnx", signature, path=export_torch(model, signature, tmp_path / "rounded.onnx"))
    context = dataclasses.replace(digits_cnn["context"], work_dir=tmp_path, validation=None)
    quantized = StaticQuantization().apply(exported, StaticQuantizationConfig(), context)  # reduce_range as the pass
    graph = onnx.load(str(quantized.artifact.path)).graph
    stored = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weights = [
        stored[node.input[0]]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and stored.get(node.input[0], np.zeros(0)).ndim >= 2
    ]
    found = {w.shape if w.shape in expected else w.T.shape: w if w.shape in expected else w.T for w in weights}
    assert found.keys() == expected.keys()
    for shape, integers in expected.items():
        np.testing.assert_array_equal(found[shape], integers, err_msg=str(shape))


def mean_shifts(digits_cnn, model) -> list[float]:
    """Per layer, the mean over channels of |E[y_fp32 - y_model]| on the evaluation split."""
    x = batches_of(images(digits_cnn["splits"]))
    reference, _ = weighted_layers(digits_cnn["model"], x[0])
    layers, _ = weighted_layers(model, x[0])
    fp32, after = channel_means(digits_cnn["model"], reference, x), channel_means(model, layers, x)
    return [float((fp32[layer.name] - after[layer.name]).abs().mean()) for layer in layers]


def test_bias_correction_lowers_the_mean_per_channel_output_shift(digits_cnn) -> None:
    shifted, corrected = (
        WeightRounding()
        .apply(
            digits_cnn["torch"],
            WeightRoundingConfig(weight_bits=8, rounding="nearest", bias_correction=correct),
            digits_cnn["context"],
        )
        .artifact.model
        for correct in (False, True)
    )
    before, after = mean_shifts(digits_cnn, shifted), mean_shifts(digits_cnn, corrected)
    assert sum(after) < 0.7 * sum(before), (before, after)


def test_the_pass_record_shows_each_layer_s_errors_and_bias_shift(rounded) -> None:
    details = rounded.details
    assert details["layers"] == 4 and details["skipped"] == {}
    assert details["error_learned"]["mean"] < details["error_nearest"]["mean"]
    assert details["bias_shift"]["mean"] > 0
    assert [entry["layer"] for entry in details["per_layer"]] == [
        "features.0.0",
        "features.1.0",
        "features.2.0",
        "classifier",
    ]


def test_the_pass_keeps_int8_agreement_of_plain_static_int8(digits_cnn, rounded, tmp_path) -> None:
    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.compress.passes.onnx_quantization import StaticQuantization, StaticQuantizationConfig

    signature, x = digits_cnn["signature"], images(digits_cnn["splits"])
    fp32 = torch_logits(digits_cnn["model"], x).argmax(1)
    agreement = {}
    for name, model in (("plain", digits_cnn["model"]), ("recovered", rounded.artifact.model)):
        folder = tmp_path / name
        folder.mkdir()
        exported = Artifact("onnx", signature, path=export_torch(model, signature, folder / "fp32.onnx"))
        context = dataclasses.replace(digits_cnn["context"], work_dir=folder, validation=None)
        quantized = StaticQuantization().apply(exported, StaticQuantizationConfig(), context)
        assert quantized.artifact.path is not None
        agreement[name] = accuracy(onnx_logits(quantized.artifact.path, x), fp32)
    assert agreement["recovered"] >= agreement["plain"] - 0.01, agreement


def test_a_model_without_weighted_layers_is_recorded_as_such(tmp_path: Path) -> None:
    import torch

    from edgecraft.compress.zoo import image_classifier

    data = Dataset({"input": np.ones((4, 1, 4, 4), np.float32)})
    context = PassContext(train=data, calibration=data, evaluation=data, work_dir=tmp_path)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU())
    outcome = WeightRounding().apply(
        Artifact("torch", image_classifier((1, 4, 4)), model=model), WeightRoundingConfig(), context
    )
    assert outcome.details["layers"] == 0
    assert outcome.details["note"] == "the model has no Conv or Linear layer that forward calls: nothing to round"


def test_a_shared_layer_is_skipped_with_its_reason() -> None:
    import torch

    shared = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(shared, torch.nn.ReLU(), shared)
    layers, skipped = weighted_layers(model, [torch.ones(1, 4)])
    assert layers == [] and skipped == {"0": "called 2 times per forward (shared weights)"}


def test_a_conv_s_batchnorm_is_folded_into_the_weights_it_rounds() -> None:
    import torch

    conv, norm = torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.BatchNorm2d(2)
    norm.weight.data = torch.tensor([2.0, -0.5])
    layers, _ = weighted_layers(torch.nn.Sequential(conv, norm).eval(), [torch.ones(1, 1, 2, 2)])
    assert [(layer.name, layer.norm is norm) for layer in layers] == [("0", True)]
    factors = torch.tensor([2.0, -0.5]) / torch.sqrt(torch.tensor(1 + norm.eps))
    torch.testing.assert_close(layers[0].effective_weight().flatten(), conv.weight.detach().flatten() * factors)
