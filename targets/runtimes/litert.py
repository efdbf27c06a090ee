"""LiteRT (TFLite): runs .tflite files with ai-edge-litert, or the legacy tflite-runtime where only that exists.

Inputs and outputs are matched by the file's signature names. A file converted by ``convert.tflite`` has a note
beside it with the model's own names for them and the NCHW image inputs, which the file takes as NHWC: ``run``
transposes those, so that one evaluation set serves all runtimes. A native file has no note and runs as it is.
Quantized inputs and outputs are (de)quantized with their tensor's scale.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecraft.core.formats.tflite import read_io_note
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.targets.base import PROFILE_WARMUP, NodeTime, NoOptions, Target, as_output, image_like, summarize
from edgecraft.targets.feeds import Feeds
from edgecraft.targets.registry import register


@dataclass
class LiteRtSession:
    """The interpreter, its inputs and outputs by name, and the inputs to transpose from NCHW."""

    interpreter: Any
    threads: int
    inputs: dict[str, dict]
    outputs: dict[str, dict]
    nchw_inputs: frozenset[str]
    names: dict[str, str]


@register
class LiteRt(Target[LiteRtSession, NoOptions]):
    runtime = "litert"
    devices = ("cpu", "arm", "gpu")
    python_modules = ("ai_edge_litert", "tflite_runtime")

    def device_reason(self, device: str) -> str | None:
        if device == "gpu":
            return "the LiteRT GPU delegate is not part of the Python wheels; run GPU rows with a device build"
        return None

    def _interpreter(self, path: Path, threads: int | None = None) -> Any:
        module = importlib.import_module(f"{self.python_module}.interpreter")
        # XNNPACK is LiteRT's default CPU delegate; num_threads sizes its thread pool.
        return module.Interpreter(model_path=str(path), num_threads=threads)

    def load(self, path: Path, device: str, threads: int, options: NoOptions) -> LiteRtSession:
        interpreter = self._interpreter(path, threads)
        interpreter.allocate_tensors()
        names, nchw = read_io_note(path)
        inputs, outputs = _named_details(interpreter, names)
        return LiteRtSession(interpreter, threads, inputs, outputs, frozenset(nchw), names)

    def run(self, session: LiteRtSession, feeds: Feeds) -> Feeds:
        interpreter = session.interpreter
        resized = False
        prepared = {}
        for name, value in feeds.items():
            detail = session.inputs[name]
            data = np.transpose(value, (0, 2, 3, 1)) if name in session.nchw_inputs else value
            if tuple(detail["shape"]) != data.shape:
                fixed = [int(d) for d in detail["shape_signature"]]
                if len(fixed) != data.ndim or any(f > 0 and f != n for f, n in zip(fixed, data.shape)):
                    # Checked before resizing: a failed resize would leave the interpreter unusable.
                    raise ValueError(f"input {name!r} has a fixed shape {fixed} in this file; got {list(data.shape)}")
                interpreter.resize_tensor_input(detail["index"], list(data.shape))
                resized = True
            prepared[name] = data
        if resized:
            interpreter.allocate_tensors()
            session.inputs, session.outputs = _named_details(interpreter, session.names)
        for name, data in prepared.items():
            detail = session.inputs[name]
            interpreter.set_tensor(detail["index"], _quantize(data, detail))
        interpreter.invoke()
        return {
            name: _dequantize(interpreter.get_tensor(detail["index"]), detail)
            for name, detail in session.outputs.items()
        }

    def signature(self, path: Path) -> Signature:
        """The file's inputs and outputs by signature name; an input noted as converted from NCHW is given NCHW,
        the way the data feeds it, and a native NHWC input stays NHWC."""
        names, nchw = read_io_note(path)
        inputs, outputs = _named_details(self._interpreter(path), names)
        return Signature(
            inputs=[_spec(name, detail, name in nchw) for name, detail in inputs.items()],
            outputs=[_spec(name, detail, False) for name, detail in outputs.items()],
        )

    def profile(
        self, path: Path, device: str, threads: int, options: NoOptions, feeds: list[Feeds], runs: int
    ) -> dict[str, Any]:
        """The file's op list with each op's operand types, and the mean inference time of ``runs`` invocations.

        Per-op time is not measured: the Python Interpreter of ai-edge-litert (and tflite-runtime) exposes no op
        profiler (``benchmark_model --enable_op_profiling`` is a C++ tool outside the wheel), and the default
        XNNPACK delegate runs most of the graph as one delegate node."""
        session = self.load(path, device, threads, options)
        for i in range(PROFILE_WARMUP):
            self.run(session, feeds[i % len(feeds)])
        spent = 0.0
        for i in range(runs):
            start = time.perf_counter()
            self.run(session, feeds[i % len(feeds)])
            spent += time.perf_counter() - start
        return op_list_profile(
            session.interpreter._get_ops_details(), runs, 1e3 * spent / max(runs, 1), self._interpreter_version()
        )

    def _interpreter_version(self) -> str:
        """The installed interpreter package and its version, e.g. 'ai-edge-litert 2.3.0'."""
        from importlib import metadata

        module = self.python_module
        if module is None:
            raise RuntimeError(f"none of the Python packages {', '.join(self.python_modules)} is installed")
        package = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}[module]
        return f"{package} {metadata.version(package)}"

    def describe(self, session: LiteRtSession) -> dict[str, Any]:
        return {
            "interpreter": self._interpreter_version(),
            "input_dtype": ", ".join(sorted({np.dtype(d["dtype"]).name for d in session.inputs.values()})),
            "num_threads": session.threads,
        }


def _named_details(interpreter: Any, names: dict[str, str]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Input and output tensor details by name: the signature's names (never the tensor order, which converters
    change, nor the tensor names, which they invent), renamed through the note's ``names`` where there is one;
    a file without a signature keeps its tensors' own names."""
    inputs: dict[str, dict]
    outputs: dict[str, dict]
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        # Copied out and the runner dropped: while it lives, invoke() refuses to run.
        inputs, outputs = dict(runner.get_input_details()), dict(runner.get_output_details())
        del runner
    else:
        inputs = {d["name"]: d for d in interpreter.get_input_details()}
        outputs = {d["name"]: d for d in interpreter.get_output_details()}
    return ({names.get(k, k): v for k, v in inputs.items()}, {names.get(k, k): v for k, v in outputs.items()})


