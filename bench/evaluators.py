"""Evaluators: what "accuracy" means for a model, from its outputs, the fp32 reference's outputs and the targets.

A registry, like passes and targets: ``classification`` (top-1 / top-5 against class labels), ``agreement``
(top-1 agreement with the fp32 reference, for unlabelled data), ``embedding`` (cosine to the fp32 embeddings
and retrieval recall@k), ``regression`` (per-output absolute error and SNR), or a user's ``module:function``.
Each has one headline metric, a fraction where higher is better: the accuracy budget, the verdict, the Pareto
front and the compare gate all use it, and the report names it. numpy only: the agent may evaluate too.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from reports.schema import Quality, TensorSpec
from targets.feeds import Feeds

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
            raise ValueError(f"unknown evaluator {value!r}; known: {', '.join(EVALUATORS)}, or 'module:function'")
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


EVALUATORS: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    EVALUATORS[cls.name] = cls
    return cls


def _scores_check(name: str, outputs: list[TensorSpec]) -> None:
    """Class scores: one [batch, classes] output, not declared as an embedding or plain values."""
    spec = outputs[0]
    if spec.kind in ("embedding", "values"):
        raise EvaluatorMismatch(
            f"evaluator {name!r} reads class scores, but output {spec.name!r} is declared as {spec.kind}: "
            f"choose {'embedding' if spec.kind == 'embedding' else 'regression'}"
        )
    if spec.shape is not None and (len(spec.shape) != 2 or spec.shape[1] in (0, 1)):
        raise EvaluatorMismatch(
            f"evaluator {name!r} reads [batch, classes] scores, but output {spec.name!r} has shape {spec.shape}"
        )


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


@register
class Classification(Evaluator):
    name = "classification"
    metric = "top-1 accuracy"
    headline = "top1"
    needs_targets = True

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        super().check(outputs, targets)
        _scores_check(self.name, outputs)
        if targets.ndim != 1 or targets.dtype.kind not in "iu":
            raise EvaluatorMismatch(
                f"evaluator 'classification' needs integer class labels [samples], got targets "
                f"{targets.dtype.name} {list(targets.shape)}"
            )
        classes = outputs[0].shape[1] if outputs[0].shape else None
        if isinstance(classes, int) and len(targets) and int(targets.max()) >= classes:
            raise EvaluatorMismatch(
                f"evaluator 'classification': label {int(targets.max())} is beyond output "
                f"{outputs[0].name!r}'s {classes} classes"
            )

    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        scores = next(iter(outputs.values()))
        hits = _top_k(scores, k) == targets[:, None]
        return {"top1": float((scores.argmax(1) == targets).mean()), f"top{k}": float(hits.any(1).mean())}


@register
class Agreement(Evaluator):
    name = "agreement"
    metric = "top-1 agreement with fp32"
    headline = "top1_agreement"

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        _scores_check(self.name, outputs)

    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        name = next(iter(outputs))
        scores, expected = outputs[name], reference[name].argmax(1)
        return {
            "top1_agreement": float((scores.argmax(1) == expected).mean()),
            f"fp32_top1_in_top{k}": float((_top_k(scores, k) == expected[:, None]).any(1).mean()),
        }


@register
class Embedding(Evaluator):
    name = "embedding"
    metric = "mean cosine to fp32"
    headline = "mean_cosine"
    groups_targets = True

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        spec = outputs[0]
        if spec.shape is not None and len(spec.shape) != 2:
            raise EvaluatorMismatch(f"evaluator 'embedding' reads [batch, dimensions] vectors, but output "
                                    f"{spec.name!r} has shape {spec.shape}")

    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        name = next(iter(outputs))
        vectors, expected = _unit(outputs[name]), _unit(reference[name])
        cosines = (vectors * expected).sum(1)
        figures = {"mean_cosine": float(cosines.mean()), "min_cosine": float(cosines.min())}
        if targets is not None and targets.ndim == 1:
            figures[f"recall_at_{k}"] = _recall_at_k(vectors, targets, k)
        return figures


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _recall_at_k(vectors: np.ndarray, groups: np.ndarray, k: int) -> float:
    """Share of samples for which another sample of the same group is among the k nearest (cosine) others."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = _top_k(similarity, k)
    queries = [i for i in range(len(groups)) if (groups == groups[i]).sum() > 1]
    if not queries:
        return float("nan")
    return float(np.mean([(groups[nearest[i]] == groups[i]).any() for i in queries]))


