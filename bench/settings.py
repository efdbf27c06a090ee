"""How long and how often to measure: the protocol's settings, and the named profiles that set them together.

Counts alone are not enough (0.1 ms models would be timed for 20 ms, a cache and frequency state nobody ships),
and durations alone are not either (a 2 s model would get one sample): each phase runs until it has its minimum
count *and* its minimum duration, and stops at a cap so that a slow model cannot run for ever.
"""

from __future__ import annotations

import copy
import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

ProfileName = Literal["quick", "default", "rigorous"]

# What a profile decides; the other settings (threads, pinning, batch sizes, timeout) are the user's.
PROFILES: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: one process per row, a fraction of a second each. Not for decisions.
    "quick": {
        "warmup_runs": 3,
        "warmup_s": 0.05,
        "runs": 20,
        "measure_s": 0.1,
        "max_runs": 20_000,
        "max_s": 5.0,
        "repetitions": 1,
        "throughput_s": 0.1,
        "scenario_min_duration_s": 1.0,
        "scenario_min_queries": 1,
    },
    "default": {
        "warmup_runs": 20,
        "warmup_s": 0.5,
        "runs": 200,
        "measure_s": 1.0,
        "max_runs": 100_000,
        "max_s": 30.0,
        "repetitions": 3,
        "throughput_s": 0.5,
        "scenario_min_duration_s": 10.0,
        "scenario_min_queries": 100,
    },
    # For numbers that get published: longer phases and five interleaved process repetitions; LoadGen's scenarios
    # for MLPerf's minimum duration (600 s) and SingleStream's minimum query count (1024).
    "rigorous": {
        "warmup_runs": 50,
        "warmup_s": 2.0,
        "runs": 1000,
        "measure_s": 5.0,
        "max_runs": 1_000_000,
        "max_s": 60.0,
        "repetitions": 5,
        "throughput_s": 2.0,
        "scenario_min_duration_s": 600.0,
        "scenario_min_queries": 1024,
    },
}


# Upper bounds far beyond any sensible protocol: larger values only overflow the runtimes' C integers and
# timers (a timeout of 1e18 s raises OverflowError) or exhaust memory, after every model has been exported.
_MAX_COUNT = 10_000_000  # inferences of one phase; the worker keeps every sample
_MAX_PHASE_S = 3_600.0
_MAX_THREADS = 1_024
_MAX_BATCH = 65_536


ScenarioName = Literal["single_stream", "multi_stream", "offline", "server"]


class ServerSettings(BaseModel):
    """MLPerf's Server scenario: the latency bound its QPS is found at."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target_latency_ms: float = Field(15.0, gt=0, le=_MAX_PHASE_S * 1000, description="The latency bound (ms).")
    percentile: float = Field(99.0, gt=0, lt=100, description="The percentile of latencies held to the bound.")
    search_runs: int = Field(
        5, ge=1, le=50, description="LoadGen runs of the bisection that finds the highest VALID QPS."
    )


class MultiStreamSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    samples_per_query: int = Field(8, ge=1, le=_MAX_BATCH, description="Samples per query (cameras, streams).")


class BenchSettings(BaseModel):
    """The full protocol of one run, recorded with its results."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    profile: ProfileName = Field("default", description="The profile the phase lengths and repetitions came from.")
    threads: int = Field(
        1,
        gt=0,
        le=_MAX_THREADS,
        description="Intra-op threads of every runtime (ONNX Runtime "
        "intra-op, OpenVINO INFERENCE_NUM_THREADS with the latency hint and one stream, LiteRT "
        "num_threads).",
    )
    warmup_runs: int = Field(ge=0, le=_MAX_COUNT, description="Minimum warm-up inferences.")
    warmup_s: float = Field(ge=0, le=_MAX_PHASE_S, description="Minimum warm-up duration (s).")
    runs: int = Field(gt=1, le=_MAX_COUNT, description="Minimum timed single-input inferences per process.")
    measure_s: float = Field(ge=0, le=_MAX_PHASE_S, description="Minimum duration of the timed phase (s).")
    max_runs: int = Field(gt=1, le=_MAX_COUNT, description="Cap on the inferences of one phase (warm-up or timed).")
    max_s: float = Field(
        gt=0, le=_MAX_PHASE_S, description="Cap on the duration of one phase (s), even below the minimum count."
    )
    repetitions: int = Field(ge=1, le=100, description="Fresh processes per row, in a shuffled order each round.")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the shuffled order of each round (numpy's range).")
    pin_cpus: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, min_length=1, description="Pin every benchmark process to these CPU numbers."
    )
    batch_sizes: list[Annotated[int, Field(gt=0, le=_MAX_BATCH)]] = Field(
        [1, 8], min_length=1, description="Throughput pass: batch sizes."
    )
    parallel_requests: list[Annotated[int, Field(gt=0, le=_MAX_THREADS)]] = Field(
        [1],
        min_length=1,
        description="Throughput pass: requests in flight at once (more than one: the target's "
        "own multi-request API where it has one, OpenVINO's AsyncInferQueue, else a session and thread each).",
    )
    throughput_s: float = Field(ge=0, le=_MAX_PHASE_S, description="Duration of each throughput configuration (s).")
    eval_batch: int = Field(64, gt=0, le=_MAX_BATCH, description="Batch size of the accuracy pass (not timed).")
    operator_profile: bool = Field(
        True,
        description="Profile each row per operator (ONNX Runtime's profiler, "
        "OpenVINO's performance counters, LiteRT's op list) once, in the first repetition's "
        "process after every timed pass, on a session of its own.",
    )
    operator_profile_runs: int = Field(
        10, gt=0, le=10_000, description="Profiled inferences per row (after 3 untimed ones)."
    )
    timeout_s: float = Field(300, gt=0, le=86_400, description="A benchmark process running longer fails its row.")
    scenarios: list[ScenarioName] = Field(
        [],
        description="MLPerf scenarios run through LoadGen on every row, in the first repetition's process after its "
        "timed phases (opt-in: minutes). Server and Offline keep max(parallel_requests) requests in flight.",
    )
    # Defaults (the default profile's) where other settings have none: settings written before scenarios existed
    # (an older client's job, a saved results file) stay valid.
    scenario_min_duration_s: float = Field(
        10.0, ge=0, le=_MAX_PHASE_S, description="LoadGen's minimum duration of each scenario run (s)."
    )
    scenario_min_queries: int = Field(
        100,
        ge=1,
        le=_MAX_COUNT,
        description="LoadGen's minimum query count (raised to what early stopping needs: 64 for SingleStream, "
        "662 for MultiStream).",
    )
    server: ServerSettings = Field(ServerSettings(), description="The Server scenario's latency bound and search.")
    multi_stream: MultiStreamSettings = Field(MultiStreamSettings(), description="The MultiStream scenario's query.")

    @model_validator(mode="after")
    def _caps_above_minimums(self) -> BenchSettings:
        if self.max_runs < max(self.runs, self.warmup_runs):
            raise ValueError(f"max_runs ({self.max_runs}) is below runs or warmup_runs")
        return self


