"""What this machine's CPU is: its model, cores and the flags that decide which kernels run.

Shared by the measuring side (every result records it) and the compressing side (an int8 range chosen for the
CPU that quantizes), so it lives in the core.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# CPU features that change which int8/bf16/fp16 kernels a runtime can use.
INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
)


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
        total = next(
            (line.split()[1] for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")), None
        )
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