def _spec(name: str, detail: dict, nchw: bool) -> TensorSpec:
    dims: list[int | str | None] = [int(d) if d > 0 else None for d in detail["shape_signature"]]
    if dims and dims[0] is None:
        dims[0] = "batch"
    dtype = np.dtype(detail["dtype"])
    quantized = dtype.kind in "iu" and detail["quantization"][0] != 0
    layout: Literal["NCHW", "NHWC"] | None
    if nchw:
        dims = [dims[0], dims[3], dims[1], dims[2]]
        layout = "NCHW"
    else:
        layout = "NHWC" if image_like(dims, channels_axis=3) else None
    # A quantized input still takes real values: run() quantizes them with the tensor's scale.
    return TensorSpec(name=name, dtype="float32" if quantized else dtype.name, shape=dims, layout=layout)


def _quantize(data: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind == "f" or not scale:  # float, or a plain integer input such as token ids
        return np.ascontiguousarray(data, dtype=dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(data / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(data: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.dtype(detail["dtype"]).kind == "f" or not scale:
        return as_output(data)
    return ((data.astype(np.float32) - zero_point) * scale).astype(np.float32)


_QDQ_OPS = ("QUANTIZE", "DEQUANTIZE")
_INTEGER_KINDS = ("int8", "uint8", "int16")


def op_list_profile(ops: list[dict], runs: int, mean_ms: float, interpreter: str) -> dict[str, Any]:
    """An ``OperatorProfile`` dict from the interpreter's op list (``_get_ops_details()``: ``op_name`` and
    ``operand_types`` per op): op types counted, no per-op time; an op ran in float when its first operand is a
    float tensor. The XNNPACK delegate's own node (``DELEGATE``) is noted, not counted as an op."""
    nodes, delegates, integer = [], 0, False
    for op in ops:
        kinds = [np.dtype(kind).name for kind in op.get("operand_types", [])]
        if op["op_name"] == "DELEGATE":
            delegates += 1
            continue
        integer |= op["op_name"] in _QDQ_OPS or bool(kinds and kinds[0] in _INTEGER_KINDS)
        nodes.append(NodeTime(str(op["index"]), op["op_name"], None, bool(kinds) and kinds[0].startswith("float")))
    qdq = {name: sum(node.op_type == name for node in nodes) for name in _QDQ_OPS}
    notes = (
        [f"{interpreter}: {delegates} XNNPACK delegate node(s) ran part or all of the graph"]
        if delegates
        else [f"{interpreter}: no delegate, the builtin kernels ran every op"]
    )
    return summarize(
        "litert op list",
        nodes,
        0,
        quantized=integer,
        qdq_nodes=qdq,
        qdq_types=_QDQ_OPS,
        not_measured=f"per-op time not measured: {interpreter}'s Python Interpreter has no op profiler "
        "(only the C++ benchmark_model tool has --enable_op_profiling); op counts and types are the "
        "file's, the time is the whole inference",
        notes=notes,
        total_ms=mean_ms,
    )
