"""The target interface: how to turn an ONNX model into a runnable file, load it and run it.

A target is (runtime, device). Target modules import their runtime lazily, inside methods: the benchmark
worker and the remote agent import this package with only the runtimes installed (no torch, no TensorFlow).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class TargetSpec:
    """A recipe's ``runtime:device`` string, parsed."""

    runtime: str
    device: str

    @classmethod
    def parse(cls, text: str) -> "TargetSpec":
        runtime, _, device = text.partition(":")
        return cls(runtime.strip().lower(), (device or "cpu").strip().lower())

    def __str__(self) -> str:
        return f"{self.runtime}:{self.device}"


class Target(ABC):
    """One runtime; ``devices`` lists the device classes it can run on."""

    runtime: ClassVar[str]
    file_format: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    python_module: ClassVar[str]

    def unavailable_reason(self, device: str) -> str | None:
        """``None`` when ``device`` can run here, else why not (shown as the row's 'skipped' reason)."""
        if device not in self.devices:
            return f"{self.runtime} has no device {device!r} (known: {', '.join(self.devices)})"
        if importlib.util.find_spec(self.python_module) is None:
            return f"Python package {self.python_module!r} is not installed"
        return None

    @abstractmethod
    def export(self, onnx_path: Path, out_dir: Path) -> Path:
        """Write this target's runnable file for the ONNX model at ``onnx_path`` and return its path."""

    @abstractmethod
    def load(self, path: Path, device: str, threads: int) -> Any:
        """Load (and compile) the model for ``device`` with ``threads`` intra-op threads."""

    @abstractmethod
    def run(self, session: Any, inputs: np.ndarray) -> np.ndarray:
        """Run one batch of NCHW float32 inputs and return the first output as float32."""

    def describe(self, session: Any) -> dict[str, Any]:
        """Facts about how the loaded session actually runs (provider, precision), recorded with results."""
        return {}
