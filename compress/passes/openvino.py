"""OpenVINO IR: conversion (fp32 or fp16-compressed weights) and NNCF post-training int8 quantization.

NNCF is OpenVINO's own quantizer: it places FakeQuantize nodes where the CPU/GPU plugins have int8 kernels,
which hand-written quantization could not match.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edgecraft.compress.accuracy_control import AccuracyAwareOptions, Int8Format, Layer, outcome, search
from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome, Validation
from edgecraft.compress.cpu import has_bf16, int8_saturates
from edgecraft.compress.registry import register
from edgecraft.core.errors import EdgecraftError


def _read(artifact: Artifact) -> Any:
    """An ``openvino.Model`` from an ONNX file or an IR (``.xml``) artifact.

    ``Core.read_model`` rather than ``convert_model`` for ONNX: measured on digits-cnn, NNCF int8 of the
    ``convert_model`` graph lost 1.1 accuracy points, of the ``read_model`` graph none. Constant folding
    matters for int8: ``read_model`` leaves each depthwise kernel behind a ``Reshape`` whose shape is a
    computed ``Concat``, so NNCF's weight FakeQuantize sits on a non-constant and the CPU plugin runs those
    convolutions in f32 (``brgconv_avx512_dw_f32``); folded, they run as ``brgconv_avx512_dw_I8``.
    """
    import openvino
    from openvino.passes import ConstantFolding, Manager

    model = openvino.Core().read_model(str(artifact.path))
    manager = Manager()
    manager.register_pass(ConstantFolding())
    manager.run_passes(model)
    return model


def _save(model: Any, path: Path, compress_to_fp16: bool) -> Path:
    import openvino

    openvino.save_model(model, str(path), compress_to_fp16=compress_to_fp16)
    return path


class OpenVinoConversionConfig(PassConfig):
    """ONNX → OpenVINO IR (.xml + .bin)."""

    type: Literal["convert.openvino"] = "convert.openvino"
    compress_to_fp16: bool = Field(
        False, description="Store weights as fp16 (half the size); the CPU plugin still computes in f32/bf16."
    )


@register
class OpenVinoConversion(Pass[OpenVinoConversionConfig]):
    config_model = OpenVinoConversionConfig
    input_formats = ("onnx",)
    output_format = "openvino"
    libraries = ("openvino", "nncf")

    def is_lossless(self, config: OpenVinoConversionConfig) -> bool:
        return not config.compress_to_fp16

    def apply(self, artifact: Artifact, config: OpenVinoConversionConfig, context: PassContext) -> PassOutcome:
        path = _save(_read(artifact), context.work_dir / "model.xml", config.compress_to_fp16)
        return PassOutcome(
            Artifact("openvino", artifact.signature, path=path), {"compress_to_fp16": config.compress_to_fp16}
        )


class NncfQuantizationConfig(AccuracyAwareOptions):
    """Calibrated int8 for OpenVINO with ``nncf.quantize``; with ``max_drop``, the most sensitive operations stay
    in float (NNCF's ``ignored_scope``) until the metric is within budget."""

    type: Literal["quantize.nncf"] = "quantize.nncf"
    calibration_samples: int = Field(300, gt=0, description="NNCF's subset_size: calibration inputs observed.")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="'performance': symmetric activations; 'mixed': asymmetric (more accurate)."
    )
    model_type: Literal["default", "transformer"] = Field(
        "default",
        description="'transformer': NNCF's transformer scheme (keeps softmax, layer norm and the "
        "attention's sensitive products in float).",
    )
    overflow_fix: Literal["auto", "enable", "first_layer_only", "disable"] = Field(
        "auto",
        description="NNCF's overflow fix (7-bit weights where 8-bit sums would saturate). 'auto': 'enable' on x86 "
        "CPUs without VNNI, else NNCF's default 'first_layer_only'.",
    )

    def overflow(self) -> str:
        if self.overflow_fix != "auto":
            return self.overflow_fix
        return "enable" if int8_saturates() else "first_layer_only"

    search: Literal["edgecraft", "nncf"] = Field(
        "edgecraft",
        description="With max_drop: 'edgecraft', the search every int8 pass shares (one ranking and record for "
        "all runtimes); 'nncf', NNCF's own quantize_with_accuracy_control (it reverts groups of quantizers, "
        "residual Adds included, ranked by its own measure), judged by the same evaluator on the calibration split.",
    )

    @model_validator(mode="after")
    def _nncf_search_needs_a_budget(self) -> NncfQuantizationConfig:
        if self.search == "nncf" and self.max_drop is None:
            raise ValueError("search: nncf is NNCF's accuracy-aware quantization: it needs max_drop")
        return self

    float_precision: Literal["f32", "bf16"] = Field(
        "f32",
        description="What the layers kept in float run in. 'bf16': on CPUs with AMX or AVX-512 BF16 (or Arm BF16), "
        "half the memory traffic of f32; the search judges every trial in bf16 and the IR names bf16 in its "
        "runtime options, so OpenVINO runs it so (unless the target sets inference_precision).",
    )

    fast_bias_correction: bool = Field(
        True,
        description=(
            "NNCF's fast bias correction (its own default) instead of the full one. Measured on the pretrained "
            "EfficientNet-Lite0 (recipes/int8-defaults.yaml, AVX2 CPU): fast 83.8 % top-1 agreement with fp32, full "
            "77.3 %; on the digits-cnn toy model the full one kept 1.1 points more, and costs ~5 s more."
        ),
    )


