"""Knowledge distillation: train a smaller student to match the softened outputs of the model entering the pass.

The loop is compress.training.fit with a distillation loss (Hinton et al.): α·KL(teacher_T ‖ student_T)·T² +
(1-α)·CE. It is a few lines on top of the shared loop, so no distillation library is pulled in for it.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, model_validator

from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome, TrainingConfig
from edgecraft.compress.facts import model_facts, top1
from edgecraft.compress.passes.pruning import prune_channels
from edgecraft.compress.registry import register
from edgecraft.compress.zoo import REFERENCE_MODELS
from edgecraft.core.signature import Signature


class DistillationConfig(PassConfig):
    type: Literal["distill"] = "distill"
    student: str = Field(
        "width:0.5",
        description="'width:W': the teacher with every prunable layer's channels scaled by W (0 < W < 1), "
        "freshly initialised; 'builtin:NAME': a built-in architecture; 'input': the model entering the pass, "
        "trained further (e.g. after pruning; needs teacher: original).",
    )
    teacher: Literal["input", "original"] = Field(
        "input",
        description="'input': the model entering the pass; 'original': the recipe's model before any pass "
        "(distill a pruned model from the unpruned one).",
    )
    epochs: int = Field(10, gt=0)
    temperature: float = Field(
        4.0, gt=0, le=100, description="Softens both models' logits; the teacher term is scaled by its square."
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the teacher term; 0 trains on labels alone.")
    lr: float = Field(3e-3, gt=0, le=1)
    batch_size: int = Field(64, gt=0)
    compare_with_student_alone: bool = Field(
        True, description="Also train the same student on labels alone for the same epochs and report both."
    )

    @model_validator(mode="after")
    def _student_form(self) -> DistillationConfig:
        kind, _, value = self.student.partition(":")
        if kind == "input":
            if self.teacher == "input":
                raise ValueError("student 'input' needs teacher: original (a model cannot teach itself)")
        elif kind == "width":
            try:
                width = float(value)
            except ValueError:
                width = -1.0
            if not 0 < width < 1:
                raise ValueError(f"student 'width:W' needs 0 < W < 1, got {self.student!r}")
        elif kind == "builtin":
            if value not in REFERENCE_MODELS:
                raise ValueError(f"unknown built-in student {value!r}; known: {', '.join(REFERENCE_MODELS)}")
        else:
            raise ValueError(f"student must be 'width:W', 'builtin:NAME' or 'input', got {self.student!r}")
        return self


def build_student(entering: Any, spec: str, signature: Signature) -> Any:
    """The student: the entering model itself, or a freshly initialised one (a built-in, or the entering
    model's architecture with fewer channels)."""
    kind, _, value = spec.partition(":")
    if kind == "input":
        return copy.deepcopy(entering)
    if kind == "builtin":
        return REFERENCE_MODELS[value].build()
    student = copy.deepcopy(entering)
    prune_channels(student, signature, 1 - float(value), importance="random")
    for module in student.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return student


@register
class Distillation(Pass[DistillationConfig]):
    config_model = DistillationConfig
    input_formats = ("torch",)
    output_format = "torch"
    libraries = ("torch-pruning",)

    def apply(self, artifact: Artifact, config: DistillationConfig, context: PassContext) -> PassOutcome:
        import torch
        from torch.nn import functional

        from edgecraft.compress.training import first_output, fit, require_class_labels

        if config.teacher == "original" and context.original is None:
            raise ValueError("teacher: original needs a PyTorch model in the recipe (not an onnx file)")
        signature = artifact.signature
        require_class_labels(context.train, signature, "distill")
        teacher = (artifact.model if config.teacher == "input" else context.original).eval()
        torch.manual_seed(context.seed)
        student = build_student(artifact.model, config.student, signature)
        alone = copy.deepcopy(student) if config.compare_with_student_alone else None
        training = TrainingConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=context.seed)
        temperature, alpha = config.temperature, config.alpha

        def loss(logits: torch.Tensor, inputs: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                soft_targets = functional.log_softmax(first_output(teacher, inputs, signature) / temperature, dim=1)
            kl = functional.kl_div(
                functional.log_softmax(logits / temperature, dim=1),
                soft_targets,
                reduction="batchmean",
                log_target=True,
            )
            return alpha * kl * temperature**2 + (1 - alpha) * functional.cross_entropy(logits, labels)

        def progress(label: str):
            return lambda epoch, value: context.progress(f"{label} (loss {value:.3f})", epoch, config.epochs)

        fit(student, context.train, signature, training, loss, on_epoch=progress("distilling"))
        details = {
            f"teacher_{key}": value for key, value in model_facts(teacher, signature, context.evaluation).items()
        }
        details.update({f"student_{k}": v for k, v in model_facts(student, signature, context.evaluation).items()})
        if alone is not None:
            fit(
                alone,
                context.train,
                signature,
                training,
                lambda logits, _inputs, labels: functional.cross_entropy(logits, labels),
                on_epoch=progress("training the student alone"),
            )
            details["student_alone_accuracy"] = top1(alone, signature, context.evaluation)
        architecture = config.student if config.student.startswith("builtin:") else artifact.architecture
        return PassOutcome(Artifact("torch", signature, model=student.eval(), architecture=architecture), details)