def check_pinnable(cpus: list[int] | None) -> list[int] | None:
    """Refuse CPUs that this machine lacks, or pinning where the platform cannot pin: the benchmark worker would
    fail on each row, after every model has been exported."""
    if not cpus:
        return cpus
    count = os.cpu_count() or 1
    missing = sorted(cpu for cpu in cpus if cpu >= count)
    if missing:
        raise ValueError(f"CPU {missing[0]} does not exist here (CPUs 0-{count - 1})")
    if not hasattr(os, "sched_setaffinity"):
        raise ValueError("this platform cannot pin processes to CPUs")
    return cpus


def profile_settings(profile: ProfileName = "default", **overrides: Any) -> BenchSettings:
    """The named profile with ``overrides`` (those that are not None) on top."""
    values = {key: value for key, value in overrides.items() if value is not None}
    return BenchSettings(**{"profile": profile, **PROFILES[profile], **values})


def parse_cpus(text: str) -> list[int]:
    """``"1"``, ``"0,2"`` or ``"0-3"`` (taskset's list syntax) → CPU numbers."""
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"expected CPU numbers such as '1', '0,2' or '0-3', got {text!r}")
        cpus.extend(range(int(first), int(last or first) + 1))
    return sorted(set(cpus))


def _optional(field: FieldInfo) -> tuple[Any, FieldInfo]:
    assert field.annotation is not None  # every field of BenchSettings is annotated
    copied = copy.deepcopy(field)
    copied.default = None
    return field.annotation | None, copied


class _BenchmarkSpecBase(BaseModel):
    """What every ``benchmark:`` section has; BenchmarkSpec adds the other settings, all optional."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    profile: ProfileName = Field("default", description="quick: smoke tests; default; rigorous: for publication.")


# Any, not tuple[Any, FieldInfo]: mypy checks a ``**`` mapping against create_model's own keywords as well.
_optional_settings: dict[str, Any] = {
    name: _optional(field) for name, field in BenchSettings.model_fields.items() if name != "profile"
}

# The recipe's ``benchmark:`` section: every setting optional (unset ones come from the profile), same constraints;
# its CPUs must exist here (callers check the command line's --pin with check_pinnable).
BenchmarkSpec = create_model(
    "BenchmarkSpec",
    __base__=_BenchmarkSpecBase,
    __validators__={"_pinnable": field_validator("pin_cpus")(lambda cls, cpus: check_pinnable(cpus))},
    __doc__="A profile (quick, default, rigorous) and any of its settings overridden.",
    **_optional_settings,
)


def resolve(spec: _BenchmarkSpecBase, profile: ProfileName | None = None, **overrides: Any) -> BenchSettings:
    """The settings a recipe's ``benchmark:`` section asks for.

    A ``profile`` given here (the command line's ``--quick`` / ``--rigorous``) replaces the recipe's profile *and*
    its explicit phase lengths and repetitions, so that ``--quick`` is always quick; the recipe's other settings
    (threads, pinning, batch sizes, timeout) stay. ``overrides`` that are not None win over everything.
    """
    explicit = spec.model_dump(exclude_none=True, exclude={"profile"})
    if profile is not None:
        explicit = {key: value for key, value in explicit.items() if key not in PROFILES[profile]}
    given = {key: value for key, value in overrides.items() if value is not None}  # None: the recipe's stays
    return profile_settings(profile or spec.profile, **{**explicit, **given})
