"""Post-training int8 quantization of ONNX models with ``onnxruntime.quantization``.

We call ONNX Runtime's own tooling rather than writing QDQ insertion ourselves: it knows which operators its
kernels fuse, and its output is what ONNX Runtime (and OpenVINO, which reads QDQ) run fastest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgecraft.compress.accuracy_control import AccuracyAwareOptions, Int8Format, Layer, search
from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from edgecraft.compress.cpu import int8_saturates
from edgecraft.compress.qdq import without_qdq
from edgecraft.compress.registry import register
from edgecraft.core.errors import EdgecraftError


def _preprocessed(source: Path, work_dir: Path) -> Path:
    """ORT's recommended pre-step (shape inference + graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = work_dir / f"{source.stem}.pre.onnx"
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


# Per-channel weights give DequantizeLinear an ``axis`` attribute, which it has from opset 13 on; ONNX Runtime's
# quantizer writes it whatever the model's opset (and bumps only models below opset 10, to 11). QDQ needs
# opset 11 for its fusions (ONNX Runtime warns below that).
PER_CHANNEL_OPSET = 13
QDQ_OPSET = 11


def default_opset(path: Path) -> int | None:
    """The model's ONNX (default-domain) opset, read without its external weights; ``None`` if it imports none."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def with_opset(source: Path, needed: int, why: str, work_dir: Path, pass_name: str) -> tuple[Path, str | None]:
    """``source`` at opset ``needed`` at least: upgraded with ONNX's version converter when it is older, and what
    was done (``"12 → 13: why"``) to record with the pass; the pass fails, with the converter's reason, when the
    model cannot be upgraded."""
    import onnx
    from onnx import version_converter

    current = default_opset(source)
    if current is None or current >= needed:
        return source, None
    try:
        upgraded = version_converter.convert_version(onnx.load(str(source)), needed)
    except Exception as exc:  # the converter raises many types; the pass fails with its words
        raise EdgecraftError(
            f"{pass_name}: the model is at ONNX opset {current}, but {why}; upgrading it to opset {needed} with "
            f"onnx.version_converter failed: {type(exc).__name__}: {exc}"
        ) from exc
    target = work_dir / f"{source.stem}.opset{needed}.onnx"
    onnx.save(upgraded, str(target))
    return target, f"{current} → {needed}: {why}"


def _required_opset(per_channel: bool, qdq: bool) -> tuple[int, str] | None:
    if per_channel:
        return (
            PER_CHANNEL_OPSET,
            f"per-channel int8 gives DequantizeLinear an axis, which needs opset {PER_CHANNEL_OPSET}",
        )
    if qdq:
        return QDQ_OPSET, f"ONNX Runtime fuses QDQ int8 from opset {QDQ_OPSET} on"
    return None


def upgraded_for(
    source: Path, per_channel: bool, qdq: bool, work_dir: Path, pass_name: str
) -> tuple[Path, dict[str, Any]]:
    """``source`` at the opset the quantizer's output needs, and the ``opset_upgrade`` detail when it was raised."""
    required = _required_opset(per_channel, qdq)
    if required is None:
        return source, {}
    path, upgrade = with_opset(source, *required, work_dir, pass_name)
    return path, ({"opset_upgrade": upgrade} if upgrade else {})


def reduce_range(config: StaticQuantizationConfig) -> bool:
    """7-bit weights: asked for, or 'auto' where 8-bit ranges saturate the CPU's int8 kernels."""
    return int8_saturates() if config.reduce_range == "auto" else config.reduce_range


class StaticQuantizationConfig(AccuracyAwareOptions):
    """Calibrated int8 with QuantizeLinear/DequantizeLinear pairs around each quantized operator; with
    ``max_drop``, the most sensitive operators stay in float (``nodes_to_exclude``) until the metric is in budget."""

    type: Literal["quantize.static"] = "quantize.static"
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    calibration_samples: int = Field(256, gt=0, description="How many calibration-split inputs to observe.")
    activation_type: Literal["int8", "uint8"] = Field(
        "uint8",
        description="uint8 activations (with int8 weights) hit ONNX Runtime's fast x86 kernels; signed int8 suits ARM.",
    )
    reduce_range: Literal["auto"] | bool = Field(
        "auto",
        description="7-bit weights. 'auto': on x86 CPUs without VNNI, whose uint8×int8 kernels saturate 16-bit "
        "intermediate sums (ONNX Runtime's documented advice); the CPU that quantized is recorded.",
    )