@register
class NncfQuantization(Pass[NncfQuantizationConfig]):
    config_model = NncfQuantizationConfig
    input_formats = ("onnx", "openvino")
    output_format = "openvino"
    libraries = ("openvino", "nncf")

    def environment_facts(self, config: NncfQuantizationConfig) -> dict:
        return {"overflow_fix": config.overflow(), "bf16": has_bf16()}

    def apply(self, artifact: Artifact, config: NncfQuantizationConfig, context: PassContext) -> PassOutcome:
        if config.float_precision == "bf16" and not has_bf16():
            raise EdgecraftError(
                "quantize.nncf float_precision: bf16 needs a CPU that computes bf16 (AMX, AVX-512 BF16 or Arm BF16); "
                "this one has none, and OpenVINO would run the float layers in f32: use float_precision: f32"
            )
        samples = context.calibration.head(config.calibration_samples).samples()
        fmt = OpenVinoInt8(artifact, samples, config)
        control: dict[str, Any] | None
        if config.search == "nncf":
            path, control = fmt.nncf_search(context.validation, context.work_dir)
        else:
            path, control = search(fmt, context.validation, config, context.work_dir, context.progress)
        output = context.work_dir / "model.xml"
        for source, target in ((path, output), (path.with_suffix(".bin"), output.with_suffix(".bin"))):
            shutil.copyfile(source, target)
        details: dict[str, Any] = {
            "calibration_samples": len(samples),
            "preset": config.preset,
            "fast_bias_correction": config.fast_bias_correction,
            "model_type": config.model_type,
            "overflow_fix": config.overflow(),
            "float_precision": config.float_precision,
        }
        if control:
            details["accuracy_control"] = control
        return PassOutcome(Artifact("openvino", artifact.signature, path=output), details)


