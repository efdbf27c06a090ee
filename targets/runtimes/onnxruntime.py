"""ONNX Runtime: runs the ONNX file as it is, with the execution provider that matches the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from targets.base import Target
from targets.registry import register

PROVIDERS = {"cpu": "CPUExecutionProvider", "arm": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@register
class OnnxRuntime(Target):
    runtime = "onnxruntime"
    devices = tuple(PROVIDERS)
    accepts = ("onnx",)
    python_modules = ("onnxruntime",)

    def device_reason(self, device: str) -> str | None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if PROVIDERS[device] not in available:
            return f"onnxruntime offers no {PROVIDERS[device]} here (available: {', '.join(available)})"
        return None

    def load(self, path: Path, device: str, threads: int, options: BaseModel) -> Any:
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), session_options, providers=[PROVIDERS[device]])
        # ONNX Runtime falls back to the CPU, with only a log line, when a GPU provider fails to initialise
        # (e.g. a missing CUDA library): that row would be a CPU measurement labelled GPU.
        if session.get_providers()[0] != PROVIDERS[device]:
            raise RuntimeError(f"{PROVIDERS[device]} did not initialise; the session runs on {session.get_providers()}")
        return session

    def run(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        name = session.get_inputs()[0].name
        return np.asarray(session.run(None, {name: inputs})[0], dtype=np.float32)

    def input_shape(self, path: Path) -> tuple[int | None, ...]:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return tuple(dim if isinstance(dim, int) else None for dim in session.get_inputs()[0].shape)

    def describe(self, session: Any) -> dict[str, Any]:
        import onnxruntime

        options = session.get_session_options()
        return {
            "providers": session.get_providers(),
            "onnxruntime": onnxruntime.__version__,
            "intra_op_threads": options.intra_op_num_threads,
            "inter_op_threads": options.inter_op_num_threads,
        }
