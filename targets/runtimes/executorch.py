"""ExecuTorch: runs .pte programs with its C++ runtime through the ``executorch.runtime`` Python bindings, on the
XNNPACK delegate where the program was lowered to it and on ExecuTorch's portable kernels elsewhere.

A program's method takes and returns tensors by position; a program ``convert.executorch`` wrote has a note
beside it with the model's signature (names, dtypes, symbolic axes) and the upper bound of each symbolic axis,
which ExecuTorch planned its memory for. A program without a note runs with positional names (``input_0``,
``output_0``, ...) and the sizes its method declares.

The Python bindings link libtorch (``executorch.extension.pybindings`` imports torch first to load it), so this
target, unlike the others, brings torch into the benchmark process: its runtime import holds libtorch's memory
(324 MB here), which the C++ runtime on a device does not carry (README, "ExecuTorch").
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecraft.core.formats.executorch import ProgramNote, read_note
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
from edgecraft.targets.feeds import Feeds, Layout
from edgecraft.targets.registry import register

METHOD = "forward"

# ExecuTorch's ScalarType codes (runtime/core/portable_type/scalar_type.h) as numpy dtype names.
SCALAR_TYPES = {
    0: "uint8",
    1: "int8",
    2: "int16",
    3: "int32",
    4: "int64",
    5: "float16",
    6: "float32",
    7: "float64",
    11: "bool",
}


@dataclass
class ExecuTorchSession:
    """The loaded method, its inputs' names and dtypes in the program's order, its outputs' names, and the upper
    bound of each (input, axis) the program was exported with."""

    method: Any
    input_names: list[str]
    input_dtypes: list[str]
    output_names: list[str]
    threads: int
    bounds: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # The most samples one call takes (the batch axis's bound), None where the program does not say.
    batch_bound: int | None = None
    path: Path | None = None  # read again (its instructions) only after the timed phases, by ``describe``


@register
class ExecuTorch(Target[ExecuTorchSession, NoOptions]):
    runtime = "executorch"
    devices = ("cpu", "arm")
    # The bindings' module, not the package: the worker imports it (libtorch with it) before it measures the load.
    python_modules = ("executorch.runtime",)

    def unavailable_reason(self, device: str) -> str | None:
        if device in self.devices and self.python_module is None:
            return "executorch is not installed (edgecraft[executorch]; on a device agent, edgecraft[agent-executorch])"
        return super().unavailable_reason(device)

    def device_reason(self, device: str) -> str | None:
        try:
            torch_found = importlib.util.find_spec("torch") is not None
        except ImportError:  # a finder that refuses torch outright (an agent kept free of it)
            torch_found = False
        if not torch_found:
            return (
                "ExecuTorch's Python bindings load libtorch, and torch is not installed (edgecraft[agent-executorch])"
            )
        return None

    def warm_up(self) -> None:
        """The bindings import torch: 30-65 s on an emulated aarch64 board (measured), which the agent's first
        ``verify``, inside an upload's request, would otherwise pay past a client's request timeout."""
        import executorch.runtime  # noqa: F401

    def verify(self, path: Path) -> None:
        """ExecuTorch's own check of a program's structure (``Verification.InternalConsistency``: every offset
        and index within the file), without loading a method."""
        from executorch.runtime import Runtime, Verification

        try:
            with _runtime_log():
                Runtime.get().load_program(path, verification=Verification.InternalConsistency)
        except RuntimeError as exc:
            raise ValueError(f"ExecuTorch refuses the program ({one_line(exc)}): truncated or corrupt") from None

    def load(self, path: Path, device: str, threads: int, options: NoOptions) -> ExecuTorchSession:
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime, Verification

        # The XNNPACK delegate's thread pool is the process's: sized here as the other runtimes size their intra-op
        # threads (the benchmark loads one session per process).
        with _runtime_log():
            portable_lib._unsafe_reset_threadpool(threads)
            program = Runtime.get().load_program(path, verification=Verification.InternalConsistency)
        if METHOD not in program.method_names:
            raise ValueError(f"{path.name} has no method {METHOD!r} (it has {', '.join(sorted(program.method_names))})")
        method = program.load_method(METHOD)
        note = read_note(path)
        signature = self._signature(path, method.metadata, note)
        return ExecuTorchSession(
            method,
            signature.input_names,
            [spec.dtype or "float32" for spec in signature.inputs],
            signature.output_names,
            threads,
            bounds=_bounds(signature, note),
            batch_bound=_batch_bound(signature, note),
            path=path,
        )

    def run_batches(
        self, session: ExecuTorchSession, inputs: Feeds, batch_size: int, layout: Layout | None = None
    ) -> list[Feeds]:
        """As every runtime does, in calls of at most the program's batch bound: the accuracy pass's batch (64 by
        default) is no reason to plan a program's memory for it."""
        bound = session.batch_bound
        return super().run_batches(session, inputs, min(batch_size, bound) if bound else batch_size, layout)

    def run(self, session: ExecuTorchSession, feeds: Feeds) -> Feeds:
        import torch

        for (name, axis), (axis_name, bound) in session.bounds.items():
            size = feeds[name].shape[axis]
            if size > bound:
                raise ValueError(
                    f"input {name!r} has {size} along {axis_name!r}; this program was exported for at most {bound} "
                    f"(convert.executorch {'max_batch' if axis_name == 'batch' else 'upper_bounds'})"
                )
        tensors = [
            torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype))
            for name, dtype in zip(session.input_names, session.input_dtypes)
        ]
        outputs = session.method.execute(tensors)
        return {name: as_output(value.numpy()) for name, value in zip(session.output_names, outputs)}

    def signature(self, path: Path) -> Signature:
        from executorch.runtime import Runtime

        with _runtime_log():
            method = Runtime.get().load_program(path).load_method(METHOD)
        return self._signature(path, method.metadata, read_note(path))

    def _signature(self, path: Path, meta: Any, note: ProgramNote) -> Signature:
        """The note's signature (checked against the method's arity), else positional names and declared sizes."""
        counts = meta.num_inputs(), meta.num_outputs()
        if note.signature is not None:
            noted = len(note.signature.inputs), len(note.signature.outputs)
            if noted != counts:
                raise ValueError(
                    f"{path.name}: its note names {noted[0]} inputs and {noted[1]} outputs, the program has "
                    f"{counts[0]} and {counts[1]}: the note belongs to another program"
                )
            return note.signature
        inputs = [_spec(f"input_{i}", meta.input_tensor_meta(i)) for i in range(counts[0])]
        outputs = [_spec(f"output_{i}", meta.output_tensor_meta(i)) for i in range(counts[1])]
        return Signature(inputs=inputs, outputs=outputs)

    def describe(self, session: ExecuTorchSession) -> dict[str, Any]:
        from importlib import metadata

        return {
            "executorch": metadata.version("executorch"),
            "threads": session.threads,
            "delegates": ", ".join(f"{name} x{count}" for name, count in _delegates(session).items())
            or "none (portable kernels only)",
        }

    def profile(
        self, path: Path, device: str, threads: int, options: NoOptions, feeds: list[Feeds], runs: int
    ) -> dict[str, Any]:
        """ExecuTorch's event tracer: a module loaded with ETDump on records every portable kernel call and, inside
        each XNNPACK delegate call, every XNNPACK operator with its time; its devtools ``Inspector`` reads the dump
        (no ETRecord needed for the names). Where the tracer fails, the program's instructions, counted, untimed."""
        try:
            return self._traced(path, threads, feeds, runs)
        except Exception as exc:  # noqa: BLE001 - the untimed op view still says what ran where
            return self._instructions(
                path, f"per-op time not measured: ExecuTorch's event tracer failed ({one_line(exc)})"
            )

    def _traced(self, path: Path, threads: int, feeds: list[Feeds], runs: int) -> dict[str, Any]:
        import tempfile
        import warnings

        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib

        with _runtime_log():
            portable_lib._unsafe_reset_threadpool(threads)
            module = portable_lib._load_for_executorch(str(path), enable_etdump=True, debug_buffer_size=0)
        session = self.load(path, "cpu", threads, NoOptions())
        session.method = _TracedMethod(module)
        for i in range(PROFILE_WARMUP + runs):
            self.run(session, feeds[i % len(feeds)])
        with tempfile.TemporaryDirectory(prefix="edgecraft-etdump-") as folder:
            dump = Path(folder) / "profile.etdp"
            module.write_etdump_result_to_file(str(dump))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "no ETRecord": the op names come from the dump itself
                events = Inspector(etdump_path=str(dump)).to_dataframe()
        nodes = []
        for index, event in enumerate(events.itertuples()):
            name = str(event.event_name)
            delegated = bool(event.is_delegated_op)
            if event.event_block_name != "Execute" or not (delegated or name.startswith(_PORTABLE_PREFIX)):
                continue  # Method::execute, DELEGATE_CALL and OPERATOR_CALL wrap the ops counted here
            times = list(event.raw)[PROFILE_WARMUP:]
            op_type = name.split(" #")[0] if delegated else f"portable {name.removeprefix(_PORTABLE_PREFIX)}"
            floating = not delegated or not _XNNPACK_INTEGER.search(name)
            nodes.append(NodeTime(f"{index}:{name}", op_type, sum(times), floating))
        quantized = any(_XNNPACK_INTEGER.search(node.op_type) for node in nodes)
        converts = sum(node.op_type.startswith("Convert") for node in nodes)
        return summarize(
            "executorch etdump",
            nodes,
            runs,
            quantized=quantized,
            qdq_nodes={"Convert": converts} if quantized else {},
            qdq_types=[node.op_type for node in nodes if node.op_type.startswith("Convert")],
            notes=[_instructions_note(_program_ops(path))],
        )

    def _instructions(self, path: Path, reason: str) -> dict[str, Any]:
        ops = _program_ops(path)
        nodes = [
            NodeTime(f"{kind}#{index}", kind, None, True)
            for kind, count in [*ops.get("delegates", {}).items(), *ops.get("kernels", {}).items()]
            for index in range(count)
        ]
        return summarize(
            "executorch program",
            nodes,
            0,
            quantized=False,
            qdq_nodes={},
            not_measured=reason,
            notes=[_instructions_note(ops)],
        )