@register
class StaticQuantization(Pass[StaticQuantizationConfig]):
    config_model = StaticQuantizationConfig
    input_formats = ("onnx",)
    output_format = "onnx"
    libraries = ("onnxruntime",)

    def environment_facts(self, config: StaticQuantizationConfig) -> dict:
        return {"reduce_range": reduce_range(config)}

    def apply(self, artifact: Artifact, config: StaticQuantizationConfig, context: PassContext) -> PassOutcome:
        if artifact.path is None:
            raise ValueError("quantize.static needs an ONNX file")
        samples = context.calibration.head(config.calibration_samples).samples()
        source = artifact.path
        removed = without_qdq(source, context.work_dir / "float-weights.onnx")
        if removed:  # a QAT model: keep its trained weights, lay out the int8 graph the way ORT fuses it
            source = context.work_dir / "float-weights.onnx"
        source, upgrade = upgraded_for(source, config.per_channel, True, context.work_dir, self.name)
        fmt = OnnxRuntimeInt8(_preprocessed(source, context.work_dir), samples, config)
        path, control = search(fmt, context.validation, config, context.work_dir, context.progress)
        output = context.work_dir / "model.onnx"
        shutil.copyfile(path, output)
        details: dict[str, Any] = {
            "calibration_samples": len(samples),
            "calibration_method": config.calibration_method,
            "reduce_range": reduce_range(config),
        }
        if removed:
            details["qdq_nodes_removed"] = removed
        details.update(upgrade)
        if control:
            details["accuracy_control"] = control
        require_quantized(output, self.name)
        return PassOutcome(Artifact("onnx", artifact.signature, path=output), details)


# Ops that compute on integers in ONNX Runtime's int8 outputs: QDQ pairs (static), the dynamic quantizer's kernels.
_INTEGER_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")


def require_quantized(path: Path, pass_name: str) -> None:
    """Refuse an "int8" model with no quantized operator: ONNX Runtime's quantizers leave what they do not support
    (everything inside If / Loop subgraphs, an LSTM) in float without a word, and a row labelled int8 that is the
    fp32 graph would be reported as a speed-up of 1.0 that means nothing."""
    import onnx

    from edgecraft.compress.onnx_export import all_graphs

    main, *subgraphs = all_graphs(onnx.load(str(path)).graph)
    integer = compute = nested = 0
    for graph in [main, *subgraphs]:
        for node in graph.node:
            if node.op_type in _INTEGER_OPS or node.op_type.startswith("QLinear"):
                integer += 1
            elif node.op_type not in ("If", "Loop", "Scan"):
                compute += 1
                nested += graph is not main
    if integer == 0:
        inside = (
            f"; {nested} of its {compute} operators are inside If/Loop subgraphs, which it leaves in float"
            if (nested)
            else ""
        )
        raise EdgecraftError(
            f"{pass_name} quantized no operator of this model: ONNX Runtime's quantizer found nothing it quantizes"
            f"{inside}. The file would be the fp32 graph under an int8 name; use another int8 path (quantize.nncf on "
            "OpenVINO, convert.tflite int8) or leave the variant out"
        )


class OnnxRuntimeInt8(Int8Format):
    """ONNX Runtime's ``quantize_static`` with ``nodes_to_exclude`` for the layers kept in float.

    Ranking re-quantizes nothing: a layer is put back in float in the all-int8 model itself (its inputs taken
    before their QuantizeLinear, its weights and bias from the float model), so that every layer is judged with
    the same calibration and one quantization, not one per layer (~10 s each on EfficientNet-Lite0)."""

    target = "onnxruntime"

    def __init__(
        self, float_model: Path, samples: list[dict[str, np.ndarray]], config: StaticQuantizationConfig
    ) -> None:
        self.float_model = float_model
        self.float_source = (float_model, "onnxruntime")
        self.samples = samples
        self.config = config
        self._quantized: tuple[Path, Any] | None = None
        self._float: Any = None

    def quantize(self, float_layers: list[str], out_dir: Path) -> Path:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        samples = self.samples

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._feeds = iter(samples)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._feeds, None)

        out_dir.mkdir(parents=True, exist_ok=True)
        output = out_dir / "model.onnx"
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        config = self.config
        quantize_static(
            str(self.float_model),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=QuantType.QInt8 if config.activation_type == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[config.calibration_method],
            reduce_range=reduce_range(config),
            nodes_to_exclude=float_layers,
        )
        if float_layers:
            _read_float_inputs(output, float_layers)
        return output

    def layers(self, quantized: Path) -> list[Layer]:
        """Every node (other than Q/DQ) that reads a DequantizeLinear output: ORT runs it on int8 inputs."""
        import onnx

        graph = onnx.load(str(quantized)).graph
        dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
        return [
            Layer(node.name, node.op_type)
            for node in graph.node
            if node.op_type not in _QDQ and node.name and dequantized & set(node.input)
        ]

    def with_float(self, quantized: Path, layer: Layer, out_dir: Path) -> Path:
        import onnx

        model = self._quantized_proto(quantized)
        floats = self._float_proto()
        float_inputs = {node.name: list(node.input) for node in floats.graph.node}
        float_weights = {init.name: init for init in floats.graph.initializer}
        _compute_in_float(model.graph, layer.name, float_inputs.get(layer.name, []), float_weights)
        out_dir.mkdir(parents=True, exist_ok=True)
        output = out_dir / "model.onnx"
        onnx.save(model, str(output))
        return output

    def _quantized_proto(self, quantized: Path) -> Any:
        """A fresh copy of the all-int8 model (loaded once) to change one layer in."""
        import onnx

        if self._quantized is None or self._quantized[0] != quantized:
            self._quantized = (quantized, onnx.load(str(quantized)))
        copy = onnx.ModelProto()
        copy.CopyFrom(self._quantized[1])
        return copy

    def _float_proto(self) -> Any:
        import onnx

        if self._float is None:
            self._float = onnx.load(str(self.float_model))
        return self._float