class OpenVinoInt8(Int8Format):
    """``nncf.quantize`` with ``ignored_scope`` for the operations kept in float.

    NNCF's own ``quantize_with_accuracy_control`` does this search for OpenVINO alone; the shared search gives
    the same budget, ranking and record on all three runtimes. Ranking re-quantizes nothing: one operation of the
    int8 model gets its activation FakeQuantize inputs bypassed and its fp32 weights back, so the CPU plugin runs
    it in float with the calibration of every other operation unchanged."""

    target = "openvino"

    def __init__(self, artifact: Artifact, samples: list[dict], config: NncfQuantizationConfig) -> None:
        self.float_precision = config.float_precision
        self.artifact = artifact
        self.float_source = (artifact.path, "openvino") if artifact.path else None
        self.samples = samples
        self.config = config
        self._float_ops: dict[str, Any] | None = None
        self._quantized: tuple[Path, Any] | None = None

    def quantize(self, float_layers: list[str], out_dir: Path) -> Path:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
        )

        nncf.set_log_level(logging.WARNING)  # it logs every quantizer it leaves out at INFO
        config = self.config
        quantized = nncf.quantize(
            _read(self.artifact),
            nncf.Dataset(self.samples),
            subset_size=len(self.samples),
            preset=nncf.QuantizationPreset(config.preset),
            fast_bias_correction=config.fast_bias_correction,
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(config.overflow())),
            ignored_scope=nncf.IgnoredScope(names=float_layers),
            **({"model_type": nncf.ModelType.TRANSFORMER} if config.model_type == "transformer" else {}),
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        return self._save(quantized, out_dir / "model.xml")

    def _save(self, model: Any, path: Path) -> Path:
        """The IR, naming the precision its float layers run in when that is not f32 (OpenVINO compiles it so)."""
        from edgecraft.targets.runtimes.openvino import PRECISION_RT_INFO

        if self.config.float_precision != "f32":
            model.set_rt_info(self.config.float_precision, PRECISION_RT_INFO)
        return _save(model, path, compress_to_fp16=False)

    def nncf_search(self, validation: Validation | None, work_dir: Path) -> tuple[Path, dict[str, Any]]:
        """NNCF's ``quantize_with_accuracy_control`` with the recipe's evaluator on the calibration split, and the
        same record as the shared search (its float layers: those the all-int8 model quantizes and it does not)."""
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

        if validation is None:
            raise ValueError("search: nncf needs the recipe's evaluator and calibration split (run it from a recipe)")
        config = self.config
        data = validation.data

        feeds = data.samples()
        per_call = data.layout.per_call
        position = {_content(feed): index for index, feed in enumerate(feeds)}

        def validate(compiled: Any, samples: Any) -> tuple[float, None]:
            """NNCF validates on subsets while it ranks: score the samples it passed against their own rows."""
            given = list(samples)
            rows = np.concatenate([np.arange(per_call) + per_call * position[_content(feed)] for feed in given])
            reference = {name: array[rows] for name, array in validation.reference.items()}
            targets = None if data.targets is None else data.targets[rows]
            outputs = _run_compiled(compiled, given, set(reference))
            return float(validation.score_fn(outputs, reference, targets)), None

        nncf.set_log_level(logging.WARNING)
        quantized = nncf.quantize_with_accuracy_control(
            _read(self.artifact),
            nncf.Dataset(self.samples),
            nncf.Dataset(feeds),
            validate,
            max_drop=config.max_drop or 0.0,
            preset=nncf.QuantizationPreset(config.preset),
            subset_size=len(self.samples),
            fast_bias_correction=config.fast_bias_correction,
            advanced_quantization_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix(config.overflow())
            ),
            **({"model_type": nncf.ModelType.TRANSFORMER} if config.model_type == "transformer" else {}),
        )
        out_dir = work_dir / "nncf-accuracy-control"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = self._save(quantized, out_dir / "model.xml")
        all_int8 = self.quantize([], work_dir / "all-int8")
        layers = self.layers(all_int8)
        still = {layer.name for layer in self.layers(path)}
        return path, outcome(
            self,
            validation,
            path,
            layers,
            [layer.name for layer in layers if layer.name not in still],
            config.max_drop or 0.0,
            validation.score(self.run(all_int8, data)),
            measure="NNCF quantize_with_accuracy_control's own ranking (not recorded per layer)",
        )

    def layers(self, quantized: Path) -> list[Layer]:
        """Every operation that reads a FakeQuantize output or int8 weights: the plugin runs it in int8."""
        return [
            Layer(op.get_friendly_name(), op.get_type_name())
            for op in self._model(quantized).get_ordered_ops()
            if op.get_type_name() not in _NOT_LAYERS
            and any(_fake_quantize_above(i) or _is_int8_weight(i) for i in op.inputs())
        ]

    def with_float(self, quantized: Path, layer: Layer, out_dir: Path) -> Path:
        import openvino

        model = self._model(quantized).clone()
        op = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == layer.name)
        original = self._float_op(layer.name)
        for index, port in enumerate(op.inputs()):
            above = _fake_quantize_above(port)
            if above:  # an activation: read it before it was quantized
                reader, fake_quantize = above
                reader.replace_source_output(fake_quantize.input_value(0))
            elif original is not None and index < original.get_input_size():
                weight = original.input_value(index).get_node()
                if weight.get_type_name() == "Constant":  # the fp32 model's weights instead of the int8 ones
                    port.replace_source_output(openvino.op.Constant(weight.get_data()).output(0))
        out_dir.mkdir(parents=True, exist_ok=True)
        return _save(model, out_dir / "model.xml", compress_to_fp16=False)

    def _model(self, quantized: Path) -> Any:
        import openvino

        if self._quantized is None or self._quantized[0] != quantized:
            self._quantized = (quantized, openvino.Core().read_model(str(quantized)))
        return self._quantized[1]

    def _float_op(self, name: str) -> Any:
        if self._float_ops is None:
            self._float_ops = {op.get_friendly_name(): op for op in _read(self.artifact).get_ordered_ops()}
        return self._float_ops.get(name)


