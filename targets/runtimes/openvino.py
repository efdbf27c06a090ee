"""OpenVINO: runs IR (or ONNX, converted to IR on export) on the CPU, GPU or NPU plugin."""

from __future__ import annotations

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

    def load(self, path: Path, device: str, threads: int, options: OpenVinoOptions) -> Any:
        import openvino

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if PLUGINS[device] == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        if options.inference_precision != "plugin-default":
            config["INFERENCE_PRECISION_HINT"] = options.inference_precision
        compiled = openvino.Core().compile_model(str(path), PLUGINS[device], config)
        return compiled, compiled.create_infer_request()

    def run(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        _, request = session
        return np.asarray(request.infer({0: inputs})[0], dtype=np.float32)

    def input_shape(self, path: Path) -> tuple[int | None, ...]:
        import openvino

        shape = openvino.Core().read_model(str(path)).inputs[0].get_partial_shape()
        return tuple(dim.get_length() if dim.is_static else None for dim in shape)

    def describe(self, session: Any) -> dict[str, Any]:
        import openvino

        compiled, _ = session
        return {
            "openvino": openvino.__version__,
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")),
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "streams": compiled.get_property("NUM_STREAMS"),
        }
