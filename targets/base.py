"""The target interface: how to make a runnable file from a model artifact, load it and run it.

A target is (runtime, device). Target modules import their runtime lazily, inside methods: the benchmark
worker and the remote agent import this package with only the runtimes installed (no torch, no TensorFlow).
"""

from __future__ import annotations

import importlib.util
import platform
import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from reports.schema import Signature
from targets.feeds import Feeds

ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv8l")


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


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Target(ABC):
    """One runtime; ``devices`` lists the device classes it can run on, ``accepts`` the artifact formats."""

    runtime: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    accepts: ClassVar[tuple[str, ...]]
    python_modules: ClassVar[tuple[str, ...]]
    options_model: ClassVar[type[BaseModel]] = NoOptions

    @property
    def python_module(self) -> str | None:
        """The first of ``python_modules`` installed here (a runtime may have a maintained and a legacy package)."""
        return next((name for name in self.python_modules if importlib.util.find_spec(name)), None)

    def unavailable_reason(self, device: str) -> str | None:
        """``None`` when ``device`` can run here, else why not (shown as the row's 'skipped' reason)."""
        if device not in self.devices:
            return f"{self.runtime} has no device {device!r} (known: {', '.join(self.devices)})"
        if self.python_module is None:
            return f"none of the Python packages {', '.join(self.python_modules)} is installed"
        machine = platform.machine().lower()
        if device == "arm" and machine not in ARM_MACHINES:
            return f"this machine is {machine}; arm rows run on an ARM (aarch64) device"
        return self.device_reason(device)

    def device_reason(self, device: str) -> str | None:
        """Runtime-specific availability of ``device`` (e.g. a GPU provider); ``None`` when it can run."""
        return None

    def export(self, source: Path, source_format: str, out_dir: Path) -> Path:
        """Place this target's runnable file for ``source`` in ``out_dir`` and return its path.

        The default copies a file already in the runtime's format; targets that convert override it.
        """
        copies = [shutil.copyfile(path, out_dir / path.name) for path in self.files(source)]
        return Path(copies[0])

    def files(self, runnable: Path) -> list[Path]:
        """Every file the runnable model consists of (its size on disk is their sum)."""
        return [runnable]

    @abstractmethod
    def load(self, path: Path, device: str, threads: int, options: BaseModel) -> Any:
        """Load (and compile) the model for ``device`` with ``threads`` intra-op threads."""

    @abstractmethod
    def run(self, session: Any, feeds: Feeds) -> Feeds:
        """Run one batch of named inputs (as ``signature`` describes them) and return every output by name.

        Float outputs come back as float32, quantized ones dequantized, so that every runtime's outputs compare."""

    @abstractmethod
    def signature(self, path: Path) -> Signature:
        """The model file's named inputs and outputs as ``run`` takes and returns them."""

    def describe(self, session: Any) -> dict[str, Any]:
        """Facts about how the loaded session actually runs (provider, precision, threads), recorded with results."""
        return {}


def as_output(array: Any) -> np.ndarray:
    """A runtime's output as an owned numpy array, floats as float32 (fp16 models compare with fp32 ones)."""
    array = np.array(array, copy=True)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def image_like(shape: list | tuple | None, channels_axis: int) -> bool:
    """A 4-D shape whose ``channels_axis`` holds 1, 3 or 4 channels: read from a file as an image layout."""
    return bool(shape) and len(shape) == 4 and shape[channels_axis] in (1, 3, 4)
