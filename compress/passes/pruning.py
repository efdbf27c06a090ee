"""Pruning of PyTorch models: structured (channels removed, the model really shrinks) and unstructured
(weights zeroed, the file compresses but dense runtimes run no faster).

Structured pruning uses torch-pruning's dependency graph: removing a channel must also remove it from every
layer that consumes it (BatchNorm, the next conv, skip connections), and hand-written surgery gets that wrong.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import abstractmethod
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import Field

from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome, TrainingConfig
from edgecraft.compress.facts import before_after, model_facts
from edgecraft.compress.registry import register
from edgecraft.core.signature import Signature


class FineTuning(PassConfig):
    """Options shared by passes that fine-tune the model afterwards on the train split."""

    finetune_epochs: int = Field(0, ge=0)
    lr: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(64, gt=0)

    def training(self, seed: int) -> TrainingConfig:
        return TrainingConfig(epochs=self.finetune_epochs, lr=self.lr, batch_size=self.batch_size, seed=seed)


def finetune(model: Any, signature: Signature, config: FineTuning, context: PassContext, label: str) -> None:
    from edgecraft.compress.training import require_class_labels, train

    if config.finetune_epochs:
        require_class_labels(context.train, signature, f"{label} (finetune_epochs)")
        total = config.finetune_epochs
        train(
            model,
            context.train,
            signature,
            config.training(context.seed),
            on_epoch=lambda epoch, loss: context.progress(f"{label} (loss {loss:.3f})", epoch, total),
        )


def prune_channels(model: Any, signature: Signature, ratio: float, importance: str, scope: str = "layer") -> None:
    """Remove ``ratio`` of the channels of every prunable layer in place; the classifier's outputs are kept."""
    import torch
    import torch_pruning

    from edgecraft.compress.torch_io import example_inputs

    criterion = (
        torch_pruning.importance.RandomImportance()
        if importance == "random"
        else torch_pruning.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2)
    )
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    torch_pruning.pruner.MetaPruner(
        model,
        example_inputs(signature, batch=1),
        importance=criterion,
        pruning_ratio=ratio,
        global_pruning=scope == "global",
        ignored_layers=classifier,
    ).step()


PruningConfig = TypeVar("PruningConfig", bound=FineTuning)


class PruningPass(Pass[PruningConfig]):
    """Copy the model, prune it, optionally fine-tune, make it permanent, and report before and after."""

    input_formats = ("torch",)
    output_format = "torch"
    libraries = ("torch-pruning",)
    note: ClassVar[str | None] = None

    @abstractmethod
    def prune(self, model: Any, config: PruningConfig, signature: Signature) -> None:
        """Prune ``model`` in place."""

    def make_permanent(self, model: Any) -> None:
        """Called after fine-tuning: fold whatever the pruning left temporary (e.g. masks) into the weights."""

    def apply(self, artifact: Artifact, config: PruningConfig, context: PassContext) -> PassOutcome:
        model = copy.deepcopy(artifact.model).eval()
        before = model_facts(model, artifact.signature, context.evaluation)
        self.prune(model, config, artifact.signature)
        finetune(model, artifact.signature, config, context, f"fine-tuning after {self.name}")
        self.make_permanent(model)
        details = before_after(before, model_facts(model.eval(), artifact.signature, context.evaluation))
        if self.note:
            details["note"] = self.note
        return PassOutcome(dataclasses.replace(artifact, model=model), details)


class StructuredPruningConfig(FineTuning):
    """Remove a fraction of the channels of every prunable layer (the classifier's outputs are kept)."""

    type: Literal["prune.structured"] = "prune.structured"
    ratio: float = Field(0.5, gt=0, lt=1, description="Fraction of channels to remove.")
    importance: Literal["l1", "l2", "random"] = Field("l2", description="Group magnitude norm used to rank channels.")
    scope: Literal["layer", "global"] = Field(
        "layer", description="'layer': the same ratio in every layer; 'global': rank channels across layers."
    )


@register
class StructuredPruning(PruningPass[StructuredPruningConfig]):
    config_model = StructuredPruningConfig

    def prune(self, model: Any, config: StructuredPruningConfig, signature: Signature) -> None:
        prune_channels(model, signature, config.ratio, config.importance, config.scope)


class UnstructuredPruningConfig(FineTuning):
    """Zero the smallest-magnitude weights of conv and linear layers, and make it permanent."""

    type: Literal["prune.unstructured"] = "prune.unstructured"
    sparsity: float = Field(0.5, gt=0, lt=1, description="Fraction of weights set to zero.")
    scope: Literal["layer", "global"] = "global"


@register
class UnstructuredPruning(PruningPass[UnstructuredPruningConfig]):
    config_model = UnstructuredPruningConfig
    note = "zeros shrink the compressed file; dense runtimes do not run faster"

    def prune(self, model: Any, config: UnstructuredPruningConfig, signature: Signature) -> None:
        import torch
        from torch.nn.utils import prune

        targets = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        if config.scope == "global":
            prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=config.sparsity)
        else:
            for module, name in targets:
                prune.l1_unstructured(module, name, amount=config.sparsity)

    def make_permanent(self, model: Any) -> None:
        # Fine-tuning ran with the masks in place (pruned weights stayed zero); now fold them into the weights.
        from torch.nn.utils import prune

        for module in model.modules():
            if prune.is_pruned(module) and hasattr(module, "weight_mask"):
                prune.remove(module, "weight")
