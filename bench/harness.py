"""Measure runnable model files on targets, the same way for every runtime.

The harness knows a target only by its ``runtime`` and ``device`` names: the child process (``bench.worker``)
looks the runtime up in the target registry. Every (file, target) is measured ``repetitions`` times, each time
in a fresh process; each round measures every job once, in its own seeded shuffled order, so that slow drift of
the machine (neighbours, thermal state, hypervisor steal) spreads over all jobs instead of favouring the ones
measured first, and ratios between jobs come from the same rounds. A crash or a hang in a child becomes a
``MeasurementFailed`` with the reason for that job alone; the other jobs go on. Jobs measured on remote devices
come after the local rounds, each device's one after another and the devices at the same time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecraft.bench.evaluators import snr_db
from edgecraft.bench.raw import check_raw
from edgecraft.bench.scenarios import LOG_FILES
from edgecraft.bench.settings import BenchSettings
from edgecraft.bench.stats import latency_stats
from edgecraft.core.errors import brief
from edgecraft.core.results import (
    NOISE_WARNING,
    Fidelity,
    LengthBucket,
    Measurement,
    MemorySnapshot,
    OperatorProfile,
    OutputFidelity,
    Quality,
    Repetition,
    ScenarioResult,
    Throughput,
)

_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Above these, a row's numbers are flagged as measured on a noisy machine.
MAX_CI_HALF_WIDTH = 0.05  # of the median
MAX_REPETITION_CV = 0.05
MAX_STEAL = 0.02


class MeasurementFailed(Exception):
    """The benchmark child crashed, hung or returned nothing; the message says which and why."""


@dataclass(frozen=True)
class RemoteMeasure:
    """How a job is measured on a remote device: ``measure`` returns every repetition's raw numbers (each checked
    as a local worker's) and writes the outputs to ``work_dir/outputs.npz`` as a local worker does. Jobs of one
    ``device`` run one after another (its agent measures one at a time), different devices' at the same time."""

    device: str
    measure: Callable[[MeasureJob, BenchSettings], list[dict]]


@dataclass(frozen=True)
class MeasureJob:
    """One runnable model file on one target, with the evaluation data its quality is measured on.

    ``inputs`` is a folder of named input arrays (``targets.feeds.save``); ``evaluate`` turns the row's outputs
    (every output, by name) into the model's evaluator figures, so the harness never knows what they mean."""

    runtime: str
    device: str
    options: dict
    model: Path
    inputs: Path
    reference_outputs: dict[str, np.ndarray]
    evaluate: Callable[[dict[str, np.ndarray]], Quality]
    work_dir: Path
    remote: RemoteMeasure | None = None  # None: a local process


