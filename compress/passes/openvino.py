"""OpenVINO IR: conversion (fp32 or fp16-compressed weights) and NNCF post-training int8 quantization.

NNCF is OpenVINO's own quantizer: it places FakeQuantize nodes where the CPU/GPU plugins have int8 kernels,
which hand-written quantization could not match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from compress.cpu import int8_saturates
from compress.registry import register


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
class OpenVinoConversion(Pass):
    name = "convert.openvino"
    config_model = OpenVinoConversionConfig
    input_formats = ("onnx",)
    output_format = "openvino"
    libraries = ("openvino", "nncf")

    def is_lossless(self, config: OpenVinoConversionConfig) -> bool:
        return not config.compress_to_fp16

    def apply(self, artifact: Artifact, config: OpenVinoConversionConfig, context: PassContext) -> PassOutcome:
        path = _save(_read(artifact), context.work_dir / "model.xml", config.compress_to_fp16)
        return PassOutcome(Artifact("openvino", artifact.signature, path=path), {"compress_to_fp16": config.compress_to_fp16})


class NncfQuantizationConfig(PassConfig):
    """Calibrated int8 for OpenVINO with ``nncf.quantize``."""

    type: Literal["quantize.nncf"] = "quantize.nncf"
    calibration_samples: int = Field(300, gt=0, description="NNCF's subset_size: calibration inputs observed.")
    preset: Literal["performance", "mixed"] = Field(
        "performance", description="'performance': symmetric activations; 'mixed': asymmetric (more accurate)."
    )
    model_type: Literal["default", "transformer"] = Field(
        "default", description="'transformer': NNCF's transformer scheme (keeps softmax, layer norm and the "
        "attention's sensitive products in float)."
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

    fast_bias_correction: bool = Field(
        False,
        description=(
            "NNCF's fast bias correction instead of the full one. Off by default: measured on the constant-folded "
            "digits-cnn, fast correction lost 1.1 accuracy points, the full one none (and costs ~5 s more on "
            "digits-mobilenet)."
        ),
    )


@register
class NncfQuantization(Pass):
    name = "quantize.nncf"
    config_model = NncfQuantizationConfig
    input_formats = ("onnx", "openvino")
    output_format = "openvino"
    libraries = ("openvino", "nncf")

    def environment_facts(self, config: NncfQuantizationConfig) -> dict:
        return {"overflow_fix": config.overflow()}

    def apply(self, artifact: Artifact, config: NncfQuantizationConfig, context: PassContext) -> PassOutcome:
        import nncf
        from nncf.quantization.advanced_parameters import (
            AdvancedQuantizationParameters,
            OverflowFix,
        )

        samples = context.calibration.head(config.calibration_samples).samples()
        quantized = nncf.quantize(
            _read(artifact),
            nncf.Dataset(samples),
            subset_size=len(samples),
            preset=nncf.QuantizationPreset(config.preset),
            fast_bias_correction=config.fast_bias_correction,
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(config.overflow())),
            **({"model_type": nncf.ModelType.TRANSFORMER} if config.model_type == "transformer" else {}),
        )
        path = _save(quantized, context.work_dir / "model.xml", compress_to_fp16=False)
        return PassOutcome(
            Artifact("openvino", artifact.signature, path=path),
            {"calibration_samples": len(samples), "preset": config.preset, "fast_bias_correction": config.fast_bias_correction,
             "model_type": config.model_type, "overflow_fix": config.overflow()},
        )
