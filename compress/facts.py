"""What every PyTorch pass reports about a model before and after it: size, cost, sparsity, accuracy."""

from __future__ import annotations

from typing import Any

from edgecraft.compress.base import Dataset
from edgecraft.core.signature import Signature


def model_facts(model: Any, signature: Signature, data: Dataset) -> dict[str, Any]:
    """Parameters, MACs, zero fraction of weights and, where the data has class labels, top-1 accuracy."""
    import torch_pruning

    from edgecraft.compress.torch_io import example_inputs

    macs, parameters = torch_pruning.utils.count_ops_and_params(model, example_inputs(signature, batch=1))
    weights = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return {
        "parameters": int(parameters),
        "macs": int(macs),
        "sparsity": zeros / total if total else 0.0,
        "accuracy": top1(model, signature, data),
    }


def top1(model: Any, signature: Signature, data: Dataset) -> float | None:
    """Top-1 accuracy of the first output against class labels; None where the data has no class labels."""
    from edgecraft.compress.torch_io import predict

    targets = data.targets
    if targets is None or targets.ndim != 1 or targets.dtype.kind not in "iu" or not len(data):
        return None
    scores = next(iter(predict(model, data.inputs, signature).values()))
    if scores.ndim != 2:
        return None
    return float((scores.argmax(1) == targets).mean())


def before_after(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {f"{key}_{when}": facts[key] for key in before for when, facts in (("before", before), ("after", after))}
