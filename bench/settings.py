"""How long and how often to measure: the protocol's settings, and the named profiles that set them together.

Counts alone are not enough (0.1 ms models would be timed for 20 ms, a cache and frequency state nobody ships),
and durations alone are not either (a 2 s model would get one sample): each phase runs until it has its minimum
count *and* its minimum duration, and stops at a cap so that a slow model cannot run for ever.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from pydantic.fields import FieldInfo

ProfileName = Literal["quick", "default", "rigorous"]

# What a profile decides; the other settings (threads, pinning, batch sizes, timeout) are the user's.
PROFILES: dict[str, dict[str, Any]] = {
    # For tests and smoke runs: one process per row, a fraction of a second each. Not for decisions.
    "quick": {"warmup_runs": 3, "warmup_s": 0.05, "runs": 20, "measure_s": 0.1, "max_runs": 20_000, "max_s": 5.0,
              "repetitions": 1, "throughput_s": 0.1},
    "default": {"warmup_runs": 20, "warmup_s": 0.5, "runs": 200, "measure_s": 1.0, "max_runs": 100_000,
                "max_s": 30.0, "repetitions": 3, "throughput_s": 0.5},
    # For numbers that get published: longer phases and five interleaved process repetitions.
    "rigorous": {"warmup_runs": 50, "warmup_s": 2.0, "runs": 1000, "measure_s": 5.0, "max_runs": 1_000_000,
                 "max_s": 60.0, "repetitions": 5, "throughput_s": 2.0},
}


class BenchSettings(BaseModel):
    """The full protocol of one run, recorded with its results."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: ProfileName = Field("default", description="The profile the phase lengths and repetitions came from.")
    threads: int = Field(1, gt=0, description="Intra-op threads of every runtime (ONNX Runtime intra-op, OpenVINO "
                         "INFERENCE_NUM_THREADS with the latency hint and one stream, LiteRT num_threads).")
    warmup_runs: int = Field(ge=0, description="Minimum warm-up inferences.")
    warmup_s: float = Field(ge=0, description="Minimum warm-up duration (s).")
    runs: int = Field(gt=1, description="Minimum timed single-input inferences per process.")
    measure_s: float = Field(ge=0, description="Minimum duration of the timed phase (s).")
    max_runs: int = Field(gt=1, description="Cap on the inferences of one phase (warm-up or timed).")
    max_s: float = Field(gt=0, description="Cap on the duration of one phase (s), even below the minimum count.")
    repetitions: int = Field(ge=1, description="Fresh processes per row, in a shuffled order each round.")
    seed: int = Field(0, description="Seed of the shuffled order of each round.")
    pin_cpus: list[int] | None = Field(None, description="Pin every benchmark process to these CPU numbers.")
    batch_sizes: list[int] = Field([1, 8], min_length=1, description="Throughput pass: batch sizes.")
    parallel_requests: list[int] = Field(
        [1], min_length=1, description="Throughput pass: concurrent requests, each on its own session and thread."
    )
    throughput_s: float = Field(ge=0, description="Duration of each throughput configuration (s).")
    eval_batch: int = Field(64, gt=0, description="Batch size of the accuracy pass (not timed).")
    timeout_s: float = Field(300, gt=0, description="A benchmark process running longer fails its row.")

    @model_validator(mode="after")
    def _caps_above_minimums(self) -> "BenchSettings":
        if self.max_runs < max(self.runs, self.warmup_runs):
            raise ValueError(f"max_runs ({self.max_runs}) is below runs or warmup_runs")
        if any(value <= 0 for value in (*self.batch_sizes, *self.parallel_requests)):
            raise ValueError("batch_sizes and parallel_requests must be positive")
        if self.pin_cpus is not None and (not self.pin_cpus or min(self.pin_cpus) < 0):
            raise ValueError("pin_cpus must list CPU numbers (0, 1, ...)")
        return self


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
    copied = copy.deepcopy(field)
    copied.default = None
    return field.annotation | None, copied


# The recipe's ``benchmark:`` section: every setting optional (unset ones come from the profile), same constraints.
BenchmarkSpec = create_model(
    "BenchmarkSpec",
    __config__=ConfigDict(extra="forbid"),
    __doc__="A profile (quick, default, rigorous) and any of its settings overridden.",
    profile=(ProfileName, Field("default", description="quick: smoke tests; default; rigorous: for publication.")),
    **{name: _optional(field) for name, field in BenchSettings.model_fields.items() if name != "profile"},
)


def resolve(spec: BaseModel, profile: ProfileName | None = None, **overrides: Any) -> BenchSettings:
    """The settings a recipe's ``benchmark:`` section asks for.

    A ``profile`` given here (the command line's ``--quick`` / ``--rigorous``) replaces the recipe's profile *and*
    its explicit phase lengths and repetitions, so that ``--quick`` is always quick; the recipe's other settings
    (threads, pinning, batch sizes, timeout) stay. ``overrides`` that are not None win over everything.
    """
    explicit = spec.model_dump(exclude_none=True, exclude={"profile"})
    if profile is not None:
        explicit = {key: value for key, value in explicit.items() if key not in PROFILES[profile]}
    return profile_settings(profile or spec.profile, **{**explicit, **overrides})
