"""The supervised training loop shared by the reference models and every training-based pass."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from compress.base import TrainingConfig


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainingConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` with AdamW and a cosine schedule; deterministic for a given seed.

    Written here rather than taken from a trainer library because it is ten lines and every training-based
    pass (fine-tuning, distillation, QAT) needs the same loop with a different loss.
    """
    return fit(model, x, y, config, loss_fn=lambda logits, _xb, yb: nn.functional.cross_entropy(logits, yb),
               on_epoch=on_epoch)


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainingConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """The shared loop: ``loss_fn(logits, inputs, labels)`` lets distillation add its teacher term."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y).long()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(inputs) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(1, config.epochs * steps_per_epoch)
    )
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(inputs), config.batch_size):
            idx = order[start : start + config.batch_size]
            xb, yb = inputs[idx], labels[idx]
            loss = loss_fn(model(xb), xb, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        if on_epoch:
            on_epoch(epoch + 1, total / len(inputs))
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of ``model`` on ``x`` in eval mode, as float32 numpy."""
    model.eval()
    outputs = [model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outputs).astype(np.float32)
