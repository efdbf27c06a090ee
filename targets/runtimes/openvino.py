"""OpenVINO: runs IR (or ONNX, converted to IR on export) on the CPU, GPU or NPU plugin."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from targets.base import Target
from targets.registry import register

PLUGINS = {"cpu": "CPU", "arm": "CPU", "gpu": "GPU", "npu": "NPU"}


class OpenVinoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inference_precision: Literal["f32", "bf16", "f16", "plugin-default"] = Field(
        "f32",
        description="INFERENCE_PRECISION_HINT. f32 by default so that fp32 rows are fp32: on CPUs with AMX the "
        "CPU plugin otherwise runs fp32 IR in bf16. The precision that actually ran is recorded.",
    )


@dataclass
class OpenVinoSession:
    """A compiled model, its one synchronous infer request, and the array its input tensor shares memory with.

    Copying each batch into that array and calling ``infer()`` costs ~3 µs per call on one core; the convenient
    ``request.infer({0: inputs})`` (a new tensor and a dict of outputs per call) ~35 µs, which is most of a 50 µs
    int8 model's latency and would not be OpenVINO's.
    """

    compiled: Any
    request: Any
    input: np.ndarray | None = None


@register
class OpenVino(Target):
    runtime = "openvino"
    devices = tuple(PLUGINS)
    accepts = ("openvino", "onnx")
    python_modules = ("openvino",)
    options_model = OpenVinoOptions

    def device_reason(self, device: str) -> str | None:
        import openvino

        available = openvino.Core().available_devices
        if not any(name.split(".")[0] == PLUGINS[device] for name in available):
            return f"OpenVINO has no {PLUGINS[device]} plugin device here (available: {', '.join(available)})"
        return None

    def export(self, source: Path, source_format: str, out_dir: Path) -> Path:
        if source_format == "openvino":
            return super().export(source, source_format, out_dir)
        import openvino

        target = out_dir / "model.xml"
        openvino.save_model(openvino.Core().read_model(str(source)), str(target), compress_to_fp16=False)
        return target

    def files(self, runnable: Path) -> list[Path]:
        return [runnable, runnable.with_suffix(".bin")]

    def load(self, path: Path, device: str, threads: int, options: OpenVinoOptions) -> OpenVinoSession:
        import openvino

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if PLUGINS[device] == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        if options.inference_precision != "plugin-default":
            config["INFERENCE_PRECISION_HINT"] = options.inference_precision
        compiled = openvino.Core().compile_model(str(path), PLUGINS[device], config)
        return OpenVinoSession(compiled, compiled.create_infer_request())

    def run(self, session: OpenVinoSession, inputs: np.ndarray) -> np.ndarray:
        if session.input is None or session.input.shape != inputs.shape:
            import openvino

            session.input = np.empty(inputs.shape, np.float32)
            session.request.set_input_tensor(openvino.Tensor(session.input, shared_memory=True))
        np.copyto(session.input, inputs)
        session.request.infer()
        return np.array(session.request.get_output_tensor(0).data, dtype=np.float32)

    def input_shape(self, path: Path) -> tuple[int | None, ...]:
        import openvino

        shape = openvino.Core().read_model(str(path)).inputs[0].get_partial_shape()
        return tuple(dim.get_length() if dim.is_static else None for dim in shape)

    def describe(self, session: OpenVinoSession) -> dict[str, Any]:
        import openvino

        compiled = session.compiled
        return {
            "openvino": openvino.__version__,
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")),
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "streams": compiled.get_property("NUM_STREAMS"),
        }
