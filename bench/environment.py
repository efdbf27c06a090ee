"""What a measurement depends on besides the model: library versions and the CPU it ran on.

Ratios such as int8-vs-fp32 speed-up depend on CPU features (VNNI, AMX, NEON dot-product), so every result
records them.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Any

from edgecraft.core.cpu import cpu_info

PACKAGES = (
    "edgecraft",
    "torch",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nncf",
    "tensorflow",
    "tensorflow-cpu",
    "ai-edge-litert",
    "tflite-runtime",
    "executorch",
    "mlcommons-loadgen",
    "neural-compressor",
    "numpy",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def machine_warnings(cpu: dict[str, Any]) -> list[str]:
    """Signs that the whole machine was a poor place to measure, from what ``cpu_info`` could read."""
    warnings = []
    governor = cpu.get("governor")
    if governor and governor != "performance":
        warnings.append(f"CPU frequency governor is {governor!r}, not 'performance': clocks may change under load")
    cores = cpu.get("logical_cores")  # the load average counts runnable tasks on the whole machine
    load = (cpu.get("load_average") or [0])[0]
    if cores and load > cores:
        warnings.append(f"load average {load:g} exceeds the {cores} cores: other processes competed for CPU")
    return warnings


def environment() -> dict[str, Any]:
    cpu = cpu_info()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "packages": package_versions(),
        "warnings": machine_warnings(cpu),
    }
