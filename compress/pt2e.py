"""PyTorch 2 export (PT2E) quantization plumbing shared by QAT (torchao) and autotune (Neural Compressor).

Both libraries quantize a graph captured by ``torch.export`` and convert it into a graph of
quantize/dequantize ops; the dynamo ONNX exporter turns that graph into a QDQ ONNX model that ONNX Runtime and
OpenVINO both run in int8, and that ``convert.openvino`` / ``convert.tflite`` take further.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from compress.onnx_export import export_torch, forward_argument


# torchao warns at import about CUDA-only kernels and Triton, which a CPU export never uses: import this
# module before torchao (and Neural Compressor, which imports it) to keep runs quiet.
for _chatty in ("torchao", "torch.utils._pytree"):
    logging.getLogger(_chatty).setLevel(logging.ERROR)


def capture(model: Any, input_shape: tuple[int, ...]) -> Any:
    """``model`` as an exported graph module with a dynamic batch dimension (what PT2E quantizers take)."""
    import torch
    from torch.export import Dim

    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    program = torch.export.export(model, (example,), dynamic_shapes={forward_argument(model): {0: Dim("batch")}})
    return program.module()


def accuracy(module: Any, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of a captured module; it has no working ``.eval()``, so this only turns off autograd."""
    import torch

    with torch.no_grad():
        logits = [module(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return float((np.concatenate(logits).argmax(1) == y).mean())


def to_onnx(converted: Any, input_shape: tuple[int, ...], path: Path) -> Path:
    """A converted (quantize/dequantize) module as a QDQ ONNX file with a dynamic batch."""
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    # Exported modules refuse .eval() (which export_torch calls) unless told how to switch their graph's
    # BatchNorm and dropout ops; that switch leaves the ``training`` flags that torch.onnx checks untouched.
    allow_exported_model_train_eval(converted)
    converted.eval()
    for module in converted.modules():
        module.training = False
    return export_torch(converted, input_shape, path)
