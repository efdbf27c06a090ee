"""Evaluators of class scores: top-k accuracy against labels, and top-1 agreement with fp32 without them."""

from __future__ import annotations

import numpy as np

from edgecraft.bench.evaluators import Evaluator, EvaluatorMismatch, register, top_k
from edgecraft.core.signature import TensorSpec
from edgecraft.targets.feeds import Feeds


def _could_be_scores(output: TensorSpec) -> bool:
    """[batch, classes ≥ 2] (or a shape not known), not declared as an embedding or plain values."""
    if output.kind in ("embedding", "values"):
        return False
    shape = output.shape
    return shape is None or (len(shape) == 2 and not (isinstance(shape[1], int) and shape[1] < 2))


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


@register
class Classification(Evaluator):
    name = "classification"
    metric = "top-1 accuracy"
    headline = "top1"
    needs_targets = True
    reads_kind = "scores"
    holds = "class scores"

    @classmethod
    def fits(cls, output: TensorSpec) -> bool:
        return _could_be_scores(output)

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        super().check(outputs, targets)
        assert targets is not None  # super().check refuses None: this evaluator needs targets
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
        assert targets is not None  # check() refused data without targets
        hits = top_k(scores, k) == targets[:, None]
        return {"top1": float((scores.argmax(1) == targets).mean()), f"top{k}": float(hits.any(1).mean())}


@register
class Agreement(Evaluator):
    name = "agreement"
    metric = "top-1 agreement with fp32"
    headline = "top1_agreement"
    reads_kind = "scores"
    holds = "class scores"

    @classmethod
    def fits(cls, output: TensorSpec) -> bool:
        return _could_be_scores(output)

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        _scores_check(self.name, outputs)

    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        name = next(iter(outputs))
        scores, expected = outputs[name], reference[name].argmax(1)
        return {
            "top1_agreement": float((scores.argmax(1) == expected).mean()),
            f"fp32_top1_in_top{k}": float((top_k(scores, k) == expected[:, None]).any(1).mean()),
        }
