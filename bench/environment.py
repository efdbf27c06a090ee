"""What a measurement depends on besides the model: library versions and the CPU it ran on.

Ratios such as int8-vs-fp32 speed-up depend on CPU features (VNNI, AMX, NEON dot-product), so every result
records them.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = (
    "edgecraft", "torch", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino", "nncf",
    "tensorflow", "tensorflow-cpu", "ai-edge-litert", "tflite-runtime", "neural-compressor", "numpy",
)
# CPU features that change which int8/bf16/fp16 kernels a runtime can use.
INTERESTING_FLAGS = (
    "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
    "amx_bf16", "asimd", "asimddp", "i8mm", "bf16", "sve",
)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"machine": platform.machine(), "logical_cores": os.cpu_count()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        info["model"] = fields.get("model name") or fields.get("Hardware") or fields.get("CPU part")
        flags = set((fields.get("flags") or fields.get("Features") or "").split())
        info["flags"] = [flag for flag in INTERESTING_FLAGS if flag in flags]
    else:
        info["model"] = platform.processor()
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total = next((line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")), None)
        if total:
            info["memory_mb"] = round(int(total) / 1024)
    governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor.exists():
        info["governor"] = governor.read_text().strip()
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(load, 2) for load in os.getloadavg()]
    return info


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
