"""The training loop shared by the reference models and every training-based pass."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from edgecraft.compress.base import Dataset, TrainingConfig
from edgecraft.compress.torch_io import named_outputs, tensors
from edgecraft.core.signature import Signature


class NotTrainable(ValueError):
    """Data or outputs that the classification training loop cannot use; the message says why."""


def require_class_labels(data: Dataset, signature: Signature, what: str) -> None:
    """Training passes fit class scores to labels: say so, naming the model's outputs, when that cannot work."""
    targets = data.targets
    if targets is None or targets.ndim != 1 or targets.dtype.kind not in "iu":
        got = "no targets" if targets is None else f"targets {targets.dtype.name} {list(targets.shape)}"
        raise NotTrainable(f"{what} trains on class labels (integer targets [samples]); the data has {got}")
    if not len(data):
        raise NotTrainable(f"{what} trains on the train split, which is empty (data.splits.train is 0)")
    if len(signature.outputs) > 1:
        raise NotTrainable(
            f"{what} fits one [batch, classes] output to class labels; the model has "
            f"{len(signature.outputs)} outputs {signature.output_names}, whose losses it cannot know"
        )
    first = signature.outputs[0] if signature.outputs else None
    if first is not None and first.shape is not None and len(first.shape) != 2:
        raise NotTrainable(
            f"{what} fits the first output to class labels, but {first.name!r} has shape "
            f"{first.shape} (outputs: {signature.output_names})"
        )


def first_output(model: nn.Module, inputs: list[torch.Tensor], signature: Signature) -> torch.Tensor:
    """The class scores: the model's first output (the others, e.g. a box head, are not trained here)."""
    return next(iter(named_outputs(model(*inputs), signature.output_names).values()))


def train(
    model: nn.Module,
    data: Dataset,
    signature: Signature,
    config: TrainingConfig,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` with AdamW and a one-cycle schedule; deterministic for a given seed.

    Written here rather than taken from a trainer library because it is ten lines and every training-based
    pass (fine-tuning, distillation, QAT) needs the same loop with a different loss.
    """
    return fit(
        model,
        data,
        signature,
        config,
        loss_fn=lambda logits, _inputs, labels: nn.functional.cross_entropy(logits, labels),
        on_epoch=on_epoch,
    )


def fit(
    model: nn.Module,
    data: Dataset,
    signature: Signature,
    config: TrainingConfig,
    loss_fn: Callable[[torch.Tensor, list[torch.Tensor], torch.Tensor], torch.Tensor],
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """The supervised loop: ``loss_fn(scores, inputs, labels)`` lets distillation add its teacher term."""
    inputs, labels = tensors(data.inputs, signature), torch.from_numpy(np.asarray(data.targets)).long()

    def batch_loss(batch: list[torch.Tensor]) -> torch.Tensor:
        *xb, yb = batch
        return loss_fn(first_output(model, xb, signature), xb, yb)

    return optimise(model, [*inputs, labels], config, batch_loss, on_epoch)


def optimise(
    model: nn.Module,
    arrays: list[torch.Tensor],
    config: TrainingConfig,
    batch_loss: Callable[[list[torch.Tensor]], torch.Tensor],
    on_epoch: Callable[[int, float], bool | None] | None = None,
    train_mode: bool = True,
) -> nn.Module:
    """The shared loop over ``arrays`` (sample-aligned: inputs, and labels where a loss needs them), shuffled
    together each epoch; ``on_epoch(epoch, mean loss)`` returning True stops early (it may evaluate the model:
    the mode is set again at each epoch's start). ``train_mode`` False learns in eval mode: BatchNorm keeps its
    running statistics and dropout stays off."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    count = len(arrays[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(count / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(1, config.epochs * steps_per_epoch)
    )
    for epoch in range(config.epochs):
        model.train(train_mode)
        order = torch.randperm(count, generator=generator)
        total = 0.0
        for start in range(0, count, config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = batch_loss([array[idx] for array in arrays])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        if on_epoch and on_epoch(epoch + 1, total / count):
            break
    model.eval()
    return model