# ETDump's names: a portable kernel's event prefix, and an XNNPACK operator computing on integers (QS8/QU8
# activations, QC8 per-channel weights, QD8 dynamically quantized inputs; X8: any 8-bit data moved).
_PORTABLE_PREFIX = "native_call_"
_XNNPACK_INTEGER = re.compile(r"\b(Q[SUCD]\d|X8)")


class _TracedMethod:
    """A module loaded with ETDump on, called as ``ExecuTorchSession.method`` is (``execute(tensors)``)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def execute(self, tensors: list[Any]) -> Any:
        return self.module.run_method(METHOD, tensors)


def _instructions_note(ops: dict[str, dict[str, int]]) -> str:
    if not ops:
        return "the program's instructions could not be read"
    delegates, kernels = ops.get("delegates", {}), ops.get("kernels", {})
    return (
        f"{sum(delegates.values())} delegate call(s) ({', '.join(delegates) or 'none'}); "
        f"{sum(kernels.values())} op(s) on ExecuTorch's portable kernels"
        + (f" ({', '.join(sorted(kernels))})" if kernels else "")
    )


def _spec(name: str, info: Any) -> TensorSpec:
    dims: list[int | str | None] = list(info.sizes())
    layout: Literal["NCHW"] | None = "NCHW" if image_like(dims, channels_axis=1) else None
    return TensorSpec(name=name, dtype=SCALAR_TYPES.get(int(info.dtype()), "float32"), shape=dims, layout=layout)


def _bounds(signature: Signature, note: ProgramNote) -> dict[tuple[str, int], tuple[str, int]]:
    """(input, axis) -> (axis name, upper bound) for every symbolic axis the note bounds."""
    bounds = {}
    for spec in signature.inputs:
        for axis, dim in enumerate(spec.shape or []):
            if isinstance(dim, str) and dim in note.upper_bounds:
                bounds[(spec.name, axis)] = (dim, note.upper_bounds[dim])
    return bounds


def _delegates(session: ExecuTorchSession) -> dict[str, int]:
    return _program_ops(session.path).get("delegates", {}) if session.path is not None else {}


def _batch_bound(signature: Signature, note: ProgramNote) -> int | None:
    names = {
        str(spec.shape[spec.batch_axis])
        for spec in signature.inputs
        if spec.shape and spec.batch_axis is not None and spec.batch_axis < len(spec.shape)
    }
    bounds = [note.upper_bounds[name] for name in names if name in note.upper_bounds]
    return min(bounds) if bounds else None


def _program_ops(path: Path) -> dict[str, dict[str, int]]:
    """The method's instructions, counted: delegate calls by backend, portable kernel calls by operator; {} when
    the program's serialised form cannot be read (a schema this executorch does not know)."""
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary

        pte = deserialize_pte_binary(path.read_bytes())
    except Exception:  # noqa: BLE001 - the op view is a courtesy: the program itself loaded
        return {}
    program = getattr(pte, "program", pte)
    plan = next((plan for plan in program.execution_plan if plan.name == METHOD), None)
    if plan is None:
        return {}
    delegates: dict[str, int] = {}
    kernels: dict[str, int] = {}
    for chain in plan.chains:
        for instruction in chain.instructions:
            arguments = instruction.instr_args
            kind = type(arguments).__name__
            if kind == "DelegateCall":
                backend = plan.delegates[arguments.delegate_index].id
                delegates[backend] = delegates.get(backend, 0) + 1
            elif kind == "KernelCall":
                operator = plan.operators[arguments.op_index]
                label = operator.name + (f".{operator.overload}" if operator.overload else "")
                kernels[label] = kernels.get(label, 0) + 1
    return {"delegates": delegates, "kernels": kernels}


@contextlib.contextmanager
def _runtime_log() -> Iterator[None]:
    """ExecuTorch's C++ log lines (its CPU probe, "Resetting threadpool to 1 threads") held back from the
    terminal: the runtime writes them to the process's stderr at its Info level, which its Python bindings cannot
    lower. They are written out after all when the block fails, where they may say why."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
