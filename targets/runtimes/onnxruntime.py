"""ONNX Runtime: runs the ONNX file as it is, with the execution provider that matches the device."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from targets.base import Target
from targets.registry import register

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@register
class OnnxRuntime(Target):
    runtime = "onnxruntime"
    file_format = "onnx"
    devices = tuple(PROVIDERS)
    python_module = "onnxruntime"

    def unavailable_reason(self, device: str) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if PROVIDERS[device] not in available:
            return f"onnxruntime offers no {PROVIDERS[device]} here (available: {', '.join(available)})"
        return None

    def export(self, onnx_path: Path, out_dir: Path) -> Path:
        target = out_dir / "model.onnx"
        if target.resolve() != onnx_path.resolve():
            shutil.copyfile(onnx_path, target)
        return target

    def load(self, path: Path, device: str, threads: int) -> Any:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(str(path), options, providers=[PROVIDERS[device]])

    def run(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        name = session.get_inputs()[0].name
        return np.asarray(session.run(None, {name: inputs})[0], dtype=np.float32)

    def describe(self, session: Any) -> dict[str, Any]:
        import onnxruntime

        return {"providers": session.get_providers(), "onnxruntime": onnxruntime.__version__}
