"""What every PyTorch pass reports about a model before and after it: size, cost, sparsity, accuracy."""

from __future__ import annotations

from typing import Any

import numpy as np


def model_facts(model: Any, input_shape: tuple[int, ...], x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Parameters, MACs, zero fraction of weights and accuracy: what every torch pass reports before and after."""
    import torch
    import torch_pruning

    from compress.training import predict

    macs, parameters = torch_pruning.utils.count_ops_and_params(model, torch.zeros((1, *input_shape)))
    weights = [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    return {
        "parameters": int(parameters),
        "macs": int(macs),
        "sparsity": zeros / total if total else 0.0,
        "accuracy": float((predict(model, x).argmax(1) == y).mean()),
    }


def before_after(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {f"{key}_{when}": facts[key] for key in before for when, facts in (("before", before), ("after", after))}
