"""Cross-checks of the harness against outside references, each printing its figure and exiting 1 when it is out
of bounds. Run from the repository root, pinned to a quiet CPU (``taskset -c 1``):

    python -m benchmarks.crosscheck benchmark-app   # our median / OpenVINO benchmark_app's, fp32 and int8 IR
    python -m benchmarks.crosscheck cv              # CV of the headline median over five repeated benches
    python -m benchmarks.crosscheck overhead        # harness median / bare session.run (or infer()) loop median
    python -m benchmarks.crosscheck memory          # our model memory + runtime import / a bare process's peak
    python -m benchmarks.crosscheck profiling       # harness median with the operator profile on / off
    python -m benchmarks.crosscheck resolution      # how fine an agreement budget the evaluation data resolves

The models are the built-in reference variants (``benchmarks.reference``), built on first use.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.reference import DEFAULT_FOLDER, VARIANTS, Reference, build
from edgecraft.bench.evaluators import EvaluatorSpec, evaluate
from edgecraft.bench.harness import MeasureJob, measure
from edgecraft.bench.settings import profile_settings
from edgecraft.bench.stats import coefficient_of_variation
from edgecraft.bench.worker import run_phase
from edgecraft.targets import registry


def _job(reference: Reference, work_dir: Path) -> MeasureJob:
    outputs = reference.reference_outputs()
    spec = EvaluatorSpec(type="agreement" if reference.labels is None else "classification")
    return MeasureJob(
        reference.runtime,
        "cpu",
        {},
        reference.path,
        reference.inputs,
        outputs,
        lambda out: evaluate(spec, out, outputs, reference.labels),
        work_dir,
    )


def _run_benchmark_app(xml: Path, shape: tuple[int, ...], seconds: float, *options: str) -> str:
    """OpenVINO's benchmark_app on ``xml`` on the CPU at input ``shape`` for ``seconds``, with ``options``; what it
    printed (the check exits, with its output, when it fails)."""
    command = [
        str(Path(sys.executable).with_name("benchmark_app")),
        *("-m", str(xml), "-d", "CPU", *options),
        *("-data_shape", str(list(shape)).replace(" ", ""), "-t", f"{seconds:g}"),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.exit(f"benchmark_app failed ({completed.returncode}): {(completed.stdout + completed.stderr)[-800:]}")
    return completed.stdout


def _benchmark_app_median_ms(xml: Path, shape: tuple[int, ...], threads: int, seconds: float, folder: Path) -> float:
    """benchmark_app's median latency with the settings the OpenVINO target compiles with: latency hint, one
    stream, ``threads`` inference threads, f32 precision, one synchronous request."""
    config = folder / "benchmark_app.json"
    config.write_text(
        json.dumps(
            {
                "CPU": {
                    "PERFORMANCE_HINT": "LATENCY",
                    "NUM_STREAMS": "1",
                    "INFERENCE_NUM_THREADS": str(threads),
                    "INFERENCE_PRECISION_HINT": "f32",
                }
            }
        )
    )
    output = _run_benchmark_app(xml, shape, seconds, "-api", "sync", "-load_config", str(config))
    match = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", output)
    if not match:
        sys.exit(f"benchmark_app printed no median: {output[-800:]}")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value


def benchmark_app(args: argparse.Namespace) -> int:
    """Our median vs benchmark_app's on the same IR with the same threads and hints, in many short alternating
    rounds so that drift of the machine hits both alike; the median of the per-round ratios must be within ±5 % for
    a model of 1 ms or more, ±10 % below."""
    references = build(args.model, args.folder, ["ov-fp32", "ov-int8"])
    settings = profile_settings(
        "default",
        repetitions=1,
        threads=args.threads,
        measure_s=args.seconds,
        max_s=args.seconds * 2,
        throughput_s=0,
        batch_sizes=[1],
    )
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, reference in references.items():
            shape = (1, *reference.evaluation_inputs.shape[1:])
            ours, theirs = [], []
            for round_ in range(args.rounds):
                ours.append(measure(_job(reference, Path(tmp) / f"{name}-{round_}"), settings).latency_ms.p50)
                theirs.append(_benchmark_app_median_ms(reference.path, shape, args.threads, args.seconds, Path(tmp)))
                print(
                    f"  {name} round {round_ + 1}: ours {ours[-1]:.4f} ms, benchmark_app {theirs[-1]:.4f} ms, "
                    f"ratio {ours[-1] / theirs[-1]:.3f}"
                )
            ratio = float(np.median(np.array(ours) / np.array(theirs)))
            # ±5 % from 1 ms up; below, a Python call's fixed few tens of µs are a larger share: ±10 %.
            bound = 0.05 if np.median(theirs) >= 1.0 else 0.10
            ok = abs(ratio - 1) <= bound
            failed |= not ok
            print(
                f"{args.model} {name}: ours {np.median(ours):.4f} ms, benchmark_app {np.median(theirs):.4f} ms "
                f"(medians over {args.rounds} rounds); median ratio ours / benchmark_app = {ratio:.3f} "
                f"({'ok' if ok else 'OUTSIDE'} ±{100 * bound:g} %); quietest rounds: {min(ours):.4f} / "
                f"{min(theirs):.4f} ms = {min(ours) / min(theirs):.3f}, ours − theirs = "
                f"{1000 * (min(ours) - min(theirs)):+.1f} µs"
            )
    return 1 if failed else 0


def cv(args: argparse.Namespace) -> int:
    """The same bench (``--profile``, default: the default profile with its 3 process repetitions) repeated
    ``--repeats`` times: the coefficient of variation of its headline medians must be at most 5 %."""
    reference = build(args.model, args.folder, [args.variant])[args.variant]
    settings = profile_settings(args.profile, threads=args.threads, batch_sizes=[1])
    medians = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            medians.append(measure(_job(reference, Path(tmp) / str(repeat)), settings).latency_ms.p50)
            print(f"  bench {repeat + 1}: median {medians[-1]:.4f} ms")
    variation = coefficient_of_variation(medians)
    print(
        f"{args.variant} on {reference.runtime}, {args.profile} profile: {args.repeats} benches, medians "
        f"{min(medians):.4f}–{max(medians):.4f} ms, CV {100 * variation:.2f} % "
        f"({'ok' if variation <= 0.05 else 'OVER'} 5 %)"
    )
    return 0 if variation <= 0.05 else 1


def overhead(args: argparse.Namespace) -> int:
    """The harness's timed loop (the worker's ``run_phase`` around ``Target.bind``'s calls) against a bare loop on
    the same session, alternating short blocks; medians within 5 %. Bare means ``session.run(None, feed)`` for ONNX
    Runtime, the interpreter's ``set_tensor`` + ``invoke`` + ``get_tensor`` for LiteRT, ``request.infer()`` on an
    input tensor set once for OpenVINO (which also reports the request's own
    ``latency``, the figure benchmark_app prints)."""
    reference = build(args.model, args.folder, [args.variant])[args.variant]
    target = registry.get(reference.runtime)
    session = target.load(reference.path, "cpu", args.threads, target.options_model())
    singles = reference.feeds()
    runtime_latency: list[float] = []
    if reference.runtime == "onnxruntime":

        def bare_call(i: int) -> None:
            session.run(None, singles[i % len(singles)])
    elif reference.runtime == "litert":
        # What a caller of the bare interpreter does: its inputs already in the file's layout (channels last),
        # set, invoke, read every output.
        interpreter = session.interpreter
        inputs = [
            {
                detail["index"]: np.ascontiguousarray(
                    np.transpose(single[name], (0, 2, 3, 1)) if name in session.nchw_inputs else single[name]
                )
                for name, detail in session.inputs.items()
            }
            for single in singles
        ]
        outputs = [detail["index"] for detail in session.outputs.values()]

        def bare_call(i: int) -> None:
            for index, value in inputs[i % len(inputs)].items():
                interpreter.set_tensor(index, value)
            interpreter.invoke()
            for index in outputs:
                interpreter.get_tensor(index)
    else:
        target.run(session, singles[0])  # sets the request's input tensor

        def bare_call(i: int) -> None:
            session.request.infer()
            runtime_latency.append(session.request.latency)

    bound = [target.bind(session, single) for single in singles]  # as the worker's timed loop binds its ring

    def harness_block() -> list[int]:
        samples, _, _ = run_phase(lambda i: bound[i % len(bound)](), args.runs, 0, args.runs, 1e9)
        return samples

    def bare_block() -> list[int]:
        samples = []
        for i in range(args.runs):
            start = time.perf_counter_ns()
            bare_call(i)
            samples.append(time.perf_counter_ns() - start)
        return samples

    gc.disable()  # as in the worker's timed phases
    harness_block(), bare_block()  # warm-up
    ours, bare = [], []
    runtime_latency.clear()
    for _ in range(args.rounds):
        ours += harness_block()
        bare += bare_block()
    gc.enable()
    ratio = float(np.median(ours) / np.median(bare))
    ok = abs(ratio - 1) <= 0.05
    what = {"onnxruntime": "session.run", "litert": "set_tensor + invoke + get_tensor"}.get(
        reference.runtime, "request.infer()"
    )
    print(
        f"{args.model} {args.variant}: harness median {np.median(ours) / 1e3:.2f} µs, bare {what} median "
        f"{np.median(bare) / 1e3:.2f} µs over {args.rounds} × {args.runs} alternating runs each: overhead "
        f"{100 * (ratio - 1):+.2f} % ({'ok' if ok else 'OVER'} ±5 %)"
    )
    if runtime_latency:
        print(
            f"  OpenVINO's own request.latency median {1e3 * np.median(runtime_latency):.2f} µs: a bare infer() "
            f"call takes {np.median(bare) / 1e3 - 1e3 * np.median(runtime_latency):.1f} µs more than it reports"
        )
    return 0 if ok else 1


def loadgen(args: argparse.Namespace) -> int:
    """LoadGen's scenarios against the harness's own figures for the same row, in the same process: SingleStream's
    90th percentile against the timed phase's p90, Offline's samples/s against the best batched throughput of the
    throughput pass (same sessions, same batch sizes); each within 10 %."""
    settings = profile_settings(
        "default",
        repetitions=1,
        threads=args.threads,
        batch_sizes=[1, 8],
        throughput_s=args.seconds,
        measure_s=args.seconds,
        operator_profile=False,
        scenarios=["single_stream", "offline"],
        scenario_min_duration_s=args.seconds,
    )
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, reference in build(args.model, args.folder, args.variants).items():
            measured = measure(_job(reference, Path(tmp) / name), settings)
            scenarios = {result.scenario: result for result in measured.scenarios}
            single, offline = scenarios["single_stream"], scenarios["offline"]
            batched = max(t.items_per_s or 0 for t in measured.throughput)
            pairs = [
                ("SingleStream p90 / harness p90", single.value, measured.latency_ms.p90, "ms"),
                ("Offline / best batched throughput", offline.value, batched, "samples/s"),
            ]
            valid = bool(single.valid and offline.valid)
            for what, theirs, ours, unit in pairs:
                ratio = (theirs or 0) / ours
                ok = abs(ratio - 1) <= 0.10 and valid
                failed |= not ok
                print(
                    f"{args.model} {name}: {what} = {theirs:.4g} / {ours:.4g} {unit} = {ratio:.3f} "
                    f"({'ok' if ok else 'OUTSIDE'} ±10 %; LoadGen {'VALID' if valid else 'INVALID'})"
                )
    return 1 if failed else 0


def _benchmark_app_throughput(xml: Path, shape: tuple[int, ...], seconds: float) -> tuple[float, int]:
    """benchmark_app's throughput mode (``-hint throughput``, asynchronous, its own stream count) in f32, as the
    OpenVINO target compiles (left to itself, the CPU plugin runs fp32 IR in bf16 on CPUs with AVX-512 BF16 or
    AMX: 368 against 200 FPS for EfficientNet-Lite0 here): FPS, streams."""
    output = _run_benchmark_app(xml, shape, seconds, "-hint", "throughput", "-infer_precision", "f32")
    fps = re.search(r"Throughput:\s+([\d.]+)\s+FPS", output)
    streams = re.search(r"NUM_STREAMS:\s+(\d+)", output)
    if not fps or not streams:
        sys.exit(f"benchmark_app printed no throughput or stream count: {output[-800:]}")
    return float(fps.group(1)), int(streams.group(1))


def offline_vs_benchmark_app(args: argparse.Namespace) -> int:
    """LoadGen's Offline samples/s on the IR against OpenVINO's benchmark_app in throughput mode on the same IR
    (its own streams and threads, asynchronous requests). edgecraft's Offline runs the target's requests: the IR
    compiled with as many streams, cores / streams threads each, and an ``AsyncInferQueue`` as deep; the ratio says
    what LoadGen and the harness around the same API cost."""
    failed = False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        for name, reference in build(args.model, args.folder, ["ov-fp32", "ov-int8"]).items():
            shape = (1, *reference.evaluation_inputs.shape[1:])
            fps, streams = _benchmark_app_throughput(reference.path, shape, args.seconds)
            settings = profile_settings(
                "default",
                repetitions=1,
                threads=max(1, cores // streams),
                parallel_requests=[streams],
                batch_sizes=[1],
                throughput_s=args.seconds,
                operator_profile=False,
                scenarios=["offline"],
                scenario_min_duration_s=args.seconds,
            )
            measured = measure(_job(reference, Path(tmp) / name), settings)
            offline = next(result for result in measured.scenarios if result.scenario == "offline")
            ratio = (offline.value or 0) / fps
            failed |= not offline.valid
            print(
                f"{args.model} {name}: LoadGen Offline {offline.value:.1f} samples/s ({streams} requests × "
                f"{max(1, cores // streams)} threads) / benchmark_app -hint throughput {fps:.1f} FPS ({streams} "
                f"streams) = {ratio:.3f}"
            )
    return 1 if failed else 0


def profiling(args: argparse.Namespace) -> int:
    """The operator profile runs after the timed phases, on a session of its own: the harness's median with it on
    and off, in alternating benches of each variant, must agree within 5 % (median of the per-round ratios)."""
    references = build(args.model, args.folder, args.variants)
    base = profile_settings(
        "default",
        repetitions=1,
        threads=args.threads,
        measure_s=args.seconds,
        max_s=args.seconds * 2,
        throughput_s=0.1,
        batch_sizes=[1],
    )
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for name, reference in references.items():
            ratios, on, off = [], [], []
            for round_ in range(args.rounds):
                for enabled, into in ((True, on), (False, off)) if round_ % 2 == 0 else ((False, off), (True, on)):
                    settings = base.model_copy(update={"operator_profile": enabled})
                    measured = measure(_job(reference, Path(tmp) / f"{name}-{round_}-{enabled}"), settings)
                    assert (measured.operator_profile is not None) == enabled
                    into.append(measured.latency_ms.p50)
                ratios.append(on[-1] / off[-1])
                print(
                    f"  {name} round {round_ + 1}: profile on {on[-1]:.4f} ms, off {off[-1]:.4f} ms, "
                    f"ratio {ratios[-1]:.3f}"
                )
            ratio = float(np.median(ratios))
            ok = abs(ratio - 1) <= 0.05
            failed |= not ok
            print(
                f"{args.model} {name}: median p50 with the operator profile {np.median(on):.4f} ms, without "
                f"{np.median(off):.4f} ms over {args.rounds} alternating rounds; median ratio on / off = {ratio:.3f} "
                f"({'ok' if ok else 'OUTSIDE'} ±5 %)"
            )
    return 1 if failed else 0


# A bare process per runtime: numpy, then the runtime, one model, N runs on one zero input of the model's own
# shape, and VmHWM read before the runtime import and at the end. Only the runtime's plain API, none of ours.
_BARE = {
    "onnxruntime": """
