"""PyTorch 2 export (PT2E) quantization plumbing shared by QAT (torchao) and autotune (Neural Compressor).

Both libraries quantize a graph captured by ``torch.export`` and convert it into a graph of
quantize/dequantize ops; the dynamo ONNX exporter turns that graph into a QDQ ONNX model that ONNX Runtime and
OpenVINO both run in int8, and that ``convert.openvino`` / ``convert.tflite`` take further.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compress.onnx_export import export_torch
from reports.schema import Signature


def capture(model: Any, signature: Signature) -> Any:
    """``model`` as an exported graph module with its symbolic axes dynamic (what PT2E quantizers take)."""
    import torch

    from compress.torch_io import dynamic_shapes, example_inputs

    program = torch.export.export(model, example_inputs(signature), dynamic_shapes=dynamic_shapes(model, signature))
    return program.module()


def to_onnx(converted: Any, signature: Signature, path: Path) -> Path:
    """A converted (quantize/dequantize) module as a QDQ ONNX file with a dynamic batch."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    # Exported modules refuse .eval() (which export_torch calls) unless told how to switch their graph's
    # BatchNorm and dropout ops; that switch leaves the ``training`` flags that torch.onnx checks untouched.
    allow_exported_model_train_eval(converted)
    converted.eval()
    for module in converted.modules():
        module.training = False
    return export_torch(converted, signature, path)
