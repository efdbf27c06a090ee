"""Evaluators: what "accuracy" means for a model, from its outputs, the fp32 reference's outputs and the targets.

A registry, like passes and targets, one module each in this package: ``classification`` (top-1 / top-5 against
class labels) and ``agreement`` (top-1 agreement with the fp32 reference, for unlabelled data) in ``scores``,
``embedding`` (cosine to the fp32 embeddings and retrieval recall@k), ``regression`` (per-output absolute error
and SNR), or a user's ``module:function``.
Each has one headline metric, a fraction where higher is better: the accuracy budget, the verdict, the Pareto
front and the compare gate all use it, and the report names it. numpy only: the agent may evaluate too.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar, SupportsFloat, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgecraft.core.registry import Registry
from edgecraft.core.results import Quality
from edgecraft.core.signature import TensorSpec
from edgecraft.targets.feeds import Feeds

# A user's 'package.module:function' (evaluators here; factories and data sources in recipes): dotted
# identifiers only, since a relative or empty module name makes the import raise.
FUNCTION_REFERENCE = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*:[^\W\d]\w*")


class EvaluatorMismatch(ValueError):
    """An evaluator that does not fit the model's outputs or the data's targets."""


class EvaluatorSpec(BaseModel):
    """A recipe's choice of evaluator, and the output(s) it reads."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(
        description="classification, agreement, embedding, regression, or 'module:function' (called as "
        "function(outputs, reference, targets) with dicts of arrays by output name; returns a float, or a dict "
        "of floats whose first entry is the headline)."
    )
    outputs: list[str] | None = Field(
        None, description="Outputs it reads (default: the first; regression: every output)."
    )
    k: int = Field(5, gt=0, description="k of top-k accuracy and of retrieval recall@k.")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EVALUATORS and not FUNCTION_REFERENCE.fullmatch(value):
            raise ValueError(
                f"unknown evaluator {value!r}; known: {', '.join(EVALUATORS.names())}, or 'module:function'"
            )
        return value


class Evaluator(ABC):
    name: ClassVar[str]
    metric: ClassVar[str]
    headline: ClassVar[str]
    needs_targets: ClassVar[bool] = False
    reads_all_outputs: ClassVar[bool] = False
    # The targets are group ids (samples that belong together, e.g. a query and its document): splits keep
    # each group whole, or no split would hold a pair to retrieve.
    groups_targets: ClassVar[bool] = False

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        """Raise ``EvaluatorMismatch`` when the outputs or targets cannot mean what this evaluator measures."""
        if self.needs_targets and targets is None:
            raise EvaluatorMismatch(f"evaluator {self.name!r} needs targets (labels) in the data, and it has none")

    @abstractmethod
    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        """Every figure, the headline among them."""


EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator", "evaluators", key=lambda cls: cls.name, package="edgecraft.bench.evaluators"
)
register = EVALUATORS.register


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's ``k`` highest scores (unordered)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def snr_db(reference: np.ndarray, values: np.ndarray) -> float | None:
    """10·log10(Σref² / Σ(values − ref)²); None where it is no finite number: identical outputs (infinite SNR)
    or an all-zero reference (no signal to compare the error with)."""
    noise = float(((values.astype(np.float64) - reference.astype(np.float64)) ** 2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    if noise == 0 or signal == 0:
        return None
    return float(10 * np.log10(signal / noise))


def groups_targets(spec: EvaluatorSpec | None) -> bool:
    return spec is not None and spec.type in EVALUATORS and EVALUATORS.get(spec.type).groups_targets


def choose(spec: EvaluatorSpec | None, outputs: list[TensorSpec], targets: np.ndarray | None) -> EvaluatorSpec:
    """The recipe's evaluator, or the default: classification with integer labels, agreement without."""
    if spec is not None:
        return spec
    labelled = targets is not None and targets.ndim == 1 and targets.dtype.kind in "iu"
    return EvaluatorSpec(type="classification" if labelled else "agreement")


def read_outputs(spec: EvaluatorSpec, outputs: list[TensorSpec]) -> list[TensorSpec]:
    """The output specs the evaluator reads; an unknown name raises ``EvaluatorMismatch`` with the known ones."""
    by_name = {output.name: output for output in outputs}
    names = spec.outputs or ([o.name for o in outputs] if _reads_all(spec) else [outputs[0].name])
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise EvaluatorMismatch(
            f"evaluator {spec.type!r} reads output(s) {unknown}, but the model's outputs are {list(by_name)}"
        )
    return [by_name[name] for name in names]


def _reads_all(spec: EvaluatorSpec) -> bool:
    return spec.type in EVALUATORS and EVALUATORS.get(spec.type).reads_all_outputs


def check(spec: EvaluatorSpec, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
    """Fail early, before any long work, when the evaluator cannot apply to this model and data."""
    read = read_outputs(spec, outputs)
    if spec.type in EVALUATORS:
        EVALUATORS.get(spec.type)().check(read, targets)


def evaluate(spec: EvaluatorSpec, outputs: Feeds, reference: Feeds, targets: np.ndarray | None) -> Quality:
    """The evaluator's figures on ``outputs`` (every output by name) against the reference and the targets."""
    names = spec.outputs or (list(outputs) if _reads_all(spec) else [next(iter(reference))])
    read = {name: outputs[name] for name in names}
    expected = {name: reference[name] for name in names}
    if spec.type in EVALUATORS:
        evaluator = EVALUATORS.get(spec.type)()
        figures = evaluator.measure(read, expected, targets, spec.k)
        return Quality(
            evaluator=spec.type, metric=evaluator.metric, value=figures[evaluator.headline], metrics=_finite(figures)
        )
    module, _, function = spec.type.partition(":")
    result: Any = getattr(importlib.import_module(module), function)(read, expected, targets)
    # float() takes a real number of any kind, and refuses what the user's function should not have returned.
    figures = (
        {"score": float(cast(SupportsFloat, result))}
        if np.isscalar(result)
        else {k: float(v) for k, v in dict(result).items()}
    )
    headline = next(iter(figures))
    return Quality(evaluator=spec.type, metric=headline, value=figures[headline], metrics=_finite(figures))


def metric_name(evaluator: str) -> str:
    """The headline metric's name: a registered evaluator's own, else (a user's ``module:function``) its name."""
    return EVALUATORS.get(evaluator).metric if evaluator in EVALUATORS else evaluator


def not_measured(spec: EvaluatorSpec | None, reason: str) -> Quality:
    name = spec.type if spec else "none"
    return Quality(evaluator=name, metric=metric_name(name), value=None, not_measured=reason)


def _finite(figures: dict[str, float]) -> dict[str, float]:
    """JSON has no NaN or infinity: a figure that is not finite is left out rather than written as null."""
    return {key: value for key, value in figures.items() if np.isfinite(value)}
