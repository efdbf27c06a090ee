"""Hand-built ``RunResults`` for report tests: no ML framework, no benchmark, numbers chosen to make a point."""

from __future__ import annotations

import json
from pathlib import Path

from edgecraft.core.results import Fidelity, LatencyStats, Measurement, ModelRecord, Quality, ResultRow, RunResults
from edgecraft.core.signature import Signature, TensorSpec

SIGNATURE = Signature(
    inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", 1, 8, 8], layout="NCHW")],
    outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 10])],
)


def quality(value: float | None) -> Quality:
    return Quality(
        evaluator="classification",
        metric="top-1 accuracy",
        value=value,
        metrics={"top1": value} if value is not None else {},
        not_measured=None if value is not None else "not measured (test)",
    )


VARIANTS = [
    {"name": "fp32", "passes": []},
    {"name": "int8", "passes": [{"type": "quantize.static"}]},
    {"name": "dyn", "passes": [{"type": "quantize.dynamic"}]},
]


def measurement(p50: float, accuracy: float, ci: float = 0.02, samples: int = 20) -> Measurement:
    """A measurement with median ``p50`` ms and a CI of ±``ci`` × p50."""
    latency = LatencyStats(
        runs=samples,
        mean=p50,
        std=p50 * ci,
        min=p50 * 0.9,
        max=p50 * 1.3,
        p50=p50,
        p90=p50 * 1.1,
        p95=p50 * 1.15,
        p99=p50 * 1.25,
        p50_ci95=(p50 * (1 - ci), p50 * (1 + ci)),
    )
    return Measurement(
        import_s=0.1,
        load_s=0.01,
        first_inference_ms=2 * p50,
        latency_ms=latency,
        throughput_per_s=1000 / p50,
        model_memory_mb=20,
        runtime_import_mb=15,
        process_peak_mb=60,
        quality=quality(accuracy),
        fidelity=Fidelity(top1_agreement=0.99, max_abs_diff=1e-3, mean_abs_diff=1e-4),
        samples_ms=[p50 * (0.95 + 0.01 * (i % 10)) for i in range(samples)],
    )


def ok(
    variant: str,
    p50: float,
    accuracy: float,
    size: int,
    model: str = "net",
    target: str = "onnxruntime:cpu",
    ci: float = 0.02,
) -> ResultRow:
    return ResultRow(
        model=model,
        variant=variant,
        target=target,
        status="ok",
        artifact=f"{variant}.onnx",
        size_bytes=size,
        sha256="ab" * 32,
        threads=1,
        measurement=measurement(p50, accuracy, ci),
        lossless=variant == "fp32",
    )


def not_measured(
    variant: str, status: str, reason: str, model: str = "net", target: str = "onnxruntime:cpu", size: int | None = None
) -> ResultRow:
    return ResultRow(
        model=model,
        variant=variant,
        target=target,
        status=status,
        reason=reason,
        size_bytes=size,
        lossless=variant == "fp32",
    )


def run(
    rows: list[ResultRow],
    report: dict | None = None,
    reference: float = 0.98,
    name: str = "run",
    models: tuple[str, ...] = ("net",),
) -> RunResults:
    recipe = {"name": name, "variants": VARIANTS, "benchmark": {"threads": 1, "runs": 20}}
    if report is not None:
        recipe["report"] = report
    return RunResults(
        name=name,
        created_at="2026-01-01T00:00:00+00:00",
        recipe=recipe,
        recipe_text=f"name: {name}\n",
        environment={
            "python": "3.11",
            "platform": "linux",
            "cpu": {"model": "Test CPU", "logical_cores": 2},
            "packages": {"onnxruntime": "1.20"},
        },
        models=[
            ModelRecord(name=m, source=m, signature=SIGNATURE, parameters=1234, reference=quality(reference))
            for m in models
        ],
        passes=[],
        rows=rows,
    )


def save(results: RunResults, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(results.model_dump_json(indent=2))
    return folder


def mixed_run() -> RunResults:
    """fp32 and a 2× faster int8 measured; dynamic int8 10× slower; one failed and one skipped row."""
    return run(
        [
            ok("fp32", 1.0, 0.98, 400_000),
            ok("int8", 0.5, 0.975, 110_000),
            ok("dyn", 10.0, 0.98, 105_000),
            not_measured("fp32", "skipped", "CUDAExecutionProvider is not available", target="onnxruntime:cuda"),
            not_measured(
                "int8", "failed", "benchmark process exited with code 1: boom", target="onnxruntime:cuda", size=110_000
            ),
            not_measured("dyn", "failed", "pass failed: RuntimeError: simulated", target="onnxruntime:cuda"),
        ]
    )


def tamper(folder: Path, field: str, value: object) -> Path:
    """Set ``field`` (a dotted path such as ``rows.0.measurement.latency_ms.p50``) in ``folder/results.json`` to
    ``value``, bypassing validation: a results file as a bug or a hand edit could leave it."""
    path = folder / "results.json"
    data = json.loads(path.read_text())
    *parents, last = [int(part) if part.isdigit() else part for part in field.split(".")]
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    path.write_text(json.dumps(data))
    return folder


def worker_raw(p50: float, memory: tuple[float, ...] = (40, 60, 70, 70.5, 71, 72)) -> dict:
    """One repetition's raw numbers as ``bench.worker`` writes them (21 samples around ``p50``), for tests that
    stand in for a worker or an agent."""
    phases = ("start", "import", "load", "first_inference", "warmup", "end")
    return {
        "import_s": 0.1,
        "load_s": 0.2,
        "first_inference_ms": 3.0,
        "warmup_runs": 5,
        "warmup_s": 0.1,
        "samples_ms": [p50 * (0.99 + 0.001 * step) for step in range(21)],
        "measure_s": 0.2,
        "stopped_by": "minimums",
        "memory": [
            {"phase": phase, "peak_mb": mb, "rss_mb": mb, "anon_mb": mb / 2, "file_mb": mb / 2}
            for phase, mb in zip(phases, memory)
        ],
        "cpus": [0],
        "steal_fraction": 0.0,
        "runtime_info": {"fake": True},
        "throughput": [
            {"batch_size": 1, "parallel": 1, "items_per_s": 1000 / p50, "batch_latency_ms": p50, "seconds": 0.1},
            {"batch_size": 8, "parallel": 1, "error": "RuntimeError: fixed batch"},
        ],
    }
