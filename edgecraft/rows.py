"""Result rows and the jobs that measure them, shared by ``edgecraft run`` and ``edgecraft bench``.

A row is one (model, variant, target). Its runnable file is exported first; the measurement jobs of every row
then run together in interleaved rounds (see ``bench.harness``). A converter crash, a target missing here or a
failed measurement changes only its own row.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from edgecraft.bench.harness import (
    MeasureJob,
    MeasurementFailed,
    RemoteMeasure,
    measure_all,
    noise_warnings,
    remote_devices,
)
from edgecraft.bench.settings import BenchSettings
from edgecraft.core.errors import brief, failure_text
from edgecraft.core.results import CONVERSION_WARNING, Quality, ResultRow, RunResults
from edgecraft.devices import DeviceLink
from edgecraft.recipe.schema import TargetEntry
from edgecraft.targets import feeds
from edgecraft.targets import registry as target_registry

log = logging.getLogger(__name__)

# Max |Δ| of outputs tolerated between the reference and a lossless export before the row is flagged.
FP32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Evaluation:
    """What every row of one model is measured against: its saved evaluation inputs, the reference outputs
    and the evaluator that scores a row's outputs."""

    inputs: Path
    reference_outputs: dict[str, np.ndarray]
    score: Callable[[dict[str, np.ndarray]], Quality]


@dataclass(frozen=True)
class Pending:
    """A row whose runnable file is exported and waits for the benchmark rounds."""

    row: int
    job: MeasureJob
    lossless: bool


