"""LiteRT (TFLite): runs .tflite files with ai-edge-litert, or the legacy tflite-runtime where only that exists.

The TFLite graph is NHWC and may take int8 inputs; ``run`` takes the same NCHW float32 batches as every other
target and does the transposition and (de)quantization, so that one evaluation set serves all runtimes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from targets.base import Target
from targets.registry import register


@dataclass(frozen=True)
class LiteRtSession:
    """The interpreter and the thread count it was made with (the interpreter cannot report it)."""

    interpreter: Any
    threads: int


@register
class LiteRt(Target):
    runtime = "litert"
    devices = ("cpu", "arm", "gpu")
    accepts = ("tflite",)
    python_modules = ("ai_edge_litert", "tflite_runtime")

    def device_reason(self, device: str) -> str | None:
        if device == "gpu":
            return "the LiteRT GPU delegate is not part of the Python wheels; run GPU rows with a device build"
        return None

    def load(self, path: Path, device: str, threads: int, options: BaseModel) -> LiteRtSession:
        # XNNPACK is LiteRT's default CPU delegate; num_threads sizes its thread pool.
        module = importlib.import_module(f"{self.python_module}.interpreter")
        interpreter = module.Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        return LiteRtSession(interpreter, threads)

    def run(self, session: LiteRtSession, inputs: np.ndarray) -> np.ndarray:
        interpreter = session.interpreter
        detail = interpreter.get_input_details()[0]
        data = _to_model_layout(inputs, tuple(detail["shape"][1:]))
        if tuple(detail["shape"]) != data.shape:
            interpreter.resize_tensor_input(detail["index"], list(data.shape))
            interpreter.allocate_tensors()
            detail = interpreter.get_input_details()[0]
        interpreter.set_tensor(detail["index"], _quantize(data, detail))
        interpreter.invoke()
        output = interpreter.get_output_details()[0]
        return _dequantize(interpreter.get_tensor(output["index"]), output)

    def input_shape(self, path: Path) -> tuple[int | None, ...]:
        interpreter = importlib.import_module(f"{self.python_module}.interpreter")
        signature = interpreter.Interpreter(model_path=str(path)).get_input_details()[0]["shape_signature"]
        shape = tuple(int(dim) if dim > 0 else None for dim in signature)
        # TFLite image models are NHWC inside; ``run`` takes NCHW like every other target.
        return (shape[0], shape[3], shape[1], shape[2]) if len(shape) == 4 else shape

    def describe(self, session: LiteRtSession) -> dict[str, Any]:
        from importlib import metadata

        package = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[self.python_module]
        return {
            "interpreter": f"{package} {metadata.version(package)}",
            "input_dtype": np.dtype(session.interpreter.get_input_details()[0]["dtype"]).name,
            "num_threads": session.threads,
        }


def _to_model_layout(inputs: np.ndarray, model_sample_shape: tuple[int, ...]) -> np.ndarray:
    """NCHW → NHWC when that is what the model takes (onnx2tf converts image models to NHWC)."""
    if inputs.ndim == 4 and inputs.shape[1:] != model_sample_shape:
        transposed = np.transpose(inputs, (0, 2, 3, 1))
        if transposed.shape[1:] == model_sample_shape:
            return np.ascontiguousarray(transposed)
    return inputs


def _quantize(data: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return data.astype(np.float32, copy=False)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(data / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(data: np.ndarray, detail: dict) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return data.astype(np.float32, copy=True)
    scale, zero_point = detail["quantization"]
    return ((data.astype(np.float32) - zero_point) * scale).astype(np.float32)
