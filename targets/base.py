"""The target interface: how to make a runnable file from a model artifact, load it and run it.

A target is (runtime, device). Target modules import their runtime lazily, inside methods: the benchmark
worker and the remote agent import this package with only the runtimes installed (no torch, no TensorFlow).
"""

from __future__ import annotations

import importlib.util
import platform
import queue
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgecraft.core import formats
from edgecraft.core.signature import Signature
from edgecraft.targets.feeds import Feeds, Layout

ARM_MACHINES = ("aarch64", "arm64", "armv7l", "armv8l")


@dataclass(frozen=True)
class TargetSpec:
    """A recipe's ``runtime:device`` string, parsed; ``runtime:device@name`` runs on the remote device ``name``
    (a recipe's ``devices:`` entry) instead of this machine."""

    runtime: str
    device: str
    remote: str | None = None

    @classmethod
    def parse(cls, text: str) -> TargetSpec:
        text, at, remote = text.partition("@")
        runtime, _, device = text.partition(":")
        return cls(runtime.strip().lower(), (device or "cpu").strip().lower(), remote.strip() if at else None)

    def __str__(self) -> str:
        return f"{self.runtime}:{self.device}" + (f"@{self.remote}" if self.remote is not None else "")


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


Session = TypeVar("Session")
Options = TypeVar("Options", bound=BaseModel)


class Target(ABC, Generic[Session, Options]):
    """One runtime, generic in what ``load`` returns and in its options model; ``devices`` lists the device classes
    it can run on. The formats it loads are the formats' own fact (``edgecraft.core.formats.loaded_by``)."""

    runtime: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    python_modules: ClassVar[tuple[str, ...]]
    options_model: ClassVar[type[BaseModel]] = NoOptions

    @property
    def python_module(self) -> str | None:
        """The first of ``python_modules`` installed here (a runtime may have a maintained and a legacy package)."""
        return next((name for name in self.python_modules if _installed(name)), None)

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
        """Every file the runnable model consists of (its size on disk is their sum), as its format says."""
        fmt = formats.for_path(runnable)
        if fmt is None:
            raise ValueError(f"{runnable.name}: not a model file edgecraft knows ({', '.join(formats.suffixes())})")
        return fmt.files(runnable)

    def warm_up(self) -> None:
        """Import what ``verify`` and ``load`` need, ahead of the first job: the device agent calls it once, in the
        background, when it starts. Nothing by default; a runtime whose import takes long overrides it."""

    def verify(self, path: Path) -> None:
        """Raise ``ValueError`` when the file fails the runtime's own check of its structure (the agent refuses
        such an upload before queueing it); runtimes without a check of their own accept every file."""

    @abstractmethod
    def load(self, path: Path, device: str, threads: int, options: Options) -> Session:
        """Load (and compile) the model for ``device`` with ``threads`` intra-op threads."""

    @abstractmethod
    def run(self, session: Session, feeds: Feeds) -> Feeds:
        """Run one batch of named inputs (as ``signature`` describes them) and return every output by name.

        Float outputs come back as float32, quantized ones dequantized, so that every runtime's outputs compare."""

    def bind(self, session: Session, feeds: Feeds) -> Callable[[], Feeds]:
        """``run(session, feeds)`` as a call of no arguments, with what a deployed caller does once done here (the
        inputs put in the runtime's own layout and buffers): the benchmark's timed loop calls it, so the span it
        times holds the runtime's call, not the harness's data handling. The default binds nothing."""
        return lambda: self.run(session, feeds)

    def requests(self, session: Session, count: int, load: Callable[[], Session]) -> Requests:
        """``count`` inference requests of the model ``session`` runs, in flight side by side: the system under test
        of the throughput pass's parallel requests and of LoadGen's Server and Offline scenarios. A runtime with an
        asynchronous multi-request API of its own overrides this with it (OpenVINO's ``AsyncInferQueue``); the
        default is ``session`` and ``count - 1`` more from ``load``, each run by a thread of its own."""
        return ThreadedRequests(self.run, [session, *(load() for _ in range(count - 1))])

    @abstractmethod
    def signature(self, path: Path) -> Signature:
        """The model file's named inputs and outputs as ``run`` takes and returns them."""

    def describe(self, session: Session) -> dict[str, Any]:
        """Facts about how the loaded session actually runs (provider, precision, threads), recorded with results."""
        return {}

    def warnings(self, runtime_info: dict[str, Any]) -> list[str]:
        """What a row measured on this runtime must say about how it ran (from ``describe``), e.g. a delegate that
        refused the file; none by default."""
        return []

    def run_batches(
        self, session: Session, inputs: Feeds, batch_size: int, layout: Layout | None = None
    ) -> list[Feeds]:
        """Every output for every sample of ``inputs`` (sample-major), at most ``batch_size`` samples per ``run``
        call and as ``layout`` says the model takes them (its batch axes, its fixed batch, its state)."""
        return (layout or Layout()).run_all(lambda fed: self.run(session, fed), inputs, batch_size)

    def profile(
        self, path: Path, device: str, threads: int, options: Options, feeds: list[Feeds], runs: int
    ) -> dict[str, Any]:
        """Where the time of one inference goes, per op type, as a ``edgecraft.core.results.OperatorProfile`` dict.

        Called once, after every timed phase, in the benchmark process: it loads its own session with the
        runtime's profiler on (profiling changes how a session runs, so the measured session is never reused),
        runs ``PROFILE_WARMUP`` untimed inferences, then ``runs`` profiled ones cycling through ``feeds``.
        A runtime without a per-operator profiler says so in ``not_measured``."""
        return {"source": self.runtime, "not_measured": f"edgecraft has no operator profiler for {self.runtime}"}


