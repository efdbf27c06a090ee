"""Embeddings: cosine to the fp32 vectors, and retrieval recall@k where the targets group samples."""

from __future__ import annotations

import numpy as np

from edgecraft.bench.evaluators import Evaluator, EvaluatorMismatch, register, top_k
from edgecraft.core.signature import TensorSpec
from edgecraft.targets.feeds import Feeds


@register
class Embedding(Evaluator):
    name = "embedding"
    metric = "mean cosine to fp32"
    headline = "mean_cosine"
    groups_targets = True
    reads_kind = "embedding"
    holds = "an embedding"

    @classmethod
    def fits(cls, output: TensorSpec) -> bool:
        """[batch, dimensions] (or a shape not known), not declared as class scores or plain values."""
        return output.kind not in ("scores", "values") and (output.shape is None or len(output.shape) == 2)

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        spec = outputs[0]
        if spec.shape is not None and len(spec.shape) != 2:
            raise EvaluatorMismatch(
                f"evaluator 'embedding' reads [batch, dimensions] vectors, but output "
                f"{spec.name!r} has shape {spec.shape}"
            )

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
    nearest = top_k(similarity, k)
    queries = [i for i in range(len(groups)) if (groups == groups[i]).sum() > 1]
    if not queries:
        return float("nan")
    return float(np.mean([(groups[nearest[i]] == groups[i]).any() for i in queries]))
