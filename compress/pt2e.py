"""PyTorch 2 export (PT2E) quantization plumbing shared by QAT (torchao) and autotune (Neural Compressor).

Both libraries quantize a graph captured by ``torch.export`` and convert it into a graph of
quantize/dequantize ops; the dynamo ONNX exporter turns that graph into a QDQ ONNX model that ONNX Runtime and
OpenVINO both run in int8, and that ``convert.openvino`` / ``convert.tflite`` take further.

The weights must reach the file as int8: torchao's ``convert_pt2e`` folds each weight's quantize op into an int8
constant by default (``fold_quantize=True``), and the dynamo exporter keeps that constant as an int8 initializer
feeding a DequantizeLinear, the QDQ layout ONNX Runtime and OpenVINO fuse. A graph converted without that fold
(Neural Compressor's convert passes ``fold_quantize=False``) exports float weights and a QuantizeLinear computed
at every inference: ``fold_weight_quantize`` applies the same fold afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecraft.compress.onnx_export import export_torch
from edgecraft.core.signature import Signature


def capture(model: Any, signature: Signature) -> Any:
    """``model`` as an exported graph module with its symbolic axes dynamic (what PT2E quantizers take)."""
    import torch
    from torch.export import Dim

    from edgecraft.compress.torch_io import dynamic_shapes, example_inputs

    # Only the batch axis keeps the exporter's range: the model's own limits bound the others (MiniLM's 512
    # positions contradict a fixed maximum of 4096, and torch.export refuses the model for it).
    shapes = {
        argument: {axis: dim if axis == 0 else Dim.DYNAMIC for axis, dim in axes.items()}
        for argument, axes in dynamic_shapes(model, signature).items()
    }
    program = torch.export.export(model, example_inputs(signature), dynamic_shapes=shapes)
    return program.module()


def fold_weight_quantize(converted: Any) -> Any:
    """Fold every quantize op whose input is a constant (a weight) into an int8 constant, in place: what
    ``convert_pt2e(fold_quantize=True)`` does, for a graph converted without it. Outputs are unchanged (the same
    quantize, computed once)."""
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint  # convert_pt2e's own rule

    constant_fold(converted, _quant_node_constraint)
    return converted


def to_onnx(converted: Any, signature: Signature, path: Path) -> Path:
    """A converted (quantize/dequantize) module as a QDQ ONNX file with a dynamic batch.

    The exporter's per-node debugging metadata (stack traces, FX node text: ~10 % of an int8 file) is dropped."""
    import onnx
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    # Exported modules refuse .eval() (which export_torch calls) unless told how to switch their graph's
    # BatchNorm and dropout ops; that switch leaves the ``training`` flags that torch.onnx checks untouched.
    allow_exported_model_train_eval(converted)
    converted.eval()
    for module in converted.modules():
        module.training = False
    export_torch(converted, signature, path)
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))
    return path