_QDQ = ("QuantizeLinear", "DequantizeLinear")


def _read_float_inputs(path: Path, float_layers: list[str]) -> None:
    """Make ``nodes_to_exclude`` mean "computed in float": ONNX Runtime's quantizer leaves an excluded node's
    weights and output in float but still feeds it the rounded (DequantizeLinear) output of a quantized producer,
    so on EfficientNet-Lite0 keeping layers in float made the model *worse* (4 layers: output error 0.0126 against
    0.0085 all-int8) and a search could not rise towards fp32. Rewritten in place; rounding pairs left unread go."""
    import onnx

    model = onnx.load(str(path))
    for name in float_layers:
        _compute_in_float(model.graph, name, [], {})
    used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    while dead := [n for n in model.graph.node if n.op_type in _QDQ and not used & set(n.output)]:
        for node in dead:
            model.graph.node.remove(node)
        used = {name for node in model.graph.node for name in node.input} | {out.name for out in model.graph.output}
    onnx.save(model, str(path))


def _compute_in_float(graph: Any, name: str, float_inputs: list[str], float_weights: dict[str, Any]) -> None:
    """Node ``name`` of a QDQ ``graph`` reads every activation unrounded and, where given, the float model's own
    weights (``float_inputs``: its inputs in the float model) instead of de-quantized int8 ones."""
    import onnx

    producers = {out: node for node in graph.node for out in node.output}
    position, node = next((i, node) for i, node in enumerate(graph.node) if node.name == name)
    for index, tensor in enumerate(node.input):
        dequantize = producers.get(tensor)
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        source = producers.get(dequantize.input[0])
        if source is not None and source.op_type == "QuantizeLinear":
            clip = _unrounded(graph, source, name)
            graph.node.insert(position, clip)
            position += 1
            node.input[index] = clip.output[0]
        elif index < len(float_inputs) and float_inputs[index] in float_weights:
            weight = onnx.TensorProto()  # a weight or bias: the float model's own, under a name of its own
            weight.CopyFrom(float_weights[float_inputs[index]])
            weight.name = f"{weight.name}.float-for-{name}"
            node.input[index] = weight.name
            graph.initializer.append(weight)


def _unrounded(graph: Any, quantize: Any, reader: str) -> Any:
    """A Clip node computing the tensor ``quantize`` rounds, clipped to its int8 range but not rounded (its
    initializers are added to ``graph``; the caller places the node).

    Not the QuantizeLinear's input itself: ONNX Runtime drops a ReLU or ReLU6 Clip whose range the quantizer's
    covers (the int8 range clips instead), so that input is the unclipped tensor, and reading it measured
    EfficientNet-Lite0's layers after a ReLU6 as 200× *worse* in float than in int8."""
    from onnx import helper, numpy_helper

    constants = {init.name: init for init in graph.initializer}
    scale = float(numpy_helper.to_array(constants[quantize.input[1]]))
    zero_point = (
        numpy_helper.to_array(constants[quantize.input[2]])
        if len(quantize.input) > 2 and quantize.input[2]
        else np.uint8(0)
    )
    info = np.iinfo(zero_point.dtype)
    low, high = ((bound - int(zero_point)) * scale for bound in (info.min, info.max))
    name = f"{quantize.input[0]}.unrounded-for-{reader}"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(low, np.float32), f"{name}.min"),
            numpy_helper.from_array(np.array(high, np.float32), f"{name}.max"),
        ]
    )
    return helper.make_node("Clip", [quantize.input[0], f"{name}.min", f"{name}.max"], [name], name=name)


class DynamicQuantizationConfig(PassConfig):
    """int8 weights, activations quantized at run time: no calibration data, but often slow on CNNs."""

    type: Literal["quantize.dynamic"] = "quantize.dynamic"
    per_channel: bool = False


@register
class DynamicQuantization(Pass[DynamicQuantizationConfig]):
    config_model = DynamicQuantizationConfig
    input_formats = ("onnx",)
    output_format = "onnx"
    libraries = ("onnxruntime",)

    def apply(self, artifact: Artifact, config: DynamicQuantizationConfig, context: PassContext) -> PassOutcome:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        if artifact.path is None:
            raise ValueError("quantize.dynamic needs an ONNX file")
        output = context.work_dir / "model.onnx"
        source, upgrade = upgraded_for(artifact.path, config.per_channel, False, context.work_dir, self.name)
        quantize_dynamic(
            str(_preprocessed(source, context.work_dir)),
            str(output),
            per_channel=config.per_channel,
            weight_type=QuantType.QInt8,
        )
        require_quantized(output, self.name)
        return PassOutcome(Artifact("onnx", artifact.signature, path=output), upgrade)
