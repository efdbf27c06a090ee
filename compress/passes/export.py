"""PyTorch → ONNX as an explicit step, for variants that change the PyTorch model themselves (prune or distill
inside a variant, so that the unchanged model is measured beside it in the same run)."""

from __future__ import annotations

from typing import Literal

from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from edgecraft.compress.registry import register


class OnnxExportConfig(PassConfig):
    """The same export the runner applies to every model after the shared passes (dynamo, dynamic batch)."""

    type: Literal["export.onnx"] = "export.onnx"


@register
class OnnxExport(Pass[OnnxExportConfig]):
    config_model = OnnxExportConfig
    input_formats = ("torch",)
    output_format = "onnx"

    def is_lossless(self, config: OnnxExportConfig) -> bool:
        return True

    def apply(self, artifact: Artifact, config: OnnxExportConfig, context: PassContext) -> PassOutcome:
        from edgecraft.compress.onnx_export import export_torch

        path = export_torch(artifact.model, artifact.signature, context.work_dir / "model.onnx")
        return PassOutcome(Artifact("onnx", artifact.signature, path=path), {})
