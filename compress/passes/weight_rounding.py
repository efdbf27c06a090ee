"""Weight rounding (AdaRound) and empirical bias correction: recover, without labels, part of what int8 weights lose.

A PyTorch pass that runs before any format's int8 quantizer. For each Conv/Linear layer, in forward order, it
learns whether each weight rounds up or down on the int8 grid so that the layer's output on calibration inputs
changes least (AdaRound, Nagel et al. 2020: a rectified sigmoid per weight, a regulariser that pushes it to 0 or
1 with an annealed exponent), then adds to each output channel the mean output shift the model still has against
its float self (empirical bias correction, Nagel et al. 2019; NNCF's BiasCorrection). Each layer is judged on
inputs from the already-rounded layers above it, so errors do not compound. The de-quantized weights
(scale × integer) are written back into the float model.

The grid is the one the formats' int8 quantizers use for weights: per output channel, symmetric, narrow range,
scale = max|w_c| / 127 (or [-64, 64], scale max|w_c| / 64, for ONNX Runtime's 7-bit ``reduce_range``). The
weight with the largest magnitude keeps its nearest integer (±127), so each quantizer recomputes the same scale
from the written-back weights and its round-to-nearest lands on the learned integers. Conv weights are rounded
as the runtime sees them, with the following BatchNorm folded in (exporters and quantizers fold it: a per-channel
factor, which leaves the integers unchanged).

Written here, not taken from a library: torch, torchao, NNCF and Neural Compressor have no AdaRound. AIMET's
(aimet-torch 2.42.0) resolves beside torch==2.13.0, but pulls 23 more distributions (torchvision, tensorboard,
bokeh, panel, holoviews, cvxpy...) and runs on its own QuantSim model, whose grid would have to be configured to
match each format's; the algorithm is the hundred lines below. NNCF's bias correction exists only inside
``nncf.quantize`` for OpenVINO and ONNX; a PyTorch one serves ONNX Runtime, OpenVINO and LiteRT alike.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from edgecraft.compress.base import Artifact, Dataset, Pass, PassConfig, PassContext, PassOutcome
from edgecraft.compress.cpu import int8_saturates
from edgecraft.compress.registry import register
from edgecraft.core.signature import Signature

# The largest weight integer: int8 narrow range, or ONNX Runtime's reduce_range (7-bit) weights.
QMAX = {8: 127, 7: 64}
# AdaRound's rectified sigmoid stretch, regulariser weight, exponent schedule and warm-up (the paper's and AIMET's).
ZETA, GAMMA = 1.1, -0.1
REGULARISATION = 0.01
BETA = (20.0, 2.0)
WARM_UP = 0.2
LEARNING_RATE = 1e-2  # AIMET's 1e-3 is for 10,000 iterations; a few hundred need larger steps
CROP = 8  # side of the spatial windows a convolution's rounding is learned on
CROPS_PER_MAP = 4


class WeightRoundingConfig(PassConfig):
    """Learned int8 weight rounding and per-channel bias correction on the calibration split, before an int8
    quantizer (quantize.static, quantize.nncf, convert.tflite int8)."""

    type: Literal["quantize.weight_rounding"] = "quantize.weight_rounding"
    rounding: Literal["adaround", "nearest"] = Field(
        "adaround", description="'adaround': learn each weight's rounding direction; 'nearest': round to nearest."
    )
    bias_correction: bool = Field(True, description="Add each output channel's mean shift against fp32 to its bias.")
    iterations: int = Field(200, gt=0, description="AdaRound optimisation steps per layer.")
    batch_size: int = Field(32, gt=0, description="Input windows per AdaRound step.")
    calibration_samples: int = Field(64, gt=0, description="Calibration-split inputs whose layer inputs are kept.")
    use_train_split: bool = Field(False, description="Also use as many train-split inputs (unlabelled).")
    weight_bits: Literal["auto", 8, 7] = Field(
        "auto",
        description="8: [-127, 127] (every int8 quantizer); 7: [-64, 64], ONNX Runtime's reduce_range. 'auto': 7 on "
        "x86 CPUs without VNNI, where quantize.static's reduce_range 'auto' picks 7-bit weights.",
    )

    def bits(self) -> int:
        if self.weight_bits == "auto":
            return 7 if int8_saturates() else 8
        return self.weight_bits


@dataclass
class Layer:
    """A weighted layer and the BatchNorm that reads its output (folded into the weights the runtime rounds)."""

    name: str
    module: Any
    norm: Any = None

    def output_factor(self) -> Any:
        """Per output channel, what the folded BatchNorm multiplies the weights by (ones without one)."""
        import torch

        weight = self.module.weight
        if self.norm is None:
            return torch.ones(weight.shape[0])
        gamma = self.norm.weight if self.norm.weight is not None else torch.ones_like(self.norm.running_var)
        return (gamma / torch.sqrt(self.norm.running_var + self.norm.eps)).detach()

    def effective_weight(self) -> Any:
        weight = self.module.weight.detach()
        return weight * _per_channel(self.output_factor(), weight)

    def set_effective_weight(self, effective: Any) -> None:
        weight = self.module.weight
        with _no_grad():
            weight.copy_(effective / _per_channel(self.output_factor(), weight))

    def channel_axis(self) -> int:
        import torch

        return -1 if isinstance(self.module, torch.nn.Linear) else 1

    def linear_output(self, inputs: Any, weight: Any) -> Any:
        """The layer's output with ``weight`` and no bias: what rounding changes (linear in the weight)."""
        import torch

        replaced = {"weight": weight}
        if self.module.bias is not None:
            replaced["bias"] = torch.zeros_like(self.module.bias)
        return torch.func.functional_call(self.module, replaced, (inputs,))

    def output(self, inputs: Any) -> Any:
        """What the model reads after this layer: its output through the folded BatchNorm."""
        output = self.module(inputs)
        return output if self.norm is None else self.norm(output)

    def add_to_bias(self, shift: Any) -> None:
        import torch

        target = self.norm if self.norm is not None else self.module
        with _no_grad():
            if target.bias is None:
                target.bias = torch.nn.Parameter(torch.zeros(len(shift)))
            target.bias.add_(shift)


