"""LiteRT (TFLite): runs .tflite files with ai-edge-litert, or the legacy tflite-runtime where only that exists.

Inputs and outputs are matched by the file's signature names. A file converted by ``convert.tflite`` has a note
beside it with the model's own names for them, the NCHW image inputs, which the file takes as NHWC, and the
outputs the file gives channels-last (an NCHW output as NHWC): ``run`` transposes those inputs and moves those
outputs' channels back to axis 1, so that one evaluation set serves all runtimes and outputs compare with the
model's. A native file has no note and runs as it is.
Quantized inputs and outputs are (de)quantized with their tensor's scale.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecraft.core.formats.tflite import read_io_note
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.targets.base import (
    PROFILE_WARMUP,
    NodeTime,
    NoOptions,
    Target,
    as_output,
    image_like,
    one_line,
    summarize,
)
from edgecraft.targets.feeds import Feeds
from edgecraft.targets.registry import register


@dataclass
class LiteRtSession:
    """The interpreter, its inputs and outputs by name, the inputs to transpose from NCHW and the outputs whose
    channels go back from the last axis to axis 1."""

    interpreter: Any
    threads: int
    inputs: dict[str, dict]
    outputs: dict[str, dict]
    nchw_inputs: frozenset[str]
    names: dict[str, str]
    channels_last_outputs: frozenset[str] = frozenset()
    # Why the default XNNPACK delegate was not used (the file runs on the built-in kernels), or None when it was.
    xnnpack_refused: str | None = None


@register
class LiteRt(Target[LiteRtSession, NoOptions]):
    runtime = "litert"
    devices = ("cpu", "arm", "gpu")
    python_modules = ("ai_edge_litert", "tflite_runtime")

    def device_reason(self, device: str) -> str | None:
        if device == "gpu":
            return "the LiteRT GPU delegate is not part of the Python wheels; run GPU rows with a device build"
        return None

    def _interpreter(self, path: Path, threads: int | None = None, delegates: bool = True) -> Any:
        """An interpreter of ``path``; ``delegates=False`` runs the built-in kernels only (no default XNNPACK)."""
        module = importlib.import_module(f"{self.python_module}.interpreter")
        if delegates:
            # XNNPACK is LiteRT's default CPU delegate; num_threads sizes its thread pool.
            return module.Interpreter(model_path=str(path), num_threads=threads)
        return module.Interpreter(
            model_path=str(path),
            num_threads=threads,
            experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )

    def _allocated(self, path: Path, threads: int, delegates: bool) -> Any:
        interpreter = self._interpreter(path, threads, delegates)
        interpreter.allocate_tensors()  # where the default delegate is applied (and can fail to prepare)
        return interpreter

    def load(self, path: Path, device: str, threads: int, options: NoOptions) -> LiteRtSession:
        """The file on the default XNNPACK delegate; where XNNPACK refuses it (e.g. ``failed to create XNNPACK
        runtime``, seen on full-integer files), on the built-in kernels only, which ``describe`` records. When
        neither loads, the error names the op(s) the messages point at and what to try."""
        refused = None
        try:
            interpreter = self._allocated(path, threads, delegates=True)
        except Exception as delegate_error:  # noqa: BLE001 - any delegate failure: try the built-in kernels
            refused = one_line(delegate_error)
            try:
                interpreter = self._allocated(path, threads, delegates=False)
            except Exception as builtin_error:
                raise RuntimeError(self._load_failure(path, delegate_error, builtin_error)) from builtin_error
        note = read_io_note(path)
        inputs, outputs = _named_details(interpreter, note.names)
        return LiteRtSession(
            interpreter,
            threads,
            inputs,
            outputs,
            note.nchw_inputs,
            note.names,
            note.channels_last_outputs,
            refused,
        )

    def _load_failure(self, path: Path, delegate_error: BaseException, builtin_error: BaseException) -> str:
        """Both loads' messages, the ops their node numbers point at, and what to do."""
        ops = self._ops(path)
        named = name_nodes(f"{delegate_error}\n{builtin_error}", ops)
        where = f" {'; '.join(named)}." if named else ""
        return (
            f"{self._interpreter_version()} cannot load {path.name}, with the XNNPACK delegate or with its built-in "
            f"kernels only.{where} What to do: keep the named op(s) in float (convert.tflite with quantization "
            "dynamic or float16, or a model without that op), or try a newer ai-edge-litert if the converter wrote "
            "an op version this interpreter does not know.\n"
            f"With XNNPACK: {str(delegate_error).strip()}\n"
            f"With the built-in kernels only: {str(builtin_error).strip()}"
        )

    def _ops(self, path: Path) -> list[dict]:
        """The file's ops in node order (``_get_ops_details()`` of an interpreter without delegates, which is not
        allocated, so a file whose kernels fail to prepare still lists them); [] when not even that builds."""
        try:
            return list(self._interpreter(path, delegates=False)._get_ops_details())
        except Exception:  # noqa: BLE001 - naming the op is a courtesy; the load error is raised anyway
            return []

    def run(self, session: LiteRtSession, feeds: Feeds) -> Feeds:
        return self._invoke(session, _in_file_layout(session, feeds))

    def bind(self, session: LiteRtSession, feeds: Feeds) -> Callable[[], Feeds]:
        """The inputs in the file's layout and dtype (channels last, quantized) once, as a deployed caller holds
        them: each call sets them (a copy into the interpreter's buffers) and invokes."""
        converted = _in_file_layout(session, feeds)
        return lambda: self._invoke(session, converted)

    def _invoke(self, session: LiteRtSession, converted: Feeds) -> Feeds:
        interpreter = session.interpreter
        resized = False
        for name, data in converted.items():
            detail = session.inputs[name]
            if tuple(detail["shape"]) != data.shape:
                fixed = [int(d) for d in detail["shape_signature"]]
                if len(fixed) != data.ndim or any(f > 0 and f != n for f, n in zip(fixed, data.shape)):
                    # Checked before resizing: a failed resize would leave the interpreter unusable.
                    raise ValueError(f"input {name!r} has a fixed shape {fixed} in this file; got {list(data.shape)}")
                interpreter.resize_tensor_input(detail["index"], list(data.shape))
                resized = True
        if resized:
            interpreter.allocate_tensors()
            session.inputs, session.outputs = _named_details(interpreter, session.names)
        for name, data in converted.items():
            interpreter.set_tensor(session.inputs[name]["index"], data)
        interpreter.invoke()
        results = {}
        for name, detail in session.outputs.items():
            result = _dequantize(interpreter.get_tensor(detail["index"]), detail)
            if name in session.channels_last_outputs:
                result = np.ascontiguousarray(np.moveaxis(result, -1, 1))  # NHWC back to NCHW, as the model gives it
            results[name] = result
        return results

    def signature(self, path: Path) -> Signature:
        """The file's inputs and outputs by signature name; an input noted as converted from NCHW is given NCHW,
        the way the data feeds it, and a native NHWC input stays NHWC; an output noted as channels-last is given
        channels-first, the way ``run`` returns it."""
        note = read_io_note(path)
        inputs, outputs = _named_details(self._interpreter(path), note.names)
        return Signature(
            inputs=[_spec(name, detail, name in note.nchw_inputs) for name, detail in inputs.items()],
            outputs=[
                _output_spec(name, detail, name in note.channels_last_outputs) for name, detail in outputs.items()
            ],
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

    def warnings(self, runtime_info: dict[str, Any]) -> list[str]:
        """A file XNNPACK refused ran on the built-in kernels only: its latency is not XNNPACK's."""
        delegate = runtime_info.get("delegate")
        if isinstance(delegate, str) and delegate.startswith(XNNPACK_REFUSED):
            return [
                f"XNNPACK refused this file; LiteRT ran it on its built-in kernels (slower than XNNPACK): {delegate}"
            ]
        return []

    def describe(self, session: LiteRtSession) -> dict[str, Any]:
        refused = session.xnnpack_refused
        return {
            "interpreter": self._interpreter_version(),
            "input_dtype": ", ".join(sorted({np.dtype(d["dtype"]).name for d in session.inputs.values()})),
            "num_threads": session.threads,
            "delegate": f"{XNNPACK_REFUSED}: {refused})" if refused is not None else "XNNPACK (default)",
        }


# How ``describe`` begins its "delegate" fact when XNNPACK refused the file and the built-in kernels run it.
XNNPACK_REFUSED = "none (XNNPACK refused"

_NODE = re.compile(r"Node number (\d+)(?: \(([^)]*)\))?")


def name_nodes(message: str, ops: list[dict]) -> list[str]:
    """Each ``Node number N (...)`` of an interpreter's error ``message``, said as the op it is: node N is the
    file's op N (``ops`` is ``_get_ops_details()`` of an interpreter without delegates: node order); a number past
    the file's ops is a node a delegate added, standing for the group of ops it took over."""
    named: list[str] = []
    for match in _NODE.finditer(message):
        index, label = int(match.group(1)), match.group(2)
        if index < len(ops):
            op = ops[index]
            operands = ", ".join(np.dtype(kind).name for kind in op.get("operand_types", []))
            results = ", ".join(np.dtype(kind).name for kind in op.get("result_types", []))
            text = f"Node {index} is op {op['op_name']} ({operands} → {results})"
        elif ops:
            text = (
                f"Node {index} is {label or 'a delegate'}'s own node (the file has {len(ops)} ops, 0–{len(ops) - 1}): "
                "the group of ops the delegate took over failed to prepare"
            )
        else:
            text = f"Node {index} ({label or 'unknown op'})"
        if text not in named:
            named.append(text)
    return named


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
    if not quantized:
        return TensorSpec(name=name, dtype=dtype.name, shape=dims, layout=layout)
    # A quantized input still takes real values: run() quantizes them with the tensor's scale. Values drawn for
    # it span what the integers can represent (pixels 0-255 for a scale of 1 and a zero point of -128), not [0, 1].
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    real = (float(scale * (info.min - zero_point)), float(scale * (info.max - zero_point)))
    return TensorSpec(name=name, dtype="float32", shape=dims, layout=layout, range=real)


def _output_spec(name: str, detail: dict, channels_last: bool) -> TensorSpec:
    """An output's spec; one the file gives channels-last has its last axis moved to axis 1, as ``run`` does."""
    spec = _spec(name, detail, False)
    if not channels_last or len(spec.shape or []) < 3:
        return spec
    dims = list(spec.shape or [])
    dims = [dims[0], dims[-1], *dims[1:-1]]
    layout: Literal["NCHW"] | None = "NCHW" if image_like(dims, channels_axis=1) else None
    return TensorSpec(name=name, dtype=spec.dtype, shape=dims, layout=layout)


def _in_file_layout(session: LiteRtSession, feeds: Feeds) -> Feeds:
    """The feeds as the file takes them: NCHW images channels last, quantized where its inputs are integers (a
    resize keeps an input's dtype and quantization, so these stand for any batch size)."""
    converted = {}
    for name, value in feeds.items():
        data = np.transpose(value, (0, 2, 3, 1)) if name in session.nchw_inputs else value
        converted[name] = _quantize(data, session.inputs[name])
    return converted


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
