"""The benchmark child process: measures one (model file, target) once and writes raw numbers to a JSON file.

Run as ``python -m bench.worker JOB.json``. It runs in a fresh process so that each measurement starts from the
same state (no warm caches, no memory left over from another runtime), and it imports only numpy, the target
registry and the one runtime it measures: no torch, no TensorFlow.

Phases, in order: pin to CPUs (optional) → runtime import → load/compile → first inference → warm-up → timed
steady state → throughput pass → accuracy pass → operator profile. Memory is read between phases, never inside a
timed loop, and its last reading comes before the throughput and accuracy passes, whose larger batches would
otherwise set it. The operator profile comes last, on a session of its own with the runtime's profiler on: the
timed phases run exactly as they do without it.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecraft.targets import feeds
from edgecraft.targets.base import Requests

# Single samples the timed loop cycles through: at most RING of them and RING_BYTES together (at least one), so
# that large inputs (224×224 images) add no more than a deployed model's own input would.
RING = 32
RING_BYTES = 1 << 20

_STATUS_FIELDS = {"VmHWM": "peak_mb", "VmRSS": "rss_mb", "RssAnon": "anon_mb", "RssFile": "file_mb"}


def memory_snapshot(phase: str) -> dict[str, Any]:
    """This process's resident memory in MiB: high-water mark, current, anonymous and file-backed.

    Linux's VmHWM first: ``ru_maxrss`` survives ``exec`` there, so a child started by a large parent (one that
    imported torch) would report the parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    snapshot: dict[str, Any] = {"phase": phase}
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in _STATUS_FIELDS:
                snapshot[_STATUS_FIELDS[key]] = int(value.split()[0]) / 1024
    if "peak_mb" not in snapshot:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        snapshot["peak_mb"] = peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
    return snapshot


