"""What one benchmark process reports (``bench.worker`` writes it; a device agent returns one per repetition).

One model for both, so that a remote row passes exactly the checks a local one does: a worker bug and an agent
that lies look the same from here, and neither may put a negative, infinite or absurd number into a row.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# Bounds no real measurement reaches: an hour per inference, a day to load; beyond them a number is garbage.
_MAX_MS = 3.6e6
_MAX_S = 86_400.0

Milliseconds = Annotated[float, Field(gt=0, le=_MAX_MS)]
Seconds = Annotated[float, Field(ge=0, le=_MAX_S)]
Megabytes = Annotated[float, Field(ge=0, le=1 << 30)]

REQUIRED_PHASES = ("start", "import", "end")  # what ``bench.harness.aggregate`` subtracts from each other


class _Raw(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, strict=False)


class RawMemory(_Raw):
    phase: Literal["start", "import", "load", "first_inference", "warmup", "end"]
    peak_mb: Megabytes
    rss_mb: Megabytes | None = None
    anon_mb: Megabytes | None = None
    file_mb: Megabytes | None = None


class RawThroughput(_Raw):
    batch_size: int = Field(ge=1)
    parallel: int = Field(ge=1)
    items_per_s: float | None = Field(None, gt=0, le=1e12)
    batch_latency_ms: Milliseconds | None = None
    seconds: Seconds | None = None
    error: str | None = None
    not_measured: str | None = None


class WorkerRaw(_Raw):
    """One repetition's raw numbers; ``index`` and ``order`` are its round and its place in the round."""

    import_s: Seconds
    load_s: Seconds
    first_inference_ms: Milliseconds
    warmup_runs: int = Field(ge=0)
    warmup_s: Seconds
    samples_ms: list[Milliseconds] = Field(min_length=1)
    measure_s: Seconds
    stopped_by: Literal["minimums", "max_runs", "max_s"]
    memory: list[RawMemory]
    cpus: list[Annotated[int, Field(ge=0)]] = []
    steal_fraction: float | None = Field(None, ge=0, le=1)
    throughput: list[RawThroughput]
    runtime_info: dict[str, Any]
    operator_profile: dict[str, Any] | None = None
    scenarios: list[dict[str, Any]] | None = None  # checked as ScenarioResult when the row is aggregated
    # Token inputs timed at their own lengths: each ring sample's length, the padded length, the padded phase.
    ring_lengths: list[Annotated[int, Field(ge=1)]] | None = None
    padded_length: int | None = Field(None, ge=1)
    padded_samples_ms: list[Milliseconds] | None = None
    index: int = Field(0, ge=0)
    order: int = Field(0, ge=0)

    @field_validator("memory")
    @classmethod
    def _phases_present(cls, memory: list[RawMemory]) -> list[RawMemory]:
        missing = [phase for phase in REQUIRED_PHASES if phase not in {snapshot.phase for snapshot in memory}]
        if missing:
            raise ValueError(f"no memory snapshot for the phase(s) {', '.join(missing)}")
        return memory


def check_raw(raw: Any, where: str) -> dict[str, Any]:
    """``raw`` checked against ``WorkerRaw``, as a plain dict (what ``aggregate`` reads); ``ValueError`` names
    ``where`` it came from and the first few problems, one line."""
    try:
        return WorkerRaw.model_validate(raw).model_dump()
    except ValidationError as exc:
        raise ValueError(f"{where}: {problems(exc)}") from None


def problems(exc: ValidationError, count: int = 3) -> str:
    """A pydantic error as 'field: problem' parts, short enough for one line."""
    parts = [
        f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:count]
    ]
    more = len(exc.errors()) - count
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