def sha256(*paths: Path) -> str:
    """One digest over the files that make up a runnable model (e.g. OpenVINO's .xml and .bin)."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def runnable_row(
    row: ResultRow, runnable: Path, files: list[Path], run_dir: Path, settings: BenchSettings
) -> ResultRow:
    """``row`` with the facts of its runnable file: where it is, its size and digest, the threads it runs with."""
    return row.model_copy(
        update={
            "artifact": str(runnable.relative_to(run_dir)),
            "size_bytes": sum(path.stat().st_size for path in files),
            "sha256": sha256(*files),
            "threads": settings.threads,
        }
    )


def export_row(
    row: ResultRow,
    entry: TargetEntry,
    source: Path,
    fmt: str,
    out_dir: Path,
    run_dir: Path,
    settings: BenchSettings,
    evaluation: Evaluation,
    devices: dict[str, DeviceLink] | None = None,
) -> tuple[ResultRow, MeasureJob | None]:
    """Export ``source`` (a ``fmt`` file) for the row's target: the row with its runnable file and the job that
    will measure it, or the row skipped (the target cannot run there) or failed (the export crashed, the remote
    device is unreachable). A remote target (``runtime:device@name``) is exported here and measured by the agent
    of ``devices[name]``."""
    spec = entry.spec
    target = target_registry.get(spec.runtime)
    where = f"{row.model}/{row.variant} on {entry.label}"
    link = (devices or {})[spec.remote].connect() if spec.remote else None
    if link:
        row = row.model_copy(update={"device": link.name, "emulated": link.emulated})
        if link.problem:
            return row.model_copy(update={"status": "failed", "reason": link.problem}), None
    reason = link.unavailable_reason(spec.runtime, spec.device) if link else target.unavailable_reason(spec.device)
    if reason:
        log.info("skipped %s: %s", where, reason)
        return row.model_copy(update={"status": "skipped", "reason": reason}), None
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        runnable = target.export(source, fmt, out_dir)
    except Exception as exc:  # noqa: BLE001 - a converter crash fails only this row
        log.warning("%s: export failed: %s", where, brief(exc))
        return row.model_copy(update={"status": "failed", "reason": f"export failed: {failure_text(exc)}"}), None
    files = target.files(runnable)
    job = MeasureJob(
        runtime=spec.runtime,
        device=spec.device,
        options=entry.options,
        model=runnable,
        inputs=evaluation.inputs,
        reference_outputs=evaluation.reference_outputs,
        evaluate=evaluation.score,
        work_dir=out_dir / "bench",
        remote=RemoteMeasure(link.name, functools.partial(link.measure, files=files)) if link else None,
    )
    return runnable_row(row, runnable, files, run_dir, settings), job


def drift_warning(drift: float) -> list[str]:
    """A lossless variant (fp32 export or conversion) that drifts from the reference points at a conversion bug.
    NaN counts as drift: ``nan > tolerance`` is false, so the test is written the other way round."""
    if not drift <= FP32_TOLERANCE:
        return [
            f"{CONVERSION_WARNING} fp32 outputs differ from the reference by {drift:.2e} (tolerance {FP32_TOLERANCE:g})"
        ]
    return []


def measure_rows(
    rows: list[ResultRow], pending: list[Pending], settings: BenchSettings, progress: Progress
) -> list[str]:
    """Measure the pending rows in interleaved rounds and put each one's measurement (or failure) into ``rows``;
    the remote devices that were measured at the same time (none, or two or more)."""
    jobs = [p.job for p in pending]
    remote = sum(1 for job in jobs if job.remote)  # a remote job is one call, its repetitions included
    task = progress.add_task("measuring", total=(len(pending) - remote) * settings.repetitions + remote)
    started = 0
    counting = threading.Lock()  # remote devices' jobs start from one thread per device

    def on_process(index: int, repetition: int) -> None:
        nonlocal started
        row = rows[pending[index].row]
        where = f"round {repetition + 1}/{settings.repetitions} · {row.model} · {row.variant} · {row.target}"
        with counting:
            progress.update(task, completed=started, description=where)
            started += 1

    outcomes = measure_all(jobs, settings, on_process)
    progress.remove_task(task)
    for entry, outcome in zip(pending, outcomes):
        row = rows[entry.row]
        if isinstance(outcome, MeasurementFailed):
            log.warning("%s/%s on %s: %s", row.model, row.variant, row.target, outcome)
            rows[entry.row] = row.model_copy(update={"reason": str(outcome)})
            continue
        warnings = drift_warning(outcome.fidelity.max_abs_diff) if entry.lossless else []
        warnings += target_registry.get(entry.job.runtime).warnings(outcome.runtime_info or {})
        if not row.emulated:  # an emulator's timings are never shown: how noisy they were means nothing
            warnings += noise_warnings(outcome, settings)
        rows[entry.row] = row.model_copy(update={"status": "ok", "measurement": outcome, "warnings": warnings})
    devices = remote_devices(jobs)
    return sorted(devices) if len(devices) > 1 else []


def reference_outputs(
    target: Any,
    path: Path,
    device: str,
    options: dict,
    inputs: dict[str, np.ndarray],
    threads: int,
    layout: feeds.Layout | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Every output of a model file on ``target``, in this process, over all the inputs (sample-major), in calls
    the model takes (``layout``: its batch axes, fixed batch and state)."""
    session = target.load(path, device, threads, target.options_model(**options))
    return feeds.concatenate(target.run_batches(session, inputs, batch_size, layout))


def summary_lines(results: RunResults) -> list[str]:
    """What the console says at the end of a run: each model's measured input shapes, then each row's status and
    p50, and what was not measured and why (a batched throughput a fixed-batch model cannot run)."""
    lines = []
    for model in results.models:
        if model.data_shapes:
            shapes = ", ".join(f"{name} [{', '.join(map(str, dims))}]" for name, dims in model.data_shapes.items())
            lines.append(f"{model.name}: inputs measured at {shapes}")
    for row in results.rows:
        where = f"{row.model} · {row.variant} · {row.target}"
        measurement = row.measurement
        if row.status != "ok" or measurement is None:
            lines.append(f"{row.status}: {where}: {(row.reason or '').splitlines()[0] if row.reason else ''}")
            continue
        lines.append(f"ok: {where}: p50 {measurement.latency_ms.p50:.3g} ms")
        lines += [
            f"  throughput at batch {entry.batch_size} × {entry.parallel}: {entry.not_measured}"
            for entry in measurement.throughput
            if entry.not_measured
        ]
    return lines