@register
class Regression(Evaluator):
    name = "regression"
    metric = "1 − relative L2 error"
    headline = "relative_accuracy"
    reads_all_outputs = True

    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        """Against the targets where they have the output's shape (one output), else against the fp32 outputs."""
        figures: dict[str, float] = {}
        errors, norms = 0.0, 0.0
        for name, values in outputs.items():
            truth = targets if targets is not None and len(outputs) == 1 and targets.shape == values.shape \
                else reference[name]
            diff = values.astype(np.float64) - truth.astype(np.float64)
            figures[f"{name}.max_abs_error"] = float(np.abs(diff).max())
            figures[f"{name}.mean_abs_error"] = float(np.abs(diff).mean())
            snr = snr_db(truth, values)
            if snr is not None:
                figures[f"{name}.snr_db"] = snr
            errors += float((diff**2).sum())
            norms += float((truth.astype(np.float64) ** 2).sum())
        figures["relative_accuracy"] = max(0.0, 1.0 - np.sqrt(errors / norms)) if norms else float(errors == 0)
        return figures


def snr_db(reference: np.ndarray, values: np.ndarray) -> float | None:
    """10·log10(Σref² / Σ(values − ref)²); None where it is no finite number: identical outputs (infinite SNR)
    or an all-zero reference (no signal to compare the error with)."""
    noise = float(((values.astype(np.float64) - reference.astype(np.float64)) ** 2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    if noise == 0 or signal == 0:
        return None
    return float(10 * np.log10(signal / noise))


def groups_targets(spec: EvaluatorSpec | None) -> bool:
    return spec is not None and spec.type in EVALUATORS and EVALUATORS[spec.type].groups_targets


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
        raise EvaluatorMismatch(f"evaluator {spec.type!r} reads output(s) {unknown}, but the model's outputs are "
                                f"{list(by_name)}")
    return [by_name[name] for name in names]


def _reads_all(spec: EvaluatorSpec) -> bool:
    return spec.type in EVALUATORS and EVALUATORS[spec.type].reads_all_outputs


def check(spec: EvaluatorSpec, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
    """Fail early, before any long work, when the evaluator cannot apply to this model and data."""
    read = read_outputs(spec, outputs)
    if spec.type in EVALUATORS:
        EVALUATORS[spec.type]().check(read, targets)


def evaluate(spec: EvaluatorSpec, outputs: Feeds, reference: Feeds, targets: np.ndarray | None) -> Quality:
    """The evaluator's figures on ``outputs`` (every output by name) against the reference and the targets."""
    names = spec.outputs or (list(outputs) if _reads_all(spec) else [next(iter(reference))])
    read = {name: outputs[name] for name in names}
    expected = {name: reference[name] for name in names}
    if spec.type in EVALUATORS:
        evaluator = EVALUATORS[spec.type]()
        figures = evaluator.measure(read, expected, targets, spec.k)
        return Quality(evaluator=spec.type, metric=evaluator.metric, value=figures[evaluator.headline],
                       metrics=_finite(figures))
    module, _, function = spec.type.partition(":")
    result: Any = getattr(importlib.import_module(module), function)(read, expected, targets)
    figures = {"score": float(result)} if np.isscalar(result) else {k: float(v) for k, v in dict(result).items()}
    headline = next(iter(figures))
    return Quality(evaluator=spec.type, metric=headline, value=figures[headline], metrics=_finite(figures))


def not_measured(spec: EvaluatorSpec | None, reason: str) -> Quality:
    name = spec.type if spec else "none"
    metric = EVALUATORS[name].metric if name in EVALUATORS else name
    return Quality(evaluator=name, metric=metric, value=None, not_measured=reason)


def _finite(figures: dict[str, float]) -> dict[str, float]:
    """JSON has no NaN or infinity: a figure that is not finite is left out rather than written as null."""
    return {key: value for key, value in figures.items() if np.isfinite(value)}