def fidelity(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Fidelity:
    """How far every output is from the same output of the fp32 reference on the same inputs."""
    missing = [name for name in reference if name not in outputs]
    if missing:
        raise MeasurementFailed(f"the model returned no output(s) {missing}; it returned {sorted(outputs)}")
    per_output, total, elements, largest = {}, 0.0, 0, 0.0
    for name, expected in reference.items():
        values = outputs[name]
        if values.shape != expected.shape:
            raise MeasurementFailed(
                f"output {name!r} has shape {list(values.shape)}, the fp32 reference {list(expected.shape)}"
            )
        broken = int(np.size(values) - np.isfinite(values).sum()) if values.dtype.kind == "f" else 0
        if broken:
            raise MeasurementFailed(f"output {name!r} holds {broken} NaN or infinite value(s) of {values.size}")
        diff = np.abs(values.astype(np.float64) - expected.astype(np.float64))
        per_output[name] = OutputFidelity(
            max_abs_diff=float(diff.max(initial=0.0)), mean_abs_diff=float(diff.mean()), snr_db=snr_db(expected, values)
        )
        total, elements, largest = (
            total + float(diff.sum()),
            elements + diff.size,
            max(largest, float(diff.max(initial=0.0))),
        )
    first = next(iter(reference))
    scores = reference[first].ndim == 2 and reference[first].shape[1] > 1
    return Fidelity(
        top1_agreement=float((outputs[first].argmax(1) == reference[first].argmax(1)).mean()) if scores else None,
        max_abs_diff=largest,
        mean_abs_diff=total / max(elements, 1),
        outputs=per_output,
    )


def round_orders(jobs: int, repetitions: int, seed: int) -> list[list[int]]:
    """For each round, the order in which the jobs are measured: a seeded shuffle, different in every round."""
    rng = np.random.default_rng(seed)
    return [[int(i) for i in rng.permutation(jobs)] for _ in range(repetitions)]


def run_process(job: MeasureJob, settings: BenchSettings, repetition: int) -> dict:
    """One fresh ``bench.worker`` process; its raw numbers. The first repetition also runs the accuracy pass and,
    unless the settings turn it off, the operator profile, both after every timed pass."""
    folder = job.work_dir / f"repetition-{repetition}"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "runtime": job.runtime,
        "device": job.device,
        "options": job.options,
        "model": str(job.model),
        "inputs": str(job.inputs),
        "outputs": str(job.work_dir / "outputs.npz"),
        "result": str(folder / "result.json"),
        "accuracy": repetition == 0,
        "operator_profile": repetition == 0 and settings.operator_profile,
        "operator_profile_runs": settings.operator_profile_runs,
        "scenarios": settings.scenarios if repetition == 0 else [],
        "scenario_settings": {
            "min_duration_s": settings.scenario_min_duration_s,
            "min_queries": settings.scenario_min_queries,
            "seed": settings.seed,
            "sessions": max(settings.parallel_requests),
            "multi_stream_samples_per_query": settings.multi_stream.samples_per_query,
            "server_target_latency_ms": settings.server.target_latency_ms,
            "server_percentile": settings.server.percentile,
            "server_search_runs": settings.server.search_runs,
        },
        "loadgen_dir": str(job.work_dir / "loadgen"),
        **settings.model_dump(
            include={
                "threads",
                "warmup_runs",
                "warmup_s",
                "runs",
                "measure_s",
                "max_runs",
                "max_s",
                "pin_cpus",
                "batch_sizes",
                "parallel_requests",
                "throughput_s",
                "eval_batch",
            }
        ),
    }
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(spec, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(settings.threads)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "edgecraft.bench.worker", str(job_path)],
            capture_output=True,
            text=True,
            timeout=settings.timeout_s,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise MeasurementFailed(f"benchmark process timed out after {settings.timeout_s:g} s") from None
    if completed.returncode != 0:
        lines = [line for line in completed.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else "no error output"
        raise MeasurementFailed(f"benchmark process exited with code {completed.returncode}: {last}")
    return _read_result(Path(spec["result"]))


def _read_result(path: Path) -> dict:
    """A worker's result file, checked as an agent's raws are (``bench.raw``): a missing, truncated or garbage file,
    or a number no measurement can have, fails this job alone."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MeasurementFailed(f"the benchmark process left an unreadable result file {path.name}: {exc}") from None
    try:
        return check_raw(raw, f"the benchmark process's result file {path.name}")
    except ValueError as exc:
        raise MeasurementFailed(str(exc)) from None


def measure_all(
    jobs: list[MeasureJob],
    settings: BenchSettings,
    on_process: Callable[[int, int], None] = lambda job, repetition: None,
) -> list[Measurement | MeasurementFailed]:
    """Measure every job ``settings.repetitions`` times in shuffled rounds; a job's outcome or its failure.

    A job that fails once is not run again (a crash tends to repeat, a hang would cost its timeout every
    round); its failure names the repetition. ``on_process(job, repetition)`` is called before each process.
    """
    raws: list[list[dict]] = [[] for _ in jobs]
    failures: dict[int, MeasurementFailed] = {}
    orders = round_orders(len(jobs), settings.repetitions, settings.seed)
    for repetition, order in enumerate(orders):
        for position, index in enumerate(order):
            if index in failures or jobs[index].remote:
                continue
            on_process(index, repetition)
            try:
                raw = run_process(jobs[index], settings, repetition)
            except MeasurementFailed as exc:
                where = f"repetition {repetition + 1} of {settings.repetitions}: " if settings.repetitions > 1 else ""
                failures[index] = MeasurementFailed(f"{where}{exc}")
                continue
            raws[index].append(raw | {"index": repetition, "order": position})
    for index, outcome in _measure_remote(jobs, settings, on_process).items():
        if isinstance(outcome, MeasurementFailed):
            failures[index] = outcome
        else:
            raws[index] = outcome
    return [failures.get(index) or _aggregated(job, raws[index]) for index, job in enumerate(jobs)]


def remote_devices(jobs: list[MeasureJob]) -> dict[str, list[int]]:
    """The indexes of the remote jobs, by device, in the jobs' order."""
    by_device: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        if job.remote:
            by_device.setdefault(job.remote.device, []).append(index)
    return by_device


def _measure_remote(
    jobs: list[MeasureJob], settings: BenchSettings, on_process: Callable[[int, int], None]
) -> dict[int, list[dict] | MeasurementFailed]:
    """Every remote job's raws or failure, after the local rounds (a device emulated on this machine would compete
    with the local timings): one thread per device runs its jobs one after another, so N boards take about as long
    as the slowest of them, not their sum. ``on_process`` is called from those threads."""

    def one_device(indexes: list[int]) -> dict[int, list[dict] | MeasurementFailed]:
        outcomes: dict[int, list[dict] | MeasurementFailed] = {}
        for index in indexes:
            on_process(index, 0)
            outcomes[index] = _remote_raws(jobs[index], settings)
        return outcomes

    by_device = remote_devices(jobs)
    if not by_device:
        return {}
    with ThreadPoolExecutor(max_workers=len(by_device), thread_name_prefix="edgecraft-device") as pool:
        return {
            index: outcome for found in pool.map(one_device, by_device.values()) for index, outcome in found.items()
        }


def _remote_raws(job: MeasureJob, settings: BenchSettings) -> list[dict] | MeasurementFailed:
    assert job.remote is not None  # remote_devices lists remote jobs only
    try:
        return job.remote.measure(job, settings)
    except MeasurementFailed as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - a bug in one device's link fails its row, not the other devices' threads
        return MeasurementFailed(f"device {job.remote.device}: {brief(exc)}")


def _aggregated(job: MeasureJob, raws: list[dict]) -> Measurement | MeasurementFailed:
    """``aggregate``, with outputs that cannot be compared or evaluated failing this job alone."""
    try:
        return aggregate(job, raws)
    except MeasurementFailed as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - e.g. a user's evaluator function that raises, or odd raw numbers
        return MeasurementFailed(f"aggregating the results failed: {type(exc).__name__}: {exc}")


def measure(job: MeasureJob, settings: BenchSettings) -> Measurement:
    """Every repetition of one job; raises ``MeasurementFailed``."""
    outcome = measure_all([job], settings)[0]
    if isinstance(outcome, MeasurementFailed):
        raise outcome
    return outcome


def _median(values: list[float]) -> float:
    return float(np.median(values))


def _median_given(values: list[float | None]) -> float | None:
    """The median of the values a repetition gave; None where none did (the raw format allows leaving one out)."""
    given = [value for value in values if value is not None]
    return _median(given) if given else None


def _memory(raws: list[dict]) -> list[MemorySnapshot]:
    """Per phase, each figure's median over the repetitions (a per-figure median keeps the phases' order)."""
    snapshots = []
    for position, first in enumerate(raws[0]["memory"]):
        phase = [raw["memory"][position] for raw in raws]
        values = {
            key: _median([entry[key] for entry in phase])
            if all(entry.get(key) is not None for entry in phase)
            else None
            for key in ("peak_mb", "rss_mb", "anon_mb", "file_mb")
        }
        snapshots.append(MemorySnapshot(phase=first["phase"], **values, peak_over_import_mb=0.0))
    base = next(s.peak_mb for s in snapshots if s.phase == "import")
    return [s.model_copy(update={"peak_over_import_mb": s.peak_mb - base}) for s in snapshots]


def _throughput(raws: list[dict]) -> list[Throughput]:
    """Per configuration, the median over repetitions of the runs that worked, else the error or why the
    model cannot run it (a fixed batch of 1)."""
    merged = []
    for position, first in enumerate(raws[0]["throughput"]):
        ran = [raw["throughput"][position] for raw in raws if raw["throughput"][position].get("error") is None]
        config = {"batch_size": first["batch_size"], "parallel": first["parallel"]}
        if first.get("not_measured"):
            merged.append(Throughput(**config, not_measured=first["not_measured"]))
            continue
        if not ran:
            merged.append(Throughput(**config, error=first["error"]))
            continue
        merged.append(
            Throughput(
                **config,
                **{
                    key: _median_given([r.get(key) for r in ran])
                    for key in ("items_per_s", "batch_latency_ms", "seconds")
                },
            )
        )
    return merged


def _operator_profile(raws: list[dict]) -> OperatorProfile | None:
    """The first repetition's operator profile; one the worker wrote wrong becomes a profile saying so (the
    row's timings stand without it)."""
    raw = next((raw["operator_profile"] for raw in raws if raw.get("operator_profile") is not None), None)
    if raw is None:
        return None
    try:
        return OperatorProfile.model_validate(raw)
    except ValueError as exc:
        return OperatorProfile(
            source=str(raw.get("source", "?")) if isinstance(raw, dict) else "?",
            not_measured=f"the profile could not be read: {str(exc).splitlines()[0]}",
        )


def aggregate(job: MeasureJob, raws: list[dict]) -> Measurement:
    """Turn the repetitions' raw numbers into one ``Measurement``: statistics over every raw sample, timings and
    memory as medians over repetitions, and the accuracy pass of the first repetition."""
    stats = latency_stats([np.array(raw["samples_ms"]) for raw in raws])
    padded = [np.array(raw["padded_samples_ms"]) for raw in raws if raw.get("padded_samples_ms")]
    memory = _memory(raws)
    by_phase = {snapshot.phase: snapshot for snapshot in memory}
    with np.load(job.work_dir / "outputs.npz") as archive:
        outputs = {name: archive[name] for name in archive.files}
    quality = job.evaluate(outputs)
    repetitions = [
        Repetition(
            p50_ms=float(np.median(raw["samples_ms"])),
            runs=len(raw["samples_ms"]),
            **{
                key: raw[key]
                for key in (
                    "index",
                    "order",
                    "warmup_runs",
                    "warmup_s",
                    "measure_s",
                    "stopped_by",
                    "import_s",
                    "load_s",
                    "first_inference_ms",
                    "cpus",
                    "steal_fraction",
                )
            },
        )
        for raw in raws
    ]
    return Measurement(
        import_s=_median([raw["import_s"] for raw in raws]),
        load_s=_median([raw["load_s"] for raw in raws]),
        first_inference_ms=_median([raw["first_inference_ms"] for raw in raws]),
        latency_ms=stats,
        throughput_per_s=1000.0 / stats.mean,
        model_memory_mb=by_phase["end"].peak_mb - by_phase["import"].peak_mb,
        runtime_import_mb=by_phase["import"].peak_mb - by_phase["start"].peak_mb,
        process_peak_mb=by_phase["end"].peak_mb,
        quality=quality,
        fidelity=fidelity(outputs, job.reference_outputs),
        runtime_info=raws[0]["runtime_info"],
        samples_ms=[round(sample, 6) for raw in raws for sample in raw["samples_ms"]],
        repetitions=repetitions,
        memory=memory,
        throughput=_throughput(raws),
        operator_profile=_operator_profile(raws),
        scenarios=_scenarios(job, raws[0].get("scenarios") or [], quality),
        padded_latency_ms=latency_stats(padded) if padded else None,
        padded_length=raws[0].get("padded_length"),
        latency_by_length=_length_buckets(raws),
    )


def _scored(result: ScenarioResult, job: MeasureJob, quality: Quality) -> ScenarioResult:
    assert result.log_dir is not None  # the worker names the accuracy run's folder
    with np.load(Path(result.log_dir) / "outputs.npz") as archive:
        scored = job.evaluate({name: archive[name] for name in archive.files})
    return result.model_copy(
        update={
            "headline": scored.metric,
            "value": scored.value,
            "harness_value": quality.value,
            "not_measured": scored.not_measured,
        }
    )


def _length_buckets(raws: list[dict]) -> list[LengthBucket]:
    """Each timed call's latency by its sample's own length (the worker's ring, cycled in order), in buckets
    1–16, 17–32, 33–64, ... tokens."""
    by_bucket: dict[int, list[float]] = {}
    for raw in raws:
        lengths = raw.get("ring_lengths")
        if not lengths:
            continue
        for index, sample in enumerate(raw["samples_ms"]):
            length = lengths[index % len(lengths)]
            by_bucket.setdefault(max(16, 1 << (length - 1).bit_length()), []).append(sample)
    return [
        LengthBucket(
            shortest=1 if top == 16 else top // 2 + 1, longest=top, calls=len(samples), p50_ms=float(np.median(samples))
        )
        for top, samples in sorted(by_bucket.items())
    ]


def _scenarios(job: MeasureJob, entries: list[dict], quality: Quality) -> list[ScenarioResult]:
    """The first repetition's LoadGen results, its accuracy run scored by the row's evaluator beside the harness's
    own accuracy. A remote device's come with their summary and detail logs, written into this row's folder (the
    agent deletes the job's folder once its results are fetched); its accuracy run is not scored here."""
    if job.remote is None:
        results = [ScenarioResult.model_validate(entry) for entry in entries]
        return [_scored(result, job, quality) if result.scenario == "accuracy" else result for result in results]
    where = f"on device {job.remote.device}"
    remote = []
    for entry in entries:
        result = ScenarioResult.model_validate({key: value for key, value in entry.items() if key != "logs"})
        folder = job.work_dir / "loadgen" / result.scenario
        logs = entry.get("logs")
        # The agent's answer is untrusted: only the two log names, as text, inside this row's folder.
        kept = (
            {name: text for name, text in logs.items() if name in LOG_FILES and isinstance(text, str)}
            if isinstance(logs, dict)
            else {}
        )
        if kept:
            folder.mkdir(parents=True, exist_ok=True)
            for name, text in kept.items():
                (folder / name).write_text(text)
        remote.append(
            result.model_copy(
                update={
                    "log_dir": str(folder) if kept else result.log_dir and f"{where}: {result.log_dir}",
                    "not_measured": f"not measured (LoadGen's accuracy run {where} is not scored here)"
                    if result.scenario == "accuracy" and not result.not_measured
                    else result.not_measured
                    and result.not_measured.replace("not installed", f"not installed {where}", 1),
                }
            )
        )
    return remote


def noise_warnings(measurement: Measurement, settings: BenchSettings) -> list[str]:
    """What makes a row's latency less trustworthy than it looks: a wide CI, processes that disagree, a cap
    reached before the minimums, CPU time stolen by the hypervisor."""
    stats = measurement.latency_ms
    warnings = []
    half_width = (stats.p50_ci95[1] - stats.p50_ci95[0]) / 2 / stats.p50
    if half_width > MAX_CI_HALF_WIDTH:
        warnings.append(
            f"{NOISE_WARNING}: the 95 % CI of the median is ±{100 * half_width:.1f} % "
            f"(over {100 * MAX_CI_HALF_WIDTH:g} %)"
        )
    if stats.cv_across_repetitions is not None and stats.cv_across_repetitions > MAX_REPETITION_CV:
        warnings.append(
            f"{NOISE_WARNING}: the {len(stats.repetition_p50)} process repetitions' medians vary by "
            f"{100 * stats.cv_across_repetitions:.1f} % (CV over {100 * MAX_REPETITION_CV:g} %)"
        )
    capped = [r for r in measurement.repetitions if r.stopped_by != "minimums"]
    if capped:
        worst = min(capped, key=lambda r: r.runs)
        warnings.append(
            f"capped: the timed phase hit its {worst.stopped_by} cap with {worst.runs} runs in "
            f"{worst.measure_s:.1f} s (minimums: {settings.runs} runs, {settings.measure_s:g} s)"
        )
    steals = [r.steal_fraction for r in measurement.repetitions if r.steal_fraction is not None]
    if steals and max(steals) > MAX_STEAL:
        warnings.append(
            f"{NOISE_WARNING}: the hypervisor stole up to {100 * max(steals):.1f} % of CPU time while timing"
        )
    return warnings
