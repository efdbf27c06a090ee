"""fp16 weights and compute for ONNX models, with ONNX Runtime's own float16 converter.

Inputs and outputs stay float32 (``keep_io_types``) so that the same evaluation data runs unchanged.
"""

from __future__ import annotations

from typing import Literal

from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from edgecraft.compress.registry import register


class Fp16Config(PassConfig):
    """Half-precision ONNX: half the size; faster only where the device has fp16 kernels (GPUs, some ARM)."""

    type: Literal["convert.fp16"] = "convert.fp16"


@register
class Fp16Conversion(Pass[Fp16Config]):
    config_model = Fp16Config
    input_formats = ("onnx",)
    output_format = "onnx"
    libraries = ("onnxruntime",)

    def apply(self, artifact: Artifact, config: Fp16Config, context: PassContext) -> PassOutcome:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        model = convert_float_to_float16(onnx.load(str(artifact.path)), keep_io_types=True)
        # The converter appends the input Casts after the nodes that read them; ONNX requires topological order
        # (ONNX Runtime loads it anyway, onnx.checker and other runtimes refuse it).
        wrapped = OnnxModel(model)
        wrapped.topological_sort()
        model = wrapped.model
        output = context.work_dir / "model.onnx"
        onnx.save(model, str(output))
        return PassOutcome(Artifact("onnx", artifact.signature, path=output))
