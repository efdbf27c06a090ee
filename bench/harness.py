"""Measure one runnable model file on one target, the same way for every runtime.

The harness knows a target only by its ``runtime`` and ``device`` names: the child process (``bench.worker``)
looks the runtime up in the target registry. A crash or a hang in the child becomes a ``MeasurementFailed``
with the reason, never a lost run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.stats import latency_stats
from reports.schema import Fidelity, Measurement

_PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class BenchSettings:
    threads: int = 1
    warmup_runs: int = 20
    runs: int = 200
    eval_batch: int = 64
    timeout_s: float = 300.0


class MeasurementFailed(Exception):
    """The benchmark child crashed, hung or returned nothing; the message says which and why."""


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def fidelity(outputs: np.ndarray, reference: np.ndarray) -> Fidelity:
    """How far ``outputs`` are from the fp32 reference outputs on the same inputs."""
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    return Fidelity(
        top1_agreement=float((outputs.argmax(axis=1) == reference.argmax(axis=1)).mean()),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
    )


def measure(
    runtime: str,
    device: str,
    options: dict,
    model_path: Path,
    inputs_path: Path,
    labels: np.ndarray,
    reference_outputs: np.ndarray,
    settings: BenchSettings,
    work_dir: Path,
) -> Measurement:
    """Run ``bench.worker`` in a fresh process and turn its raw samples into a ``Measurement``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job = {
        "runtime": runtime,
        "device": device,
        "options": options,
        "model": str(model_path),
        "inputs": str(inputs_path),
        "outputs": str(work_dir / "outputs.npy"),
        "result": str(work_dir / "result.json"),
        "threads": settings.threads,
        "warmup_runs": settings.warmup_runs,
        "runs": settings.runs,
        "eval_batch": settings.eval_batch,
    }
    job_path = work_dir / "job.json"
    job_path.write_text(json.dumps(job, indent=2))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = str(settings.threads)
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "bench.worker", str(job_path)],
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
    raw = json.loads(Path(job["result"]).read_text())
    outputs = np.load(job["outputs"])
    stats = latency_stats(np.array(raw["samples_ms"]))
    return Measurement(
        import_s=raw["import_s"],
        load_s=raw["load_s"],
        first_inference_ms=raw["first_inference_ms"],
        latency_ms=stats,
        throughput_per_s=1000.0 / stats.mean,
        peak_rss_mb=raw["peak_rss_mb"],
        rss_after_import_mb=raw["rss_after_import_mb"],
        rss_after_load_mb=raw["rss_after_load_mb"],
        accuracy=accuracy(outputs, labels),
        fidelity=fidelity(outputs, reference_outputs),
        runtime_info=raw["runtime_info"],
        samples_ms=raw["samples_ms"],
    )
