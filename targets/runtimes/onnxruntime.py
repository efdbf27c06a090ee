"""ONNX Runtime: runs the ONNX file as it is, with the execution provider that matches the device."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from reports.schema import Signature, TensorSpec
from targets.base import Target, as_output, image_like
from targets.feeds import Feeds
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

    def run(self, session: Any, feeds: Feeds) -> Feeds:
        names = [output.name for output in session.get_outputs()]
        return {name: as_output(value) for name, value in zip(names, session.run(names, feeds))}

    def signature(self, path: Path) -> Signature:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return Signature(inputs=[_spec(arg) for arg in session.get_inputs()],
                         outputs=[_spec(arg) for arg in session.get_outputs()])

    def describe(self, session: Any) -> dict[str, Any]:
        import onnxruntime

        options = session.get_session_options()
        return {
            "providers": session.get_providers(),
            "onnxruntime": onnxruntime.__version__,
            "intra_op_threads": options.intra_op_num_threads,
            "inter_op_threads": options.inter_op_num_threads,
        }


# ONNX Runtime's type strings for the element types a model input or output can have.
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
           "tensor(bool)": "bool"}


def _spec(arg: Any) -> TensorSpec:
    shape = [dim if isinstance(dim, int) else (dim or None) for dim in arg.shape]
    return TensorSpec(name=arg.name, dtype=_DTYPES.get(arg.type), shape=shape,
                      layout="NCHW" if image_like(shape, channels_axis=1) else None)