import onnxruntime
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = __THREADS__
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(__PATH__, options, providers=["CPUExecutionProvider"])
feed = {i.name: np.zeros([1 if not isinstance(d, int) else d for d in i.shape],
                         np.int64 if "int64" in i.type else np.float32) for i in session.get_inputs()}
for _ in range(__RUNS__):
    session.run(None, feed)
""",
    "openvino": """
import openvino
compiled = openvino.Core().compile_model(__PATH__, "CPU", {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                                                       "INFERENCE_NUM_THREADS": __THREADS__})
request = compiled.create_infer_request()
for port in compiled.inputs:
    shape = [1 if d.is_dynamic else d.get_length() for d in port.get_partial_shape()]
    request.set_tensor(port, openvino.Tensor(np.zeros(shape, port.get_element_type().to_dtype())))
for _ in range(__RUNS__):
    request.infer()
""",
    "litert": """
from ai_edge_litert.interpreter import Interpreter
interpreter = Interpreter(model_path=__PATH__, num_threads=__THREADS__)
interpreter.allocate_tensors()
for detail in interpreter.get_input_details():
    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
for _ in range(__RUNS__):
    interpreter.invoke()
""",
}
_VMHWM = "int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024"


def _bare_peak(runtime: str, path: Path, threads: int, runs: int) -> tuple[float, float]:
    """(VmHWM after importing numpy, VmHWM at the end) of a bare process, in MiB."""
    body = (
        _BARE[runtime]
        .replace("__PATH__", repr(str(path)))
        .replace("__THREADS__", str(threads))
        .replace("__RUNS__", str(runs))
    )
    code = f"import numpy as np\nbefore = {_VMHWM}\n{body}\nprint(before, {_VMHWM})"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.exit(f"the bare {runtime} process failed: {completed.stderr.strip()[-800:]}")
    before, peak = map(float, completed.stdout.split())
    return before, peak


def memory(args: argparse.Namespace) -> int:
    """Our model memory plus the runtime's import cost (both from the worker's phases) against what a bare process
    (import, load, ``--runs`` inferences on one input) adds over its own memory before the runtime import, both
    with one thread, per fp32 variant. Within 10 % or 8 MiB, whichever is larger."""
    variants = {"onnxruntime": "onnx-fp32", "openvino": "ov-fp32", "litert": "tflite-fp32"}
    references = build(args.model, args.folder, list(variants.values()))
    settings = profile_settings("quick", threads=args.threads, throughput_s=0, batch_sizes=[1], parallel_requests=[1])
    failed = False
    print(
        f"{'model':<20}{'runtime':<13}{'model MiB':>10}{'import MiB':>11}{'sum':>8}{'bare peak':>10}"
        f"{'bare base':>10}{'bare over':>10}{'ratio':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for runtime, name in variants.items():
            reference = references[name]
            measured = measure(_job(reference, Path(tmp) / name), settings)
            ours = measured.model_memory_mb + measured.runtime_import_mb
            before, peak = _bare_peak(runtime, reference.path, args.threads, args.runs)
            bare = peak - before
            ok = abs(ours - bare) <= max(0.10 * bare, 8.0)
            failed |= not ok
            print(
                f"{args.model:<20}{runtime:<13}{measured.model_memory_mb:>10.1f}{measured.runtime_import_mb:>11.1f}"
                f"{ours:>8.1f}{peak:>10.1f}{before:>10.1f}{bare:>10.1f}{ours / bare:>7.2f}"
                f"  {'ok' if ok else 'OUTSIDE'} (10 % or 8 MiB)"
            )
    return 1 if failed else 0


def resolution(args: argparse.Namespace) -> int:
    """How fine a top-1 agreement budget a built-in's evaluation data can resolve, for a model judged by agreement
    with its fp32 self: fp32's margin between its first and second score per sample, then the agreement of the
    fp32 IR run in bf16 (no int8 at all; where the CPU has bf16), of the int8 variants, and of the fp32 scores
    with Gaussian noise of a few sizes added. A budget finer than bf16's own disagreement is one no int8 model can
    be shown to meet on that data. Prints, and exits 0: a description of the data, not a check."""
    from edgecraft import data
    from edgecraft.compress.cpu import has_bf16
    from edgecraft.compress.zoo import REFERENCE_MODELS
    from edgecraft.rows import reference_outputs

    references = build(args.model, args.folder, ["ov-fp32", "onnx-int8", "ov-int8"])
    # Every sample the built-in has (not only the reference split's evaluation part): the finest resolution it has.
    reference = REFERENCE_MODELS[args.model]
    source = data.load_source(reference.data, Path("."), reference.signature)
    inputs = data.conform(source, reference.signature, f"model {args.model!r}").inputs
    outputs = reference_outputs(registry.get("onnxruntime"), references["ov-fp32"].fp32, "cpu", {}, inputs, threads=1)
    fp32 = np.asarray(next(iter(outputs.values())), dtype=np.float64)
    ordered = np.sort(fp32, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    print(
        f"{args.model}: {len(fp32)} samples (all the built-in has); fp32's top-1 − top-2 score margin: "
        + ", ".join(f"p{q:g} {np.percentile(margin, q):.3f}" for q in (5, 10, 25, 50))
    )

    def agreement(scores: np.ndarray) -> float:
        return float(np.mean(np.argmax(scores, axis=1) == np.argmax(fp32, axis=1)))

    runs = [("onnx-int8", {}), ("ov-int8", {})]
    if has_bf16():
        runs.insert(0, ("ov-fp32", {"inference_precision": "bf16"}))
    for name, options in runs:
        reference = references[name]
        target = registry.get(reference.runtime)
        session = target.load(reference.path, "cpu", args.threads, target.options_model(**options))
        scores = np.concatenate([next(iter(out.values())) for out in target.run_batches(session, inputs, 32)])
        label = f"{name} in {options['inference_precision']}" if options else name
        error = np.median(np.abs(scores - fp32).max(axis=1))
        print(f"{args.model} {label}: agreement {agreement(scores):.3f} (median largest score error {error:.3f})")
    rng = np.random.default_rng(0)
    for sigma in (0.01, 0.02, 0.05, 0.1, 0.2):
        noisy = fp32 + rng.normal(0, sigma, fp32.shape)
        print(f"{args.model} fp32 + N(0, {sigma:g}) on every score: agreement {agreement(noisy):.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.crosscheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits-cnn", help="built-in model (default digits-cnn)")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="where reference variants are kept")
    parser.add_argument("--threads", type=int, default=1)
    checks = parser.add_subparsers(dest="check", required=True)
    app = checks.add_parser("benchmark-app", help="our median / benchmark_app's on the fp32 and int8 IR")
    app.add_argument("--seconds", type=float, default=2.0, help="timed seconds per measurement")
    app.add_argument("--rounds", type=int, default=10, help="alternating rounds of ours and benchmark_app")
    app.set_defaults(handler=benchmark_app)
    repeat = checks.add_parser("cv", help="coefficient of variation of the median over repeated benches")
    repeat.add_argument("--variant", default="onnx-fp32")
    repeat.add_argument("--repeats", type=int, default=5)
    repeat.add_argument("--profile", choices=("quick", "default", "rigorous"), default="default")
    repeat.set_defaults(handler=cv)
    cost = checks.add_parser("overhead", help="harness median vs a bare session.run loop")
    cost.add_argument(
        "--variant",
        default="onnx-fp32",
        choices=list(VARIANTS),
    )
    cost.add_argument("--runs", type=int, default=100, help="runs per block (short blocks: drift hits both alike)")
    cost.add_argument("--rounds", type=int, default=200, help="alternating blocks of each")
    cost.set_defaults(handler=overhead)
    resident = checks.add_parser("memory", help="our model memory + runtime import vs a bare process's peak")
    resident.add_argument("--runs", type=int, default=200, help="inferences in the bare process")
    resident.set_defaults(handler=memory)
    profiled = checks.add_parser("profiling", help="harness median with the operator profile on vs off")
    profiled.add_argument(
        "--variants",
        nargs="+",
        default=["onnx-int8", "ov-int8"],
        choices=list(VARIANTS),
    )
    profiled.add_argument("--seconds", type=float, default=1.0, help="timed seconds per bench")
    profiled.add_argument("--rounds", type=int, default=6, help="alternating rounds (on, off / off, on)")
    profiled.set_defaults(handler=profiling)
    scenario = checks.add_parser("loadgen", help="LoadGen SingleStream p90 and Offline vs the harness's own figures")
    scenario.add_argument("--variants", nargs="+", default=["onnx-fp32", "ov-fp32"])
    scenario.add_argument("--seconds", type=float, default=5.0, help="timed seconds and LoadGen's minimum duration")
    scenario.set_defaults(handler=loadgen)
    offline = checks.add_parser("offline", help="LoadGen Offline vs benchmark_app -hint throughput on the IR")
    offline.add_argument("--seconds", type=float, default=10.0, help="seconds of each")
    offline.set_defaults(handler=offline_vs_benchmark_app)
    resolves = checks.add_parser("resolution", help="how fine an agreement budget the evaluation data resolves")
    resolves.set_defaults(handler=resolution)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
