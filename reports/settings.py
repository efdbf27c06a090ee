"""The recipe's optional ``report:`` section: the constraints a verdict honours and the thresholds a gate enforces.

It is defined here, not in ``edgecraft.recipe``, because ``reports`` must read it back from a stored results.json
(``RunResults.recipe``) without importing ``edgecraft``; the recipe model imports it from here.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # JSON has no NaN: it would come back as null


class GateThresholds(_Strict):
    """How much worse a candidate run may be than its baseline before ``edgecraft report compare`` fails.

    The upper bounds keep a gate a gate: past them it would pass a doubled latency, a doubled file or a fifth of
    the accuracy gone. The latency floor of 1 % is about the finest change a benchmark on a shared machine can
    resolve; below it every row would be inconclusive."""

    max_latency_increase: float = Field(
        0.10,
        ge=0.01,
        le=1.0,
        description="Relative p50 increase (0.10 = +10 %) from 0.01 to 1; an increase beyond it is a regression when "
        "the two p50 CIs do not overlap, inconclusive when they do.",
    )
    max_size_increase: float = Field(
        0.05, ge=0, le=1.0, description="Relative artifact size increase (0.05 = +5 %) from 0 to 1."
    )
    max_accuracy_drop: float = Field(
        0.01,
        ge=0,
        le=0.2,
        description="Accuracy the candidate may lose against the baseline, as a fraction (0.01 = 1 point) from 0 "
        "to 0.2.",
    )


class ReportSettings(_Strict):
    """Constraints for the verdict and prices for the cost column."""

    max_accuracy_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="A variant is recommended only if its accuracy is at most this far (0.01 = 1 point) below the "
        "fp32 reference accuracy of its model.",
    )
    price_per_hour: float | None = Field(
        None, gt=0, description="Price of the target machine per hour; adds a cost-per-1M-predictions column."
    )
    min_output_snr_db: float = Field(
        20,
        ge=0,
        le=200,
        description="A lossy row (quantized, fp16, ...) with any output whose SNR against the fp32 reference is "
        "below this many dB gets a warning in the verdict naming the output, whatever its headline metric says.",
    )
    max_agreement_gap: float = Field(
        0.1,
        gt=0,
        le=1,
        description="A lossy row whose top-1 agreement with fp32 is more than this (0.1 = 10 points) below the "
        "best other lossy row of its model gets a warning in the verdict.",
    )
    gate: GateThresholds = GateThresholds()


def with_overrides(model: M, **overrides: Any) -> M:
    """``model`` with the given non-None values replaced, validated again (command-line options beat the recipe)."""
    values = {key: value for key, value in overrides.items() if value is not None}
    return type(model).model_validate({**model.model_dump(), **values})


def report_settings(recipe: dict[str, Any]) -> ReportSettings:
    """The ``report`` section of a stored recipe, or the defaults when the recipe has none."""
    return ReportSettings.model_validate(recipe.get("report") or {})
