"""Pruning of PyTorch models: structured (channels removed, the model really shrinks) and unstructured
(weights zeroed, the file compresses but dense runtimes run no faster).

Structured pruning uses torch-pruning's dependency graph: removing a channel must also remove it from every
layer that consumes it (BatchNorm, the next conv, skip connections), and hand-written surgery gets that wrong.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome, TrainingConfig
from compress.facts import before_after, model_facts
from compress.registry import register


class FineTuning(PassConfig):
    """Options shared by passes that fine-tune the model afterwards on the train split."""

    finetune_epochs: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, gt=0)

    def training(self, seed: int) -> TrainingConfig:
        return TrainingConfig(epochs=self.finetune_epochs, lr=self.lr, batch_size=self.batch_size, seed=seed)


def finetune(model: Any, config: FineTuning, context: PassContext, label: str) -> None:
    from compress.training import train

    if config.finetune_epochs:
        total = config.finetune_epochs
        train(model, *context.train, config.training(context.seed),
              on_epoch=lambda epoch, loss: context.progress(f"{label} (loss {loss:.3f})", epoch, total))


class StructuredPruningConfig(FineTuning):
    """Remove a fraction of the channels of every prunable layer (the classifier's outputs are kept)."""

    type: Literal["prune.structured"] = "prune.structured"
    ratio: float = Field(0.5, gt=0, lt=1, description="Fraction of channels to remove.")
    importance: Literal["l1", "l2", "random"] = Field("l2", description="Group magnitude norm used to rank channels.")
    scope: Literal["layer", "global"] = Field(
        "layer", description="'layer': the same ratio in every layer; 'global': rank channels across layers."
    )


@register
class StructuredPruning(Pass):
    name = "prune.structured"
    config_model = StructuredPruningConfig
    input_formats = ("torch",)
    output_format = "torch"

    def apply(self, artifact: Artifact, config: StructuredPruningConfig, context: PassContext) -> PassOutcome:
        import torch
        import torch_pruning

        model = copy.deepcopy(artifact.model).eval()
        before = model_facts(model, artifact.input_shape, *context.evaluation)
        importance = (
            torch_pruning.importance.RandomImportance()
            if config.importance == "random"
            else torch_pruning.importance.GroupMagnitudeImportance(p=1 if config.importance == "l1" else 2)
        )
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
        pruner = torch_pruning.pruner.MetaPruner(
            model,
            torch.zeros((1, *artifact.input_shape)),
            importance=importance,
            pruning_ratio=config.ratio,
            global_pruning=config.scope == "global",
            ignored_layers=classifier,
        )
        pruner.step()
        finetune(model, config, context, "fine-tuning the pruned model")
        after = model_facts(model.eval(), artifact.input_shape, *context.evaluation)
        return PassOutcome(Artifact("torch", artifact.input_shape, model=model), before_after(before, after))


class UnstructuredPruningConfig(FineTuning):
    """Zero the smallest-magnitude weights of conv and linear layers, and make it permanent."""

    type: Literal["prune.unstructured"] = "prune.unstructured"
    sparsity: float = Field(0.5, gt=0, lt=1, description="Fraction of weights set to zero.")
    scope: Literal["layer", "global"] = "global"


@register
class UnstructuredPruning(Pass):
    name = "prune.unstructured"
    config_model = UnstructuredPruningConfig
    input_formats = ("torch",)
    output_format = "torch"

    def apply(self, artifact: Artifact, config: UnstructuredPruningConfig, context: PassContext) -> PassOutcome:
        import torch
        from torch.nn.utils import prune

        model = copy.deepcopy(artifact.model).eval()
        before = model_facts(model, artifact.input_shape, *context.evaluation)
        targets = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        if config.scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=config.sparsity)
        else:
            for module, name in targets:
                prune.l1_unstructured(module, name, amount=config.sparsity)
        # Fine-tune with the masks in place (pruned weights stay zero), then fold the masks into the weights.
        finetune(model, config, context, "fine-tuning the sparse model")
        for module, name in targets:
            prune.remove(module, name)
        after = model_facts(model.eval(), artifact.input_shape, *context.evaluation)
        details = before_after(before, after)
        details["note"] = "zeros shrink the compressed file; dense runtimes do not run faster"
        return PassOutcome(Artifact("torch", artifact.input_shape, model=model), details)
