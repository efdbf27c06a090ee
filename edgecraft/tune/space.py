"""The recipe's ``search:`` section: which pass parameters a tune samples, what it minimises and the accuracy budget.

A parameter is named by its place in the recipe, ``variants.NAME.passes[I].FIELD`` or ``passes[I].FIELD`` (the
shared passes), and takes exactly one of ``float: [low, high]``, ``int: [low, high]`` or ``choice: [a, b, ...]``.
``concrete`` writes the recipe a trial runs: the base recipe's own YAML data with the sampled values in place and no
``search:`` section, which ``edgecraft run`` reads as it is.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)
_PATH = re.compile(
    r"(?:variants\.(?P<variant>[A-Za-z0-9][A-Za-z0-9_.-]*?)\.)?passes\[(?P<index>\d+)\]\.(?P<field>[a-z_]+)"
)
Scalar = float | int | str | bool


class ParameterSpec(BaseModel):
    """One searched parameter: exactly one of ``float``, ``int`` or ``choice``."""

    model_config = _STRICT
    float_range: tuple[float, float] | None = Field(
        None, alias="float", description="[low, high], sampled uniformly (log-uniformly with log: true)."
    )
    int_range: tuple[int, int] | None = Field(None, alias="int", description="[low, high], both included.")
    choice: list[Scalar | None] | None = Field(
        None,
        min_length=1,
        description="The values to choose from (null: the pass's 'not set', e.g. max_drop: null for plain int8).",
    )
    log: bool = Field(False, description="Sample a float or int range on a log scale (low must be > 0).")
    step: float | None = Field(None, gt=0, description="Sample a range on this grid (low, low + step, ...).")

    @model_validator(mode="after")
    def _one_kind(self) -> ParameterSpec:
        given = [name for name in ("float", "int", "choice") if getattr(self, self._attr(name)) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of float: [low, high], int: [low, high] or choice: [...], got "
                f"{', '.join(given) or 'none'}"
            )
        bounds = self.float_range or self.int_range
        if bounds is not None:
            low, high = bounds
            if not low < high:
                raise ValueError(f"a range needs low < high, got [{low}, {high}]")
            if self.log and low <= 0:
                raise ValueError(f"a log range needs low > 0, got {low}")
        elif self.log or self.step:
            raise ValueError("log and step apply to float and int ranges, not to choice")
        if self.choice is not None and len({repr(value) for value in self.choice}) != len(self.choice):
            raise ValueError(f"choice values must differ, got {self.choice}")
        return self

    @staticmethod
    def _attr(name: str) -> str:
        return {"float": "float_range", "int": "int_range", "choice": "choice"}[name]

    @property
    def kind(self) -> str:
        return "float" if self.float_range else "int" if self.int_range else "choice"

    def extremes(self) -> list[Scalar | None]:
        """The values that must each be valid for the pass: both ends of a range, every choice."""
        return list(self.float_range or self.int_range or self.choice or [])


class Objective(BaseModel):
    model_config = _STRICT
    latency: Literal["p50", "p90", "p95", "p99"] | None = Field(None, description="Latency statistic to minimise.")
    size: bool = Field(False, description="Minimise the model file's size.")


class SearchSpec(BaseModel):
    """What ``edgecraft tune`` searches: pass parameters, objectives on one target, and the accuracy budget.

    ``edgecraft run`` ignores this section."""

    model_config = _STRICT
    parameters: dict[str, ParameterSpec] = Field(
        description="Searched pass parameters by place: 'variants.NAME.passes[I].FIELD' or 'passes[I].FIELD' (shared "
        "passes), each {float: [low, high]}, {int: [low, high]} or {choice: [...]}."
    )
    variant: str | None = Field(
        None, description="The variant whose row is scored (default: the one variant the parameters name)."
    )
    model: str | None = Field(None, description="The model whose row is scored (default: the recipe's first).")
    target: str | None = Field(
        None, description="The target whose row is scored, e.g. 'onnxruntime:cpu' (default: the recipe's first)."
    )
    objectives: list[Literal["latency", "size"]] = Field(
        ["latency"],
        min_length=1,
        description="What to minimise: 'latency' (the row's p50, or 'statistic') and/or "
        "'size' (bytes). One objective uses TPE, several NSGA-II.",
    )
    statistic: Literal["p50", "p90", "p95", "p99"] = Field("p50", description="The latency statistic minimised.")
    max_drop: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Constraint: the row's metric at most this far below the "
        "fp32 reference (a fraction: 0.01 = 1 point).",
    )
    latency_tolerance: float = Field(
        0.03,
        ge=0,
        le=0.5,
        description="Feasible trials whose latency is within this fraction of the fastest "
        "one's count as equally fast (the quick profile's noise on a shared machine is a few percent): among them "
        "the chosen point is the most accurate, then the smallest, then the fastest. 0: the fastest, however small "
        "the margin.",
    )
    prune: bool = Field(
        True,
        description="Stop a trial before export and benchmark when the metric after its "
        "training passes (on the calibration split) already misses the budget.",
    )
    trials: int = Field(20, gt=0, le=100000, description="Trials in the study (--trials overrides).")
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the sampler (--seed overrides).")
    batch: int = Field(
        4,
        ge=1,
        le=256,
        description="Trials asked from the sampler together, before any of them "
        "is told: the sampler sees the same history whether they run one by one or on several "
        "workers, so a seed gives the same trials however many workers run them.",
    )
    sampler: Literal["auto", "tpe", "nsga2", "random", "grid"] = Field(
        "auto", description="auto: TPE for one objective, NSGA-II for several; grid needs only choices and int ranges."
    )
    study: str | None = Field(
        None,
        description="Study name in the storage (default: the recipe's name); a tune "
        "with the same name continues the study.",
    )

    @model_validator(mode="after")
    def _check(self) -> SearchSpec:
        if not self.parameters:
            raise ValueError("the search space is empty: name at least one parameter under 'parameters'")
        for place in self.parameters:
            if not _PATH.fullmatch(place):
                raise ValueError(f"parameter {place!r}: expected 'variants.NAME.passes[I].FIELD' or 'passes[I].FIELD'")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives must differ, got {self.objectives}")
        if self.sampler == "grid" and any(
            spec.kind == "float" and spec.step is None for spec in self.parameters.values()
        ):
            raise ValueError("sampler 'grid' needs choices, int ranges or float ranges with a step")
        return self

    def variants_named(self) -> set[str | None]:
        return {parse_place(place)[0] for place in self.parameters}


def parse_place(place: str) -> tuple[str | None, int, str]:
    """``variants.NAME.passes[I].FIELD`` → (NAME, I, FIELD); shared passes have no variant (None)."""
    match = _PATH.fullmatch(place)
    assert match is not None  # checked by SearchSpec
    return match["variant"], int(match["index"]), match["field"]


def pass_entry(data: dict[str, Any], place: str) -> dict[str, Any]:
    """The pass mapping a parameter lives in, in a recipe's YAML data; KeyError/IndexError says what is missing."""
    variant, index, _ = parse_place(place)
    if variant is None:
        passes = data.get("passes") or []
    else:
        named = [
            entry for entry in data.get("variants") or [] if isinstance(entry, dict) and entry.get("name") == variant
        ]
        if not named:
            known = ", ".join(str(entry.get("name")) for entry in data.get("variants") or [] if isinstance(entry, dict))
            raise KeyError(f"no variant named {variant!r} (variants: {known})")
        passes = named[0].get("passes") or []
    if index >= len(passes):
        where = f"variant {variant!r}" if variant else "the shared passes"
        raise IndexError(f"{where} has {len(passes)} pass(es), no passes[{index}]")
    return passes[index]


def concrete(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The recipe data a trial runs: ``data`` (a recipe's YAML data) without ``search`` and with ``values`` set.

    Aliased passes (``*prune``) are copied apart first, so a value lands only where its parameter names it."""
    result = copy.deepcopy({key: value for key, value in data.items() if key != "search"})
    result = _unshare(result)
    for place, value in values.items():
        pass_entry(result, place)[parse_place(place)[2]] = value
    return result


def _unshare(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _unshare(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unshare(item) for item in value]
    return value