# Called once a started inference has ended: with None, or with the error it raised.
Done = Callable[[BaseException | None], None]


class Requests(ABC):
    """Inferences of one model started without waiting for them, as many at once as there are requests."""

    @abstractmethod
    def start(self, feeds: Feeds, done: Done) -> None:
        """Begin one inference of ``feeds`` (its outputs are not read back); ``done`` is called when it has ended, on
        whichever thread ran it. Returns without waiting for it, or at most until a request is free."""

    @abstractmethod
    def close(self) -> None:
        """Wait for every started inference to end, then release the requests."""


class ThreadedRequests(Requests):
    """Sessions of a runtime without an asynchronous API, one thread each, taking inferences in the order they were
    started. Written here because the work is a queue and a loop: ONNX Runtime, LiteRT and ExecuTorch release the
    GIL while they run, so the threads run side by side, and LiteRT asks for an interpreter per thread anyway."""

    def __init__(self, run: Callable[[Any, Feeds], Feeds], sessions: list[Any]) -> None:
        self._run = run
        self._work: queue.Queue[tuple[Feeds, Done] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._serve, args=(session,), daemon=True) for session in sessions]
        for thread in self._threads:
            thread.start()

    def _serve(self, session: Any) -> None:
        while (work := self._work.get()) is not None:
            feeds, done = work
            try:
                self._run(session, feeds)
            except Exception as exc:  # noqa: BLE001 - handed to the caller's ``done``, which decides
                done(exc)
            else:
                done(None)

    def start(self, feeds: Feeds, done: Done) -> None:
        self._work.put((feeds, done))

    def close(self) -> None:
        for _ in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join()


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported; a submodule (``executorch.runtime``) of a package that is not installed
    is not, where ``find_spec`` raises."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def one_line(exc: BaseException) -> str:
    """A runtime's error message on one line (its lines joined), or the exception's type where it says nothing."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


def as_output(array: Any) -> np.ndarray:
    """A runtime's output as an owned numpy array, floats as float32 (fp16 models compare with fp32 ones)."""
    array = np.array(array, copy=True)
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def image_like(shape: list | tuple | None, channels_axis: int) -> bool:
    """A 4-D shape whose ``channels_axis`` holds 1, 3 or 4 channels: read from a file as an image layout."""
    return shape is not None and len(shape) == 4 and shape[channels_axis] in (1, 3, 4)


# Untimed inferences before a profile's runs: first-inference costs (weight repacking, arena sizing) are no op's.
PROFILE_WARMUP = 3


@dataclass(frozen=True)
class NodeTime:
    """One executed node of a profile: its op type, its time summed over the profiled runs (None where the runtime
    cannot time it) and whether it computed in floating point."""

    name: str
    op_type: str
    ms: float | None
    floating: bool


def summarize(
    source: str,
    nodes: Iterable[NodeTime],
    runs: int,
    *,
    quantized: bool,
    qdq_nodes: dict[str, int],
    qdq_types: Iterable[str] = (),
    not_measured: str | None = None,
    notes: Iterable[str] = (),
    total_ms: float | None = None,
) -> dict[str, Any]:
    """An ``OperatorProfile`` dict from per-node records: per op type its node count (distinct node names), its
    time per inference and share; the float op types of a quantized model (quantize / dequantize ops excluded)."""
    per_type: dict[str, dict[str, Any]] = {}
    floating: dict[str, set[str]] = {}
    skip = set(qdq_types)
    for node in nodes:
        entry = per_type.setdefault(node.op_type, {"names": set(), "ms": None})
        entry["names"].add(node.name)
        if node.ms is not None:
            entry["ms"] = (entry["ms"] or 0.0) + node.ms
        if quantized and node.floating and node.op_type not in skip:
            floating.setdefault(node.op_type, set()).add(node.name)
    timed = runs > 0 and any(entry["ms"] is not None for entry in per_type.values())
    summed = sum(entry["ms"] or 0.0 for entry in per_type.values()) / runs if timed else None
    ops: list[dict[str, Any]] = [
        {
            "op_type": op_type,
            "nodes": len(entry["names"]),
            "ms": entry["ms"] / runs if timed and entry["ms"] is not None else None,
            "share": (entry["ms"] or 0.0) / runs / summed if timed and summed else None,
        }
        for op_type, entry in per_type.items()
    ]
    ops.sort(key=lambda op: (-(op["ms"] or 0.0), -op["nodes"], op["op_type"]))
    return {
        "source": source,
        "runs": runs if timed else 0,
        "total_ms": summed if timed else total_ms,
        "ops": ops,
        "quantized": quantized,
        "qdq_nodes": {name: count for name, count in sorted(qdq_nodes.items()) if count},
        "float_ops": {op_type: len(names) for op_type, names in sorted(floating.items())},
        "not_measured": not_measured,
        "notes": list(notes),
    }
