"""Post-training int8 quantization of ONNX models with ``onnxruntime.quantization``.

We call ONNX Runtime's own tooling rather than writing QDQ insertion ourselves: it knows which operators its
kernels fuse, and its output is what ONNX Runtime (and OpenVINO, which reads QDQ) run fastest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from compress.cpu import int8_saturates
from compress.qdq import without_qdq
from compress.registry import register


def _preprocessed(source: Path, work_dir: Path) -> Path:
    """ORT's recommended pre-step (shape inference + graph optimisation) before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = work_dir / f"{source.stem}.pre.onnx"
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)
    return target


def reduce_range(config: "StaticQuantizationConfig") -> bool:
    """7-bit weights: asked for, or 'auto' where 8-bit ranges saturate the CPU's int8 kernels."""
    return int8_saturates() if config.reduce_range == "auto" else config.reduce_range


class StaticQuantizationConfig(PassConfig):
    """Calibrated int8 with QuantizeLinear/DequantizeLinear pairs around each quantized operator."""

    type: Literal["quantize.static"] = "quantize.static"
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True
    calibration_samples: int = Field(256, gt=0, description="How many calibration-split inputs to observe.")
    activation_type: Literal["int8", "uint8"] = Field(
        "uint8",
        description="uint8 activations (with int8 weights) hit ONNX Runtime's fast x86 kernels; signed int8 "
        "suits ARM.",
    )
    reduce_range: Literal["auto"] | bool = Field(
        "auto",
        description="7-bit weights. 'auto': on x86 CPUs without VNNI, whose uint8×int8 kernels saturate 16-bit "
        "intermediate sums (ONNX Runtime's documented advice); the CPU that quantized is recorded.",
    )


@register
class StaticQuantization(Pass):
    name = "quantize.static"
    config_model = StaticQuantizationConfig
    input_formats = ("onnx",)
    output_format = "onnx"
    libraries = ("onnxruntime",)

    def environment_facts(self, config: StaticQuantizationConfig) -> dict:
        return {"reduce_range": reduce_range(config)}

    def apply(self, artifact: Artifact, config: StaticQuantizationConfig, context: PassContext) -> PassOutcome:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        samples = context.calibration.head(config.calibration_samples).samples()
        source = artifact.path
        removed = without_qdq(source, context.work_dir / "float-weights.onnx")
        if removed:  # a QAT model: keep its trained weights, lay out the int8 graph the way ORT fuses it
            source = context.work_dir / "float-weights.onnx"

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self._feeds = iter(samples)

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self._feeds, None)

        output = context.work_dir / "model.onnx"
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        quantize_static(
            str(_preprocessed(source, context.work_dir)),
            str(output),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=config.per_channel,
            activation_type=QuantType.QInt8 if config.activation_type == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[config.calibration_method],
            reduce_range=reduce_range(config),
        )
        details = {"calibration_samples": len(samples), "calibration_method": config.calibration_method,
                   "reduce_range": reduce_range(config)}
        if removed:
            details["qdq_nodes_removed"] = removed
        return PassOutcome(Artifact("onnx", artifact.signature, path=output), details)


class DynamicQuantizationConfig(PassConfig):
    """int8 weights, activations quantized at run time: no calibration data, but often slow on CNNs."""

    type: Literal["quantize.dynamic"] = "quantize.dynamic"
    per_channel: bool = False


@register
class DynamicQuantization(Pass):
    name = "quantize.dynamic"
    config_model = DynamicQuantizationConfig
    input_formats = ("onnx",)
    output_format = "onnx"
    libraries = ("onnxruntime",)

    def apply(self, artifact: Artifact, config: DynamicQuantizationConfig, context: PassContext) -> PassOutcome:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        output = context.work_dir / "model.onnx"
        quantize_dynamic(
            str(_preprocessed(artifact.path, context.work_dir)),
            str(output),
            per_channel=config.per_channel,
            weight_type=QuantType.QInt8,
        )
        return PassOutcome(Artifact("onnx", artifact.signature, path=output))
