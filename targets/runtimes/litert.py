"""LiteRT (TFLite): runs .tflite files with ai-edge-litert, or the legacy tflite-runtime where only that exists.

The TFLite graph is NHWC and may take int8 inputs; ``run`` takes the same NCHW float32 batches as every other
target and does the transposition and (de)quantization, so that one evaluation set serves all runtimes.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from targets.base import Target
from targets.registry import register


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

    def load(self, path: Path, device: str, threads: int, options: BaseModel) -> Any:
        # XNNPACK is LiteRT's default CPU delegate; num_threads sizes its thread pool.
        interpreter = importlib.import_module(f"{self.python_module}.interpreter")
        session = interpreter.Interpreter(model_path=str(path), num_threads=threads)
        session.allocate_tensors()
        return session

    def run(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        detail = session.get_input_details()[0]
        data = _to_model_layout(inputs, tuple(detail["shape"][1:]))
        if tuple(detail["shape"]) != data.shape:
            session.resize_tensor_input(detail["index"], list(data.shape))
            session.allocate_tensors()
            detail = session.get_input_details()[0]
        session.set_tensor(detail["index"], _quantize(data, detail))
        session.invoke()
        output = session.get_output_details()[0]
        return _dequantize(session.get_tensor(output["index"]), output)

    def describe(self, session: Any) -> dict[str, Any]:
        from importlib import metadata

        package = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[self.python_module]
        return {
            "interpreter": f"{package} {metadata.version(package)}",
            "input_dtype": np.dtype(session.get_input_details()[0]["dtype"]).name,
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