def cpu_ticks(cpus: list[int]) -> tuple[int, int] | None:
    """(stolen, total) clock ticks of ``cpus`` so far, from /proc/stat; None where it cannot be read."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    wanted = {f"cpu{cpu}" for cpu in cpus}
    stolen = total = 0
    for line in stat.read_text().splitlines():
        name, *values = line.split()
        if name in wanted and len(values) >= 8:
            ticks = [int(value) for value in values[:8]]  # user nice system idle iowait irq softirq steal
            stolen += ticks[7]
            total += sum(ticks)
    return (stolen, total) if total else None


def steal_fraction(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def run_phase(
    call: Callable[[int], object],
    min_runs: int,
    min_s: float,
    max_runs: int,
    max_s: float,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> tuple[list[int], int, str]:
    """Call ``call(i)`` until at least ``min_runs`` calls *and* ``min_s`` seconds, or until a cap.

    Returns each call's duration in ns, the phase's wall time in ns and what ended it: ``"minimums"``,
    ``"max_runs"`` or ``"max_s"`` (a cap reached first leaves the phase below its minimums).
    """
    samples: list[int] = []
    start = clock()
    elapsed = 0
    min_ns, max_ns = min_s * 1e9, max_s * 1e9
    while not (len(samples) >= min_runs and elapsed >= min_ns):
        if len(samples) >= max_runs:
            return samples, elapsed, "max_runs"
        if elapsed >= max_ns:
            return samples, elapsed, "max_s"
        before = clock()
        call(len(samples))
        after = clock()
        samples.append(after - before)
        elapsed = after - start
    return samples, elapsed, "minimums"


def throughput(
    target: Any,
    session: Any,
    requests: Requests | None,
    parallel: int,
    inputs: dict[str, np.ndarray],
    batch_size: int,
    seconds: float,
    layout: feeds.Layout,
) -> dict:
    """Items per second running batches of ``batch_size`` for ``seconds``: without ``requests`` (one request),
    ``session`` called in a loop; with them, the target's ``parallel`` requests kept in flight side by side."""
    count = max(1, min(RING, feeds.count(inputs)) // batch_size)
    batches = [
        layout.to_model(
            {
                name: np.take(array, range(i * batch_size, (i + 1) * batch_size), axis=0, mode="wrap")
                for name, array in inputs.items()
            }
        )
        for i in range(count)
    ]
    target.run(session, batches[0])  # fails here if the model cannot take this batch
    if requests is None:
        done = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline or done == 0:
            target.run(session, batches[done % count])
            done += 1
        wall = time.perf_counter() - start
        return {"items_per_s": done * batch_size / wall, "batch_latency_ms": 1e3 * wall / done, "seconds": wall}

    free = threading.Semaphore(parallel)
    spans: list[float] = []
    errors: list[BaseException] = []

    def keep(began: float) -> Callable[[BaseException | None], None]:
        def ended(error: BaseException | None) -> None:
            spans.append(time.perf_counter() - began)
            if error is not None:
                errors.append(error)
            free.release()

        return ended

    def drain() -> None:
        for _ in range(parallel):
            free.acquire()
        for _ in range(parallel):
            free.release()
        if errors:
            raise errors[0]

    for i in range(2 * parallel):  # warms every request at this batch size
        free.acquire()
        requests.start(batches[i % count], keep(time.perf_counter()))
    drain()
    spans.clear()
    started = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and not errors:
        free.acquire()
        requests.start(batches[started % count], keep(time.perf_counter()))
        started += 1
    drain()
    wall = time.perf_counter() - start
    return {
        "items_per_s": started * batch_size / wall,
        "batch_latency_ms": 1e3 * sum(spans) / len(spans),
        "seconds": wall,
    }


def run_job(job: dict) -> dict:
    if job["pin_cpus"]:
        os.sched_setaffinity(0, job["pin_cpus"])
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    from edgecraft.targets import registry

    inputs = feeds.load(Path(job["inputs"]))  # memory-mapped: only the samples used are read
    layout = feeds.load_layout(Path(job["inputs"]))
    target = registry.get(job["runtime"])
    memory = [memory_snapshot("start")]

    start = time.perf_counter()
    module = target.python_module
    if module is None:
        raise RuntimeError(f"none of the Python packages {', '.join(target.python_modules)} is installed")
    importlib.import_module(module)
    import_s = time.perf_counter() - start
    memory.append(memory_snapshot("import"))

    options = target.options_model(**job["options"])

    def load() -> Any:
        return target.load(Path(job["model"]), job["device"], job["threads"], options)

    start = time.perf_counter()
    session = load()
    load_s = time.perf_counter() - start
    memory.append(memory_snapshot("load"))

    # A small ring of single samples, read from the file (not through the map, whose pages would stay resident):
    # the timed loop reads memory, not the disk.
    # Each as the model takes one call (its batch axes; a fixed batch of N holds N samples).
    ring = max(1, min(RING, RING_BYTES // max(feeds.sample_bytes(inputs), 1), feeds.count(inputs)))
    per_call = layout.per_call
    read = [feeds.read(Path(job["inputs"]), i * per_call, (i + 1) * per_call) for i in range(max(1, ring // per_call))]
    padded = [layout.to_model(sample) for sample in read]
    # Token inputs padded to the longest sample run at their own lengths, as deployed; the padded figure is kept
    # beside (a timed phase of its own, after the memory readings).
    lengths = [layout.own_length(sample) or 0 for sample in read] if layout.lengths and per_call == 1 else []
    single = [layout.to_model(layout.cut(sample, n)) for sample, n in zip(read, lengths)] if lengths else padded
    # A stateful model runs as deployed: each step takes the state the step before returned.
    state: dict[str, np.ndarray] = {}

    def infer_from(ring: list[dict[str, np.ndarray]]) -> Callable[[int], object]:
        if layout.state_from:

            def infer(i: int) -> None:
                fed = ring[i % len(ring)]
                fed = fed | {name: state[source] for name, source in layout.state_from.items() if source in state}
                state.update(target.run(session, fed))

            return infer
        # Each sample bound to the session once (in the runtime's layout and buffers, ``Target.bind``): the timed
        # span holds the runtime's call and the reading of its outputs, as a deployed caller's does.
        calls = [target.bind(session, fed) for fed in ring]
        return lambda i: calls[i % len(calls)]()

    infer = infer_from(single)

    start = time.perf_counter()
    infer(0)
    first_inference_ms = (time.perf_counter() - start) * 1e3
    memory.append(memory_snapshot("first_inference"))

    # The collector would otherwise pause a timed call now and then; native benchmark tools have no such pauses.
    gc.disable()
    warmup, warmup_ns, _ = run_phase(infer, job["warmup_runs"], job["warmup_s"], job["max_runs"], job["max_s"])
    memory.append(memory_snapshot("warmup"))
    ticks = cpu_ticks(cpus)
    samples, measure_ns, stopped_by = run_phase(infer, job["runs"], job["measure_s"], job["max_runs"], job["max_s"])
    steal = steal_fraction(ticks, cpu_ticks(cpus))
    gc.enable()
    memory.append(memory_snapshot("end"))

    padded_samples: list[int] = []
    if lengths:
        gc.disable()
        padded_infer = infer_from(padded)
        run_phase(padded_infer, job["warmup_runs"], job["warmup_s"], job["max_runs"], job["max_s"])
        padded_samples, _, _ = run_phase(padded_infer, job["runs"], job["measure_s"], job["max_runs"], job["max_s"])
        gc.enable()

    results = []
    for parallel in job["parallel_requests"]:
        try:
            requests = target.requests(session, parallel, load) if parallel > 1 else None
        except Exception as exc:  # noqa: BLE001 - recorded for every batch size of this configuration
            results += [{"batch_size": b, "parallel": parallel, "error": _brief(exc)} for b in job["batch_sizes"]]
            continue
        for batch_size in job["batch_sizes"]:
            entry = {"batch_size": batch_size, "parallel": parallel}
            if layout.batch_sizes(batch_size) != batch_size:
                entry["not_measured"] = f"not measured ({layout.limit})"
            else:
                try:
                    entry |= throughput(
                        target, session, requests, parallel, inputs, batch_size, job["throughput_s"], layout
                    )
                except Exception as exc:  # noqa: BLE001 - the runtime refused this batch
                    entry["error"] = _brief(exc)
            results.append(entry)
        if requests is not None:
            requests.close()

    scenario_results = None
    if job.get("scenarios"):
        latency_ms = float(np.median(samples)) / 1e6
        scenario_results = _scenarios(job, target, session, load, layout, latency_ms, results)

    if job["accuracy"]:
        # Accuracy in its own pass after every timed one, on the same target.run code path.
        try:
            batches = target.run_batches(session, inputs, job["eval_batch"], layout)
        except Exception:  # noqa: BLE001 - a batch limit the file does not declare: the samples one by one
            batches = target.run_batches(session, inputs, 1, layout)
        outputs: dict[str, Any] = feeds.concatenate(batches)  # Any: mypy checks ** against allow_pickle too
        np.savez(job["outputs"], **outputs)
    runtime_info = target.describe(session)
    session = None  # released: the profile's own session does not share the machine with this one

    operator_profile = None
    if job.get("operator_profile"):
        # Last of all, never inside a timed phase: profilers change how a session runs, so it gets its own.
        try:
            operator_profile = target.profile(
                Path(job["model"]), job["device"], job["threads"], options, single, job["operator_profile_runs"]
            )
        except Exception as exc:  # noqa: BLE001 - a profile that fails leaves the row's measurements standing
            operator_profile = {"source": target.runtime, "not_measured": f"profiling failed: {_brief(exc)}"}
    return {
        "import_s": import_s,
        "load_s": load_s,
        "first_inference_ms": first_inference_ms,
        "warmup_runs": len(warmup),
        "warmup_s": warmup_ns / 1e9,
        "samples_ms": [sample / 1e6 for sample in samples],
        "measure_s": measure_ns / 1e9,
        "stopped_by": stopped_by,
        "memory": memory,
        "cpus": cpus,
        "steal_fraction": steal,
        "throughput": results,
        "runtime_info": runtime_info,
        "operator_profile": operator_profile,
        "scenarios": scenario_results,
        "ring_lengths": lengths or None,
        "padded_length": next(read[0][name].shape[axis] for name, axis in layout.lengths.items()) if lengths else None,
        "padded_samples_ms": [sample / 1e6 for sample in padded_samples] or None,
    }


def _scenarios(
    job: dict,
    target: Any,
    session: Any,
    load: Callable[[], Any],
    layout: feeds.Layout,
    latency_ms: float,
    throughput_results: list[dict],
) -> list[dict]:
    """MLPerf's scenarios through LoadGen (``bench.scenarios``) on this process's session (and the target's
    requests from it), after the timed phases;
    a scenario that cannot run here is "not measured" with the reason."""
    from edgecraft.bench import scenarios

    reason = scenarios.loadgen_missing()
    if layout.state_from:
        reason = "a stateful model runs one stream in order, and LoadGen's queries are independent samples"
    elif layout.per_call != 1:
        reason = f"the model takes exactly {layout.per_call} samples per call, and LoadGen's queries hold any number"
    if reason:
        return [{"scenario": name, "not_measured": f"not measured ({reason})"} for name in job["scenarios"]]
    path = Path(job["inputs"])
    data = feeds.read(path, 0, min(RING, feeds.count(feeds.load(path))))
    batch = max([size for size in job["batch_sizes"] if layout.batch_sizes(size) == size] or [1])
    # Token inputs at their own lengths: a query's batch is cut to its longest sample, as a server pads per batch.
    own = [layout.own_length(feeds.take(data, i, i + 1)) for i in range(feeds.count(data))]

    def feed(indices: list[int]) -> feeds.Feeds:
        fed = {name: array[indices] for name, array in data.items()}
        if layout.lengths:
            fed = layout.cut(fed, max(own[i] or 1 for i in indices))
        return layout.to_model(fed)

    count = job["scenario_settings"]["sessions"]
    measured = [entry["items_per_s"] for entry in throughput_results if entry.get("items_per_s")]
    items_per_s = max(measured, default=1000 / latency_ms)
    run = scenarios.LoadGenRun(
        feed,
        lambda fed: target.run(session, fed),
        lambda: target.requests(session, count, load),
        feeds.count(data),
        batch,
        job["scenario_settings"],
        Path(job["loadgen_dir"]),
    )
    results = run.run(job["scenarios"], latency_ms, items_per_s)
    if job["accuracy"]:
        results.append(_loadgen_accuracy(run, target, session, layout, path))
    return results


def _loadgen_accuracy(run: Any, target: Any, session: Any, layout: feeds.Layout, path: Path) -> dict[str, Any]:
    """LoadGen's accuracy run over every evaluation sample (as given, like the accuracy pass), its logged outputs
    decoded and saved for the harness to score with the row's evaluator."""
    data = feeds.load(path)  # memory-mapped: after every timed phase, so its pages count in no figure
    specs: list[tuple[str, np.dtype, tuple[int, ...]]] = []

    def answer(indices: list[int]) -> list[bytes]:
        fed = {name: np.asarray(array[indices]) for name, array in data.items()}
        outputs = layout.from_model(target.run(session, layout.to_model(fed)), len(indices))
        if not specs:
            specs.extend((name, value.dtype, value.shape[1:]) for name, value in outputs.items())
        return [
            b"".join(np.ascontiguousarray(outputs[name][i]).tobytes() for name, _, _ in specs)
            for i in range(len(indices))
        ]

    total = feeds.count(data)
    logged = run.accuracy(answer, total)
    decoded: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in specs}
    for index in range(total):
        if index not in logged:
            raise RuntimeError(f"LoadGen's accuracy log has no sample {index} of {total}")
        offset = 0
        for name, dtype, shape in specs:
            size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            decoded[name].append(
                np.frombuffer(logged[index], dtype, count=size // dtype.itemsize, offset=offset).reshape(shape)
            )
            offset += size
    folder = Path(run.log_dir) / "accuracy"
    arrays: dict[str, Any] = {name: np.stack(values) for name, values in decoded.items()}  # Any: see np.savez below
    np.savez(folder / "outputs.npz", **arrays)
    return {"scenario": "accuracy", "valid": True, "queries": total, "log_dir": str(folder)}


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    result = run_job(job)
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
