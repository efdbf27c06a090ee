"""OpenVINO: runs IR (or ONNX, converted to IR on export) on the CPU, GPU or NPU plugin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.targets.base import (
    PROFILE_WARMUP,
    Done,
    NodeTime,
    Requests,
    Target,
    as_output,
    image_like,
    summarize,
)
from edgecraft.targets.feeds import Feeds
from edgecraft.targets.registry import register

PLUGINS = {"cpu": "CPU", "arm": "CPU", "gpu": "GPU", "npu": "NPU"}


class OpenVinoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inference_precision: Literal["f32", "bf16", "f16", "plugin-default"] | None = Field(
        None,
        description="INFERENCE_PRECISION_HINT. Unset: f32, so that fp32 rows are fp32 (on CPUs with AMX or AVX-512 "
        "BF16 the CPU plugin otherwise runs fp32 IR in bf16), unless the IR names its own precision in its runtime "
        "options (quantize.nncf with float_precision: bf16 does, for the layers it keeps in float). The precision "
        "that actually ran is recorded.",
    )


@dataclass
class OpenVinoSession:
    """A compiled model, its one synchronous infer request, and per input the array its tensor shares memory with.

    Copying each batch into those arrays and calling ``infer()`` costs ~3 µs per call on one core; the convenient
    ``request.infer({0: inputs})`` (a new tensor and a dict of outputs per call) ~35 µs, which is most of a 50 µs
    int8 model's latency and would not be OpenVINO's.
    """

    compiled: Any
    request: Any
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    # What it was compiled from and with, for ``requests`` to compile the same model with more streams (the path,
    # not the read model: holding that would keep its weights mapped, counted in the session's memory).
    path: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)
    plugin: str = "CPU"


@register
class OpenVino(Target[OpenVinoSession, OpenVinoOptions]):
    runtime = "openvino"
    devices = tuple(PLUGINS)
    python_modules = ("openvino",)
    options_model = OpenVinoOptions

    def device_reason(self, device: str) -> str | None:
        import openvino

        available = openvino.Core().available_devices
        if not any(name.split(".")[0] == PLUGINS[device] for name in available):
            return f"OpenVINO has no {PLUGINS[device]} plugin device here (available: {', '.join(available)})"
        return None

    def export(self, source: Path, source_format: str, out_dir: Path) -> Path:
        if source_format == "openvino":
            return super().export(source, source_format, out_dir)
        import openvino

        target = out_dir / "model.xml"
        openvino.save_model(openvino.Core().read_model(str(source)), str(target), compress_to_fp16=False)
        return target

    def load(self, path: Path, device: str, threads: int, options: OpenVinoOptions) -> OpenVinoSession:
        return self._compile(path, device, threads, options)

    def _compile(
        self, path: Path, device: str, threads: int, options: OpenVinoOptions, perf_count: bool = False
    ) -> OpenVinoSession:
        """The compiled model as the benchmark measures it; with ``perf_count``, with performance counters on."""
        import openvino

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if perf_count:
            config["PERF_COUNT"] = True
        if PLUGINS[device] == "CPU":
            config["INFERENCE_NUM_THREADS"] = threads
        core = openvino.Core()
        model = core.read_model(str(path))
        precision = options.inference_precision or declared_precision(model) or "f32"
        if precision != "plugin-default":
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(model, PLUGINS[device], config)
        return OpenVinoSession(
            compiled, compiled.create_infer_request(), path=path, config=config, plugin=PLUGINS[device]
        )

    def run(self, session: OpenVinoSession, feeds: Feeds) -> Feeds:
        import openvino

        for name, value in feeds.items():
            buffer = session.inputs.get(name)
            if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
                buffer = session.inputs[name] = np.empty(value.shape, value.dtype)
            np.copyto(buffer, value)
            # Set on every call (~1 µs): a bound call (``bind``) may have given the request other tensors.
            session.request.set_tensor(name, openvino.Tensor(buffer, shared_memory=True))
        session.request.infer()
        return _outputs(session)

    def bind(self, session: OpenVinoSession, feeds: Feeds) -> Callable[[], Feeds]:
        """Tensors that share the feeds' memory, made once (benchmark_app's own way: its inputs are filled before
        the timed requests); each call hands them to the request and runs it."""
        import openvino

        # Contiguous and writeable (a shared tensor needs both; a memory-mapped sample is read-only), kept alive
        # by the closure.
        arrays = {name: np.require(value, requirements=["C", "W"]) for name, value in feeds.items()}
        tensors = {name: openvino.Tensor(array, shared_memory=True) for name, array in arrays.items()}
        request = session.request

        def call() -> Feeds:
            for name, tensor in tensors.items():
                request.set_tensor(name, tensor)
            assert arrays  # held while the tensors that share their memory are
            request.infer()
            return _outputs(session)

        return call

    def requests(self, session: OpenVinoSession, count: int, load: Callable[[], OpenVinoSession]) -> Requests:
        """OpenVINO's own multi-request API, as benchmark_app runs it in throughput mode: the model compiled once
        more with ``count`` streams (the session's threads each; its precision) and an ``AsyncInferQueue`` of
        ``count`` requests. Separate latency-hint compilations would not run side by side: each pins its one thread
        to the same first core (measured: two of them in two threads gave 98.5 inferences/s, one 97; unpinned 190)."""
        import openvino

        config = session.config | {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": count}
        if "INFERENCE_NUM_THREADS" in config:
            config["INFERENCE_NUM_THREADS"] = config["INFERENCE_NUM_THREADS"] * count
        core = openvino.Core()
        compiled = core.compile_model(core.read_model(str(session.path)), session.plugin, config)
        return _AsyncQueue(openvino.AsyncInferQueue(compiled, count), compiled)

    def profile(
        self, path: Path, device: str, threads: int, options: OpenVinoOptions, feeds: list[Feeds], runs: int
    ) -> dict[str, Any]:
        """OpenVINO's performance counters (``PERF_COUNT``) on a model compiled for them: each executed node's
        real time, read after every profiled inference (the counters hold the last one only), and its exec type,
        whose suffix is the precision it computed in (``brgconv_avx512_1x1_I8``, ``jit_avx2_f32``)."""
        import openvino

        session = self._compile(path, device, threads, options, perf_count=True)
        for i in range(PROFILE_WARMUP):
            self.run(session, feeds[i % len(feeds)])
        counters = []
        for i in range(runs):
            self.run(session, feeds[i % len(feeds)])
            counters.append(session.request.get_profiling_info())
        ops = [op.get_type_name() for op in openvino.Core().read_model(str(path)).get_ordered_ops()]
        return parse_counters(
            counters,
            fake_quantize=ops.count("FakeQuantize"),
            precision=session.compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        )

    def signature(self, path: Path) -> Signature:
        import openvino

        model = openvino.Core().read_model(str(path))
        return Signature(inputs=[_spec(port) for port in model.inputs], outputs=[_spec(port) for port in model.outputs])

    def describe(self, session: OpenVinoSession) -> dict[str, Any]:
        import openvino

        compiled = session.compiled
        return {
            "openvino": openvino.__version__,
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "execution_devices": list(compiled.get_property("EXECUTION_DEVICES")),
            "threads": compiled.get_property("INFERENCE_NUM_THREADS"),
            "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
            "streams": compiled.get_property("NUM_STREAMS"),
        }


class _AsyncQueue(Requests):
    """An ``AsyncInferQueue`` whose callback hands each request's end to the ``done`` it was started with.

    Inputs are checked against the model's ports before they are started: the queue reports a request that fails
    only from ``wait_all`` and never calls its callback (openvino 2026.0; a later ``start_async`` raises instead),
    so a refused input must be caught here, where its ``done`` can still be called."""

    def __init__(self, infer_queue: Any, compiled: Any) -> None:
        self._queue = infer_queue
        self._queue.set_callback(_ended)
        self._ports = {
            name: (port.get_partial_shape(), port.get_element_type()) for port in compiled.inputs for name in port.names
        }

    def start(self, feeds: Feeds, done: Done) -> None:
        import openvino

        for name, value in feeds.items():
            shape, element_type = self._ports.get(name, (None, None))
            if shape is None:
                done(ValueError(f"the model has no input {name!r} (inputs: {', '.join(sorted(self._ports))})"))
                return
            if not shape.compatible(openvino.PartialShape(list(value.shape))) or element_type.to_dtype() != value.dtype:
                done(ValueError(f"input {name!r}: {value.dtype}{list(value.shape)} does not fit {element_type}{shape}"))
                return
        self._queue.start_async(feeds, userdata=done)

    def close(self) -> None:
        self._queue.wait_all()


def _ended(request: Any, done: Done) -> None:
    done(None)


_INTEGER = ("i8", "u8", "i4", "u4", "int8", "uint8")
_FLOAT = ("f32", "fp32", "bf16", "f16", "fp16")


# Where an IR names the precision its float ops should run in (OpenVINO reads it as a compile option).
PRECISION_RT_INFO = ["runtime_options", "INFERENCE_PRECISION_HINT"]


def declared_precision(model: Any) -> str | None:
    """The inference precision an IR's runtime options name, e.g. bf16 for an int8 model whose float layers were
    chosen to run in bf16; None when it names none."""
    return model.get_rt_info(PRECISION_RT_INFO).astype(str) if model.has_rt_info(PRECISION_RT_INFO) else None


def exec_precision(exec_type: str) -> str | None:
    """The precision a CPU-plugin exec type names in its last part (``jit_avx2_1x1_I8`` → i8), else None."""
    last = exec_type.rsplit("_", 1)[-1].lower()
    return last if last in _INTEGER or last in _FLOAT else None


def parse_counters(counters: list[list[Any]], fake_quantize: int, precision: str = "") -> dict[str, Any]:
    """An ``OperatorProfile`` dict from one ``get_profiling_info()`` list per profiled inference (items with
    ``node_name``, ``node_type``, ``exec_type``, ``real_time``, ``status``); executed nodes only."""
    nodes, integer = [], False
    for infos in counters:
        for info in infos:
            if info.status != info.Status.EXECUTED:
                continue
            kind = exec_precision(info.exec_type)
            integer |= kind in _INTEGER
            nodes.append(NodeTime(info.node_name, info.node_type, info.real_time.total_seconds() * 1e3, kind in _FLOAT))
    notes = [f"inference precision {precision}"] if precision else []
    return summarize(
        "openvino performance counters",
        nodes,
        len(counters),
        quantized=integer or fake_quantize > 0,
        qdq_nodes={"FakeQuantize": fake_quantize},
        qdq_types=("FakeQuantize",),
        notes=notes,
    )


def _spec(port: Any) -> TensorSpec:
    """A model port as a signature entry; OpenVINO calls a dynamic dimension '?', we keep it symbolic."""
    shape = port.get_partial_shape()
    dims = (
        [dim.get_length() if dim.is_static else ("batch" if axis == 0 else None) for axis, dim in enumerate(shape)]
        if shape.rank.is_static
        else None
    )
    dtype = port.get_element_type().to_dtype().name if port.get_element_type().is_static() else None
    return TensorSpec(
        name=port.get_any_name(), dtype=dtype, shape=dims, layout="NCHW" if image_like(dims, channels_axis=1) else None
    )


def _outputs(session: OpenVinoSession) -> Feeds:
    """Every output under every name its port has: converters add names (an fp16 IR's output is both 'logits' and
    'graph_output_cast_0'), and which one get_any_name() returns differs between the read and compiled model."""
    outputs: Feeds = {}
    for output in session.compiled.outputs:
        value = as_output(session.request.get_tensor(output).data)
        outputs.update(dict.fromkeys(sorted(output.get_names()), value))
    return outputs
