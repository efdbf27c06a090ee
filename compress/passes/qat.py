"""Quantization-aware training by self-distillation: the fp32 model entering the pass teaches its own
fake-quantized copy on unlabelled data, then the copy is written as a QDQ ONNX model.

The student learns to reproduce *every* output of the teacher (KL on class scores, cosine on embeddings, relative
MSE on anything else), so no labels and no classification head are needed: an embedding model, a detector or a
multi-output model trains the same way. Labels, where the data has them, may be mixed in (``alpha`` < 1). The
metric per epoch is the recipe's evaluator on the calibration split; the best epoch's weights are kept.

torch 2.13 has no PT2E quantizers in ``torch.ao`` any more; torchao's PT2E flow (``prepare_qat_pt2e`` →
train → ``convert_pt2e``) is their maintained home, and its converted graph exports to QDQ ONNX, which ONNX
Runtime and OpenVINO run in int8 (add ``convert.openvino`` for an IR, ``convert.tflite`` for LiteRT). NNCF's
own torch QAT was not chosen: it compiles a C++ extension at first use (over a minute here, and a compiler
on every machine).

For ONNX Runtime speed, relay the result through ``quantize.static`` (which keeps the trained weights and lays the
graph out the way ORT fuses it): torchao's x86 layout leaves convolutions feeding residual Adds in float, its
XNNPACK layout leaves ReLU6 Clips in float, and with ``reduce_range`` the 7-bit activations cannot be expressed by
an ONNX QuantizeLinear, so ORT keeps each ReLU6 Clip and fuses almost no convolution (figures: README).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgecraft.compress.base import (
    Artifact,
    Dataset,
    Pass,
    PassConfig,
    PassContext,
    PassOutcome,
    TrainingConfig,
)
from edgecraft.compress.cpu import int8_saturates
from edgecraft.compress.facts import model_facts, top1
from edgecraft.compress.registry import register
from edgecraft.core.signature import Signature

Loss = Literal["kl", "mse", "cosine"]

# What each declared output kind is distilled with.
KIND_LOSSES: dict[str, Loss] = {"scores": "kl", "embedding": "cosine", "values": "mse"}
# The evaluators' headline metric names (edgecraft.bench.evaluators, a layer compress may not import) → the loss
# that optimises what each one measures: for a single output whose kind the signature does not declare.
EVALUATOR_LOSSES: dict[str, Loss] = {
    "top-1 accuracy": "kl",
    "top-1 agreement with fp32": "kl",
    "mean cosine to fp32": "cosine",
}
NO_EVALUATOR = "distillation loss on the calibration split (no evaluator; lower is better)"


class QatConfig(PassConfig):
    """Fine-tune with fake-quantized weights (int8, per channel) and activations (uint8) to match the fp32 model's
    outputs, then convert to int8."""

    type: Literal["quantize.qat"] = "quantize.qat"
    epochs: int = Field(2, gt=0)
    lr: float = Field(1e-4, gt=0, le=1, description="Small: the model is already trained, QAT only adapts it to int8.")
    batch_size: int = Field(64, gt=0)
    reduce_range: Literal["auto"] | bool = Field(
        "auto",
        description="7-bit activations (0-127). 'auto': on x86 CPUs without VNNI, where ONNX Runtime's uint8×int8 "
        "kernels saturate (torchao's advice for such CPUs).",
    )
    alpha: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Weight of the teacher term: 1 distils from the fp32 model alone (no labels needed); below 1 "
        "adds (1 - alpha)·cross-entropy on class labels (one scores output).",
    )
    loss: Literal["auto"] | dict[str, Loss] = Field(
        "auto",
        description="Per output: kl, mse or cosine. 'auto' (and outputs not named): KL on kind scores, cosine on "
        "embedding, MSE on values; an undeclared single output follows the evaluator (embedding → cosine, "
        "classification/agreement → KL), else MSE (relative to the teacher's mean square).",
    )
    temperature: float = Field(1.0, gt=0, le=100, description="Softens both sides of a KL term (scaled by T²).")
    keep_float: list[str] = Field(
        [],
        description="Regular expressions of module names left in float (searched in each name, e.g. "
        "'output\\.dense$'): layers whose int8 error training does not recover.",
    )
    freeze_batchnorm: bool = Field(
        True,
        description="Learn with BatchNorm's running statistics frozen (eval mode): the few hundred unlabelled "
        "samples of a calibration split re-estimate them badly (EfficientNet-Lite0 fell from 72 % to 7 % agreement "
        "with fp32 in two epochs with them updating).",
    )
    patience: int | None = Field(
        None,
        gt=0,
        description="Stop after this many epochs without a better calibration-split metric; the best epoch's "
        "weights are kept in any case.",
    )

    def reduced(self) -> bool:
        return int8_saturates() if self.reduce_range == "auto" else self.reduce_range


def choose_losses(
    signature: Signature, metric: str | None, asked: Literal["auto"] | dict[str, Loss]
) -> dict[str, Loss]:
    """Each output's distillation loss: the recipe's, else from its declared kind, else from the evaluator."""
    names = signature.output_names
    chosen = {} if asked == "auto" else asked
    unknown = sorted(set(chosen) - set(names))
    if unknown:
        raise ValueError(f"quantize.qat loss: unknown output(s) {unknown}; the model's outputs are {names}")
    hint = EVALUATOR_LOSSES.get(metric or "") if len(names) == 1 else None
    return {
        spec.name: chosen.get(spec.name) or KIND_LOSSES.get(spec.kind or "") or hint or "mse"
        for spec in signature.outputs
    }


def class_labels(data: Dataset, losses: dict[str, Loss]) -> bool:
    """Whether ``data``'s targets are class labels for the model's one output, distilled as class scores (an
    embedding model's group ids are integer targets too, but no output predicts them)."""
    targets = data.targets
    is_labels = targets is not None and targets.ndim == 1 and targets.dtype.kind in "iu" and len(data) > 0
    return is_labels and list(losses.values()) == ["kl"]


def training_data(context: PassContext) -> Dataset:
    """The calibration split, plus the train split where it has samples: distillation needs no labels."""
    parts = [context.calibration] + ([context.train] if len(context.train) else [])
    targets = [part.targets for part in parts]
    return Dataset(
        {name: np.concatenate([part.inputs[name] for part in parts]) for name in context.calibration.inputs},
        None if any(t is None for t in targets) else np.concatenate(targets),  # type: ignore[arg-type]
        context.calibration.layout,
    )


def distillation_term(loss: Loss, student: Any, teacher: Any, temperature: float) -> Any:
    """How far one student output is from the teacher's (0 when equal); scale-free, so that outputs add up."""
    from torch.nn import functional

    if loss == "kl":
        log_student = functional.log_softmax(student / temperature, dim=-1)
        log_teacher = functional.log_softmax(teacher / temperature, dim=-1)
        return (log_teacher.exp() * (log_teacher - log_student)).sum(-1).mean() * temperature**2
    if loss == "cosine":
        return (1 - functional.cosine_similarity(student, teacher, dim=-1)).mean()
    return ((student - teacher) ** 2).mean() / (teacher**2).mean().clamp(min=1e-12)


@register
class QuantizationAwareTraining(Pass[QatConfig]):
    config_model = QatConfig
    input_formats = ("torch",)
    output_format = "onnx"
    libraries = ("torchao",)

    def environment_facts(self, config: QatConfig) -> dict:
        return {"reduce_range": config.reduced()}

    def apply(self, artifact: Artifact, config: QatConfig, context: PassContext) -> PassOutcome:
        import torch
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

        from edgecraft.compress import pt2e
        from edgecraft.compress.torch_io import named_outputs, predict, tensors
        from edgecraft.compress.training import optimise, require_class_labels

        signature = artifact.signature
        validation = context.validation
        losses = choose_losses(signature, validation.metric if validation else None, config.loss)
        data = training_data(context)
        if config.alpha < 1:
            what = f"quantize.qat with alpha {config.alpha:g} < 1 (alpha: 1 needs no labels)"
            require_class_labels(data, signature, what)
            if not class_labels(data, losses):
                raise ValueError(f"{what} fits class labels to class scores, but its output is distilled as {losses}")
        teacher = copy.deepcopy(artifact.model).eval().requires_grad_(False)
        targets = predict(teacher, data.inputs, signature)  # the teacher is frozen: its outputs, once
        torch.manual_seed(context.seed)
        # Captured in train mode: BatchNorm keeps updating its statistics while the fake quantizers learn.
        captured = without_dropout(pt2e.capture(copy.deepcopy(artifact.model).train(), signature))
        quantizer = x86.X86InductorQuantizer().set_global(
            x86.get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=config.reduced())
        )
        kept = float_modules(artifact.model, config.keep_float)
        for name in kept:
            quantizer.set_module_name_qconfig(name, None)
        prepared = prepare_qat_pt2e(captured, quantizer)
        allow_exported_model_train_eval(prepared)  # the shared training loop switches train/eval modes

        inputs = tensors(data.inputs, signature)
        names = list(losses)
        labels = [torch.from_numpy(data.targets).long()] if config.alpha < 1 and data.targets is not None else []

        def objective(student: dict[str, Any], teacher_outputs: list[Any]) -> Any:
            return sum(
                distillation_term(losses[name], student[name], expected, config.temperature)
                for name, expected in zip(names, teacher_outputs)
            )

        def batch_loss(batch: list[Any]) -> Any:
            xb, tb = batch[: len(inputs)], batch[len(inputs) : len(inputs) + len(names)]
            student = named_outputs(prepared(*xb), signature.output_names)
            loss = objective(student, tb)
            if not labels:
                return loss
            ce = torch.nn.functional.cross_entropy(student[names[0]], batch[-1])
            return config.alpha * loss + (1 - config.alpha) * ce

        metric, higher_is_better, score = _scorer(prepared, teacher, signature, context, objective)
        history = [score(True)]
        best: dict[str, Any] = {"epoch": 0, "state": _state(prepared)}

        def after_epoch(epoch: int, loss: float) -> bool:
            history.append(score(False))
            context.progress(f"QAT (loss {loss:.4f}, {metric} {history[-1]:.4f})", epoch, config.epochs)
            new, old = history[-1], history[best["epoch"]]
            if new > old if higher_is_better else new < old:
                best.update(epoch=epoch, state=_state(prepared))
            return config.patience is not None and epoch - best["epoch"] >= config.patience

        training = TrainingConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=context.seed)
        teacher_arrays = [torch.from_numpy(targets[name]) for name in names]
        optimise(
            prepared,
            [*inputs, *teacher_arrays, *labels],
            training,
            batch_loss,
            after_epoch,
            train_mode=not config.freeze_batchnorm,
        )
        prepared.load_state_dict(best["state"])
        context.progress("QAT: converting to int8", config.epochs, config.epochs)
        converted = convert_pt2e(prepared)
        path = pt2e.to_onnx(converted, signature, context.work_dir / "model.onnx")
        labelled = class_labels(context.evaluation, losses)
        facts = model_facts(artifact.model, signature, Dataset(context.evaluation.inputs))
        details = {
            "parameters": facts["parameters"],
            "macs": facts["macs"],
            "objective": "self-distillation from the fp32 model"
            if config.alpha == 1
            else f"{config.alpha:g}·distillation from the fp32 model + {1 - config.alpha:g}·cross-entropy on labels",
            "losses": losses,
            "alpha": config.alpha,
            "temperature": config.temperature,
            "training_samples": len(data),
            "kept_float": kept,
            "metric": metric,
            "metric_before": history[0],
            "metric_per_epoch": history[1:],
            "best_epoch": best["epoch"],
            "epochs_run": len(history) - 1,
            "stopped_early": len(history) - 1 < config.epochs,
            "quantizer": "torchao X86InductorQuantizer (int8 per-channel weights, uint8 activations)",
            "reduce_range": config.reduced(),
        }
        if labelled:
            details["accuracy_before"] = top1(artifact.model, signature, context.evaluation)
            details["accuracy_after"] = top1(converted, signature, context.evaluation)
        return PassOutcome(Artifact("onnx", signature, path=path), details)


