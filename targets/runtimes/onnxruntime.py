"""ONNX Runtime: runs the ONNX file as it is, with the execution provider that matches the device."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.targets.base import PROFILE_WARMUP, NodeTime, NoOptions, Target, as_output, image_like, summarize
from edgecraft.targets.feeds import Feeds
from edgecraft.targets.registry import register

PROVIDERS = {"cpu": "CPUExecutionProvider", "arm": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@register
class OnnxRuntime(Target[Any, NoOptions]):
    runtime = "onnxruntime"
    devices = tuple(PROVIDERS)
    python_modules = ("onnxruntime",)

    def device_reason(self, device: str) -> str | None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        if PROVIDERS[device] not in available:
            return f"onnxruntime offers no {PROVIDERS[device]} here (available: {', '.join(available)})"
        return None

    def load(self, path: Path, device: str, threads: int, options: NoOptions) -> Any:
        return self._open(path, device, threads)

    def _open(self, path: Path, device: str, threads: int, profile_prefix: str | None = None) -> Any:
        """A session as the benchmark measures it; with ``profile_prefix``, with the profiler writing there."""
        import onnxruntime

        session_options = onnxruntime.SessionOptions()
        if profile_prefix is not None:
            session_options.enable_profiling = True
            session_options.profile_file_prefix = profile_prefix
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), session_options, providers=[PROVIDERS[device]])
        # ONNX Runtime falls back to the CPU, with only a log line, when a GPU provider fails to initialise
        # (e.g. a missing CUDA library): that row would be a CPU measurement labelled GPU.
        if session.get_providers()[0] != PROVIDERS[device]:
            raise RuntimeError(f"{PROVIDERS[device]} did not initialise; the session runs on {session.get_providers()}")
        return session

    def run(self, session: Any, feeds: Feeds) -> Feeds:
        names = [output.name for output in session.get_outputs()]
        return {name: as_output(value) for name, value in zip(names, session.run(names, feeds))}

    def signature(self, path: Path) -> Signature:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return Signature(
            inputs=[_spec(arg) for arg in session.get_inputs()], outputs=[_spec(arg) for arg in session.get_outputs()]
        )

    def profile(
        self, path: Path, device: str, threads: int, options: NoOptions, feeds: list[Feeds], runs: int
    ) -> dict[str, Any]:
        """ONNX Runtime's own profiler (``SessionOptions.enable_profiling``) on a session of its own: the JSON trace
        of every node's kernel time, the warm-up runs cut off by their ``model_run`` windows."""
        with tempfile.TemporaryDirectory(prefix="edgecraft-ort-profile-") as folder:
            session = self._open(path, device, threads, profile_prefix=str(Path(folder) / "ort"))
            for i in range(PROFILE_WARMUP + runs):
                self.run(session, feeds[i % len(feeds)])
            trace = json.loads(Path(session.end_profiling()).read_text())
        return parse_profile(trace, runs, session.get_providers()[0])

    def describe(self, session: Any) -> dict[str, Any]:
        import onnxruntime

        options = session.get_session_options()
        return {
            "providers": session.get_providers(),
            "onnxruntime": onnxruntime.__version__,
            "intra_op_threads": options.intra_op_num_threads,
            "inter_op_threads": options.inter_op_num_threads,
        }


# Ops that (de)quantize: counted as Q/DQ nodes, never as "float ops inside an int8 model".
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_FLOAT_TYPES = ("float", "float16", "double", "bfloat16")


def _integer_kernel(op_type: str, input_types: list[str]) -> bool:
    """A kernel that computes on integers: ORT's fused QDQ groups (QLinearConv, QGemm...), the dynamic
    quantizer's ConvInteger / MatMulInteger, or any compute op fed 8-bit tensors."""
    return (
        op_type.startswith(("QLinear", "QGemm", "QAttention", "QEmbed"))
        or "Integer" in op_type
        or any(kind in ("int8", "uint8") for kind in input_types)
    )


def parse_profile(trace: list[dict], runs: int, provider: str = "CPUExecutionProvider") -> dict[str, Any]:
    """An ``OperatorProfile`` dict from ONNX Runtime's profiler trace (a list of Chrome-trace events): the node
    events (``cat: Node``, ``*_kernel_time``) of the last ``runs`` ``model_run`` windows, by the node's
    ``op_name``; a node ran in float when its first input is a float tensor."""
    windows = sorted(
        (event["ts"], event["ts"] + event["dur"])
        for event in trace
        if event.get("cat") == "Session" and event.get("name") == "model_run"
    )
    kept = windows[-runs:] if runs > 0 else []
    start = kept[0][0] if kept else float("inf")
    nodes: list[NodeTime] = []
    qdq: dict[str, set[str]] = {}
    integer = False
    for event in trace:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < start:
            continue
        args = event.get("args", {})
        op_type = args.get("op_name", "?")
        input_types = [kind for entry in args.get("input_type_shape", []) for kind in entry]
        name = event["name"][: -len("_kernel_time")]
        # The first input is the data a kernel computes on (a QLinearConv's float scales come later).
        floating = bool(input_types) and input_types[0] in _FLOAT_TYPES
        nodes.append(NodeTime(name, op_type, event["dur"] / 1000.0, floating))
        if op_type in QDQ_OPS:
            qdq.setdefault(op_type, set()).add(name)
        elif _integer_kernel(op_type, input_types):
            integer = True
    return summarize(
        "onnxruntime profiler",
        nodes,
        len(kept),
        quantized=bool(qdq) or integer,
        qdq_nodes={op: len(names) for op, names in qdq.items()},
        qdq_types=QDQ_OPS,
        notes=[f"execution provider {provider}; nodes after ONNX Runtime's graph fusions"],
        not_measured=None if kept else "the profiler trace holds no model_run event",
    )


# ONNX Runtime's type strings for the element types a model input or output can have.
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _spec(arg: Any) -> TensorSpec:
    shape = [dim if isinstance(dim, int) else (dim or None) for dim in arg.shape]
    return TensorSpec(
        name=arg.name,
        dtype=_DTYPES.get(arg.type),
        shape=shape,
        layout="NCHW" if image_like(shape, channels_axis=1) else None,
    )