def _content(feed: dict[str, Any]) -> bytes:
    """A feed's identity by content (NNCF hands back the feeds, not their indices)."""
    return b"".join(name.encode() + feed[name].tobytes() for name in sorted(feed))


def _run_compiled(compiled: Any, samples: list[dict[str, Any]], names: set[str]) -> dict[str, Any]:
    """Every output of an OpenVINO compiled model over ``samples`` (one call each), joined on axis 0 and named by
    the one of its port's names in ``names`` (a port has several, and get_any_name() may pick another)."""
    request = compiled.create_infer_request()
    per_output: dict[str, list[Any]] = {}
    for sample in samples:
        result = request.infer(sample)
        for port, value in result.items():
            name = next((name for name in port.get_names() if name in names), port.get_any_name())
            per_output.setdefault(name, []).append(np.array(value))
    return {name: np.concatenate(values) for name, values in per_output.items()}


# Operations that only move data: NNCF quantizes the operation that reads them (e.g. the MatMul after a Reshape)
# and ignoring them changes nothing, so they are not layers, and a layer's FakeQuantize may sit above them.
_MOVES_DATA = (
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Flatten",
    "StridedSlice",
    "Gather",
    "Split",
    "VariadicSplit",
    "Concat",
)
_NOT_LAYERS = ("FakeQuantize", "Convert", "Subtract", "Multiply", *_MOVES_DATA)


def _fake_quantize_above(port: Any) -> tuple[Any, Any] | None:
    """The FakeQuantize this input reads, through operations that only move data, and the input port that reads
    it; None when the input is not quantized."""
    while True:
        node = port.get_source_output().get_node()
        if node.get_type_name() == "FakeQuantize":
            return port, node
        if node.get_type_name() not in _MOVES_DATA:
            return None
        port = node.input(0)


def _is_int8_weight(port: Any) -> bool:
    """An input fed by NNCF's compressed weights: an 8-bit Constant → Convert → (Subtract) → Multiply chain."""
    node = port.get_source_output().get_node()
    pending = [node] if node.get_type_name() == "Multiply" else []
    while pending:
        node = pending.pop()
        if node.get_type_name() == "Constant" and node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4"):
            return True
        if node.get_type_name() in ("Multiply", "Subtract", "Convert"):
            pending += [value.get_node() for value in node.input_values()]
    return False