def _scorer(
    prepared: Any,
    teacher: Any,
    signature: Signature,
    context: PassContext,
    objective: Callable[[dict[str, Any], list[Any]], Any],
) -> tuple[str, bool, Callable[[bool], float]]:
    """The metric that picks the best epoch: the evaluator on the calibration split (the fake-quantized model in
    eval mode against the fp32 reference; higher is better), else the distillation loss there (lower is better).
    ``score(calibrate)``: with True, the fake quantizers' observers see the data first (before training, they have
    seen none)."""
    import torch
    from torchao.quantization.pt2e import disable_observer, enable_observer

    from edgecraft.compress.torch_io import predict

    validation = context.validation
    data = validation.data if validation else context.calibration

    def outputs(calibrate: bool) -> dict[str, np.ndarray]:
        if calibrate:
            predict(prepared, data.inputs, signature)
        prepared.apply(disable_observer)  # measuring must not move the quantization ranges
        try:
            return predict(prepared, data.inputs, signature)
        finally:
            prepared.apply(enable_observer)

    if validation is not None:
        return validation.metric, True, lambda calibrate: validation.score(outputs(calibrate))
    expected = predict(teacher, data.inputs, signature)

    def loss(calibrate: bool) -> float:
        produced = {name: torch.from_numpy(value) for name, value in outputs(calibrate).items()}
        with torch.no_grad():
            return float(objective(produced, [torch.from_numpy(expected[name]) for name in signature.output_names]))

    return NO_EVALUATOR, False, loss


def float_modules(model: Any, patterns: list[str]) -> list[str]:
    """The names of the modules that ``patterns`` keep in float; a pattern that matches none is an error."""
    import re

    names = [name for name, _ in model.named_modules() if name]
    unmatched = [pattern for pattern in patterns if not any(re.search(pattern, name) for name in names)]
    if unmatched:
        raise ValueError(f"quantize.qat keep_float: {unmatched} match no module of the model (e.g. {names[-1]!r})")
    return [name for name in names if any(re.search(pattern, name) for pattern in patterns)]


def without_dropout(captured: Any) -> Any:
    """``captured`` with its dropout ops removed, in place. The student must reproduce the teacher, which runs
    without dropout; and torchao's train/eval switch for exported graphs rewrites every dropout to p=0.5 (its
    pattern ignores the literal): after one evaluation MiniLM trained at a cosine of 0.37 to its teacher."""
    import torch

    for node in list(captured.graph.nodes):
        if node.target == torch.ops.aten.dropout.default:
            node.replace_all_uses_with(node.args[0])
            captured.graph.erase_node(node)
    captured.recompile()
    return captured


def _state(model: Any) -> dict[str, Any]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
