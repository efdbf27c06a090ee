"""The results.json schema: the contract between the runner that measures and the reports that read.

It lives at the bottom of the import graph (pydantic only) so that ``reports`` can re-render any stored run
without an ML framework installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from reports.settings import ReportSettings, report_settings

SCHEMA_VERSION = 1


class ResultsError(Exception):
    """A run folder or results file that cannot be reported on; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatencyStats(_Model):
    """Latency of single-input synchronous inference, in milliseconds, over the warm measured runs.

    Percentiles use numpy's default (linear interpolation between closest ranks).
    """

    runs: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    p50_ci95: tuple[float, float] = Field(description="Bootstrap 95 % confidence interval of the median.")


class Fidelity(_Model):
    """Agreement of a variant's outputs with the fp32 reference (the PyTorch model) on the evaluation split."""

    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float


class Measurement(_Model):
    import_s: float
    load_s: float
    first_inference_ms: float
    latency_ms: LatencyStats
    throughput_per_s: float = Field(description="Single-stream: 1000 / mean latency.")
    peak_rss_mb: float = Field(description="Peak resident memory of the fresh benchmark process.")
    rss_after_import_mb: float
    rss_after_load_mb: float
    accuracy: float
    fidelity: Fidelity
    runtime_info: dict[str, Any] = {}
    samples_ms: list[float] = Field(
        [], description="Every timed latency sample, in run order (for distributions); empty in older results."
    )


class ResultRow(_Model):
    """One (model, variant, target) combination."""

    model: str
    variant: str
    target: str
    status: Literal["ok", "skipped", "failed"]
    reason: str | None = None
    artifact: str | None = Field(None, description="Runnable file, relative to the run folder.")
    size_bytes: int | None = None
    sha256: str | None = None
    threads: int | None = None
    measurement: Measurement | None = None
    warnings: list[str] = Field([], description="Problems a reader must see, e.g. an fp32 export that drifts.")
    lossless: bool = Field(
        False,
        description="The variant only exports or converts the model (no quantization, no fp16): the fp32 "
        "baseline that other variants on the same target are compared with.",
    )


class PassRecord(_Model):
    """What one pass did to one model."""

    model: str
    variant: str | None = Field(None, description="None for passes shared by every variant.")
    name: str
    config: dict[str, Any]
    seconds: float = Field(description="Time the pass took when it ran (a cached step keeps its original time).")
    details: dict[str, Any] = {}
    cached: bool = Field(False, description="Reused from the step cache instead of run again.")


class ModelRecord(_Model):
    """A model as it enters the variants (after the shared PyTorch passes): the fp32 reference every variant
    of it is compared with."""

    name: str
    source: str
    input_shape: list[int]
    parameters: int | None = None
    reference_accuracy: float


class RunResults(_Model):
    schema_version: int = SCHEMA_VERSION
    name: str
    created_at: str
    recipe: dict[str, Any]
    recipe_text: str
    environment: dict[str, Any]
    models: list[ModelRecord]
    passes: list[PassRecord]
    rows: list[ResultRow]

    @model_validator(mode="after")
    def _rows_name_known_models(self) -> "RunResults":
        known = {model.name for model in self.models}
        for index, row in enumerate(self.rows):
            if row.model not in known:
                raise ValueError(f"rows[{index}].model {row.model!r} is not in models ({', '.join(sorted(known))})")
        return self


def load_results(run_dir: Path) -> RunResults:
    """Read ``run_dir/results.json``; a missing or malformed file raises ``ResultsError`` naming the field."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ResultsError(f"{path}: not found (is {run_dir} a run folder?)")
    try:
        results = RunResults.model_validate_json(path.read_text(encoding="utf-8"))
        report_settings(results.recipe)  # fail now, naming the field, rather than halfway through rendering
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        prefix = ("recipe", "report") if exc.title == ReportSettings.__name__ else ()
        field = ".".join(str(part) for part in (*prefix, *error["loc"])) or "(top level)"
        raise ResultsError(f"{path}: not a valid results file: {field}: {error['msg']}") from None
    return results