def _no_grad() -> Any:
    import torch

    return torch.no_grad()


def _per_channel(values: Any, weight: Any) -> Any:
    return values.reshape(-1, *[1] * (weight.dim() - 1))


def channel_scales(weight: Any, qmax: int) -> Any:
    """The formats' symmetric per-output-channel scale, max|w_c| / qmax (1 for an all-zero channel)."""
    peak = weight.abs().reshape(weight.shape[0], -1).amax(1)
    return _per_channel(peak.where(peak > 0, 1.0) / qmax, weight)


def nearest_integers(weight: Any, qmax: int) -> Any:
    return (weight / channel_scales(weight, qmax)).round().clamp(-qmax, qmax)


def learned_integers(
    layer: Layer, weight: Any, inputs: Any, qmax: int, iterations: int, batch_size: int, generator: Any
) -> Any:
    """AdaRound: the up/down choice per weight that minimises ``layer``'s output error on ``inputs``.

    The weights nearest ±qmax keep their nearest integer, so that the channel's largest integer stays ±qmax and a
    quantizer that recomputes the scale from the written-back weights finds the same one."""
    import torch

    scale = channel_scales(weight, qmax)
    scaled = weight / scale
    floor = scaled.floor()
    pinned = scaled.abs() >= qmax - 0.5
    rest = (scaled - floor).clamp(0.01, 0.99)
    logits = torch.nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
    optimizer = torch.optim.Adam([logits], lr=LEARNING_RATE)
    warm_up = int(WARM_UP * iterations)
    for step in range(iterations):
        batch = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        soft = (torch.sigmoid(logits) * (ZETA - GAMMA) + GAMMA).clamp(0, 1)
        candidate = scale * (floor + soft).clamp(-qmax, qmax)
        error = layer.linear_output(inputs[batch], candidate - weight).pow(2)  # the output is linear in the weight
        loss = error.sum(layer.channel_axis()).mean()
        if step >= warm_up:
            progress = (step - warm_up) / max(1, iterations - warm_up)
            beta = BETA[0] + (BETA[1] - BETA[0]) * progress
            loss = loss + REGULARISATION * (1 - (2 * soft - 1).abs().pow(beta)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learned = (floor + (logits.detach() >= 0).float()).clamp(-qmax, qmax)
    return torch.where(pinned, scaled.round().clamp(-qmax, qmax), learned)


def output_error(layer: Layer, weight: Any, approximation: Any, inputs: Any) -> float:
    """Relative squared output error of ``approximation`` against ``weight`` on ``inputs``: ‖Δy‖² / ‖y‖²."""
    import torch

    with torch.no_grad():
        exact = layer.linear_output(inputs, weight)
        difference = layer.linear_output(inputs, approximation - weight)
    return float(difference.pow(2).sum() / exact.pow(2).sum().clamp_min(1e-30))


def weighted_layers(model: Any, example: list[Any]) -> tuple[list[Layer], dict[str, str]]:
    """Conv/Linear layers in the order ``forward`` calls them, each with the BatchNorm that reads its output
    (matched by tensor identity in one traced call), and the layers left out with why."""
    import torch

    kinds = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)
    names = {module: name for name, module in model.named_modules()}
    calls: list[Any] = []
    produced: dict[int, Any] = {}
    norms: dict[Any, Any] = {}

    def after_layer(module: Any, _inputs: Any, output: Any) -> None:
        calls.append(module)
        produced[id(output)] = module

    def before_norm(module: Any, inputs: Any) -> None:
        source = produced.get(id(inputs[0]))
        if source is not None:
            norms.setdefault(source, module)

    handles = [m.register_forward_hook(after_layer) for m in names if isinstance(m, kinds)]
    handles += [
        m.register_forward_pre_hook(before_norm) for m in names if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for handle in handles:
            handle.remove()
    skipped = {names[m]: "not called by forward" for m in names if isinstance(m, kinds) and m not in calls}
    skipped.update(
        {
            names[m]: "transposed convolution (not rounded)"
            for m in names
            if isinstance(m, torch.nn.modules.conv._ConvTransposeNd)
        }
    )
    layers = []
    for module in dict.fromkeys(calls):
        if calls.count(module) > 1:
            skipped[names[module]] = f"called {calls.count(module)} times per forward (shared weights)"
        else:
            layers.append(Layer(names[module], module, norms.get(module)))
    return layers, skipped


def crops(inputs: Any, count: int, generator: Any) -> Any:
    """``count`` random spatial windows of ``CROP`` per side of a convolution's inputs (the whole map where it
    is smaller; a Linear's inputs as they are).

    A window's outputs are the layer's outputs on those patches (its edges on zero padding): the same linear map,
    sampled at a fraction of the cost of whole 112x112 maps (which took ~30 s per layer on two CPU cores)."""
    import torch

    spatial = inputs.shape[2:]
    if inputs.dim() < 3 or all(size <= CROP for size in spatial):
        return inputs
    windows = []
    for _ in range(count):
        offsets = [int(torch.randint(max(1, size - CROP + 1), (1,), generator=generator)) for size in spatial]
        windows.append(inputs[(slice(None), slice(None), *(slice(o, o + CROP) for o in offsets))])
    return torch.cat(windows)


def channel_means(model: Any, layers: list[Layer], batches: list[list[Any]]) -> dict[str, Any]:
    """Each layer's per-channel mean output (after its BatchNorm) over the samples: the float model's means are
    what bias correction restores."""
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def hook(name: str, axis: int):
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            moved = output.detach().movedim(axis, 0).reshape(output.shape[axis], -1)
            sums[name] = sums.get(name, 0) + moved.sum(1)
            counts[name] = counts.get(name, 0) + moved.shape[1]

        return record

    handles = [
        (layer.norm or layer.module).register_forward_hook(hook(layer.name, layer.channel_axis())) for layer in layers
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                model(*batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in sums}


def _batches(data: Dataset, signature: Signature, size: int) -> list[list[Any]]:
    from edgecraft.compress.torch_io import tensors

    return [
        tensors({name: array[i : i + size] for name, array in data.inputs.items()}, signature)
        for i in range(0, len(data), size)
    ]


def _samples(context: PassContext, config: WeightRoundingConfig) -> Dataset:
    import numpy as np

    data = context.calibration.head(config.calibration_samples)
    if not config.use_train_split or not len(context.train):
        return data
    extra = context.train.head(config.calibration_samples)
    return Dataset({name: np.concatenate([data.inputs[name], extra.inputs[name]]) for name in data.inputs})


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "median": statistics.median(values)} if values else {}


@register
class WeightRounding(Pass[WeightRoundingConfig]):
    config_model = WeightRoundingConfig
    input_formats = ("torch",)
    output_format = "torch"

    def environment_facts(self, config: WeightRoundingConfig) -> dict:
        return {"weight_bits": config.bits()}

    def apply(self, artifact: Artifact, config: WeightRoundingConfig, context: PassContext) -> PassOutcome:
        import torch

        from edgecraft.compress.torch_io import tensors

        if artifact.model is None:
            raise ValueError("quantize.weight_rounding needs a PyTorch model")
        torch.manual_seed(context.seed)
        model = copy.deepcopy(artifact.model).eval()
        data = _samples(context, config)
        if not len(data):
            raise ValueError("quantize.weight_rounding needs calibration data; data.splits.calibration is 0")
        batches = _batches(data, artifact.signature, 16)
        layers, skipped = weighted_layers(model, batches[0])
        qmax = QMAX[config.bits()]
        details: dict[str, Any] = {
            "grid": f"per output channel, symmetric, [-{qmax}, {qmax}], scale max|w| / {qmax}",
            "weight_bits": config.bits(),
            "samples": len(data),
            "layers": len(layers),
            "skipped": skipped,
        }
        if not layers:
            details["note"] = "the model has no Conv or Linear layer that forward calls: nothing to round"
            return PassOutcome(dataclasses.replace(artifact, model=model), details)
        float_means = channel_means(model, layers, batches) if config.bias_correction else {}  # before rounding
        per_layer: list[dict[str, Any]] = []
        generator = torch.Generator().manual_seed(context.seed)

        handles: dict[str, Any] = {}

        def round_before_use(layer: Layer):
            # One forward over every sample: each layer is rounded when its input arrives, so that input already
            # comes from the rounded (and bias-corrected) layers above it.
            def hook(_module: Any, inputs: Any) -> None:
                handles.pop(layer.name).remove()  # rounding calls the layer, which must not round it again
                context.progress(f"rounding {layer.name}", len(per_layer), len(layers))
                with torch.enable_grad():
                    per_layer.append(self._round(layer, inputs[0], qmax, config, generator, float_means))

            return hook

        handles.update(
            {layer.name: layer.module.register_forward_pre_hook(round_before_use(layer)) for layer in layers}
        )
        try:
            with torch.no_grad():
                model(*tensors(data.inputs, artifact.signature))
        finally:
            for handle in handles.values():
                handle.remove()
        details["per_layer"] = per_layer
        details["error_nearest"] = _summary([entry["error_nearest"] for entry in per_layer])
        if config.rounding == "adaround":
            details["error_learned"] = _summary([entry["error_learned"] for entry in per_layer])
        if config.bias_correction:
            details["bias_shift"] = _summary([entry["bias_shift"] for entry in per_layer])
        details["note"] = (
            "the learned integers are kept where the quantizer uses this grid (quantize.static, checked); "
            "quantize.nncf's overflow fix (7-bit weights: the first layer by default, every layer with 'enable') and "
            "convert.tflite's per-tensor fully connected weights use other grids and re-round those layers"
        )
        return PassOutcome(dataclasses.replace(artifact, model=model), details)

    def _round(
        self,
        layer: Layer,
        inputs: Any,
        qmax: int,
        config: WeightRoundingConfig,
        generator: Any,
        float_means: dict[str, Any],
    ) -> dict[str, Any]:
        """Round one layer on its inputs from the rounded model above it, correct its bias, and say what it did."""
        start = time.perf_counter()
        windows = crops(inputs, CROPS_PER_MAP, generator)
        weight = layer.effective_weight()
        scale = channel_scales(weight, qmax)
        nearest = nearest_integers(weight, qmax) * scale
        entry: dict[str, Any] = {"layer": layer.name, "error_nearest": output_error(layer, weight, nearest, windows)}
        rounded = nearest
        if config.rounding == "adaround":
            integers = learned_integers(layer, weight, windows, qmax, config.iterations, config.batch_size, generator)
            rounded = integers * scale
            entry["error_learned"] = output_error(layer, weight, rounded, windows)
        layer.set_effective_weight(rounded)
        if config.bias_correction:
            with _no_grad():
                output = layer.output(inputs)
                axis = layer.channel_axis()
                rounded_means = output.movedim(axis, 0).reshape(output.shape[axis], -1).mean(1)
            shift = float_means[layer.name] - rounded_means
            layer.add_to_bias(shift)
            entry["bias_shift"] = float(shift.abs().mean())
        entry["seconds"] = round(time.perf_counter() - start, 3)
        return entry
