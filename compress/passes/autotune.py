"""Accuracy-aware post-training int8 with Intel Neural Compressor's ``autotune``: try quantization schemes in
turn until one stays within the tolerated accuracy loss, then write the winner as a QDQ ONNX model.

Neural Compressor 3.x quantizes PyTorch (PT2E) graphs only (its ONNX Runtime backend is gone), so this pass
starts from the PyTorch model, like QAT. Tuning is judged on the calibration split with the recipe's evaluator
(``PassContext.validation``: top-1 accuracy, or top-1 agreement with fp32 for unlabelled data), never on the
evaluation split that the report's accuracy comes from.

Two things Neural Compressor 3.10 does not do, which this pass does itself:
- Judge the result. When ``max_trials`` run out and no trial met ``tolerable_loss``, ``autotune`` still returns
  the best trial's model (it returns None only when its search space runs out first); the pass checks every trial
  against the same bar (score ≥ fp32 score × (1 − tolerable_loss)) and fails with the scores when none met it.
- Store int8 weights. Its PT2E ``convert`` calls torchao's ``convert_pt2e(fold_quantize=False)``, so each weight's
  quantize op stays in the graph and the ONNX file keeps float weights (larger than fp32); the pass folds them
  with the same torchao step that ``fold_quantize=True`` runs (``compress.pt2e.fold_weight_quantize``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from edgecraft.compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from edgecraft.compress.facts import model_facts, top1
from edgecraft.compress.registry import register
from edgecraft.core.signature import Signature

# The schemes tried, in order: the fastest first (per-channel weights, asymmetric uint8 activations).
_SEARCH_SPACE = {"w_granularity": ["per_channel", "per_tensor"], "act_sym": [False, True]}


class AutotuneConfig(PassConfig):
    """Static int8 whose scheme is searched until the accuracy loss is tolerable."""

    type: Literal["quantize.autotune"] = "quantize.autotune"
    tolerable_loss: float = Field(
        0.01, gt=0, lt=1, description="Largest relative accuracy drop accepted (0.01: 1 % of the fp32 accuracy)."
    )
    max_trials: int = Field(4, gt=0, description="Schemes tried at most before giving up.")
    calibration_samples: int = Field(256, gt=0)


class NoSchemeFound(RuntimeError):
    """No scheme within ``max_trials`` met ``tolerable_loss``."""


def meets(score: float, baseline: float, tolerable_loss: float) -> bool:
    """Neural Compressor's own bar (``TuningMonitor.need_stop``): a relative loss against the fp32 score."""
    return score >= baseline * (1 - tolerable_loss)


@register
class Autotune(Pass[AutotuneConfig]):
    config_model = AutotuneConfig
    input_formats = ("torch",)
    output_format = "onnx"
    libraries = ("neural-compressor", "torchao")

    def apply(self, artifact: Artifact, config: AutotuneConfig, context: PassContext) -> PassOutcome:

        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import StaticQuantConfig, TuningConfig, autotune

        from edgecraft.compress import pt2e
        from edgecraft.compress.torch_io import dynamic_shapes, example_inputs, predict

        logging.getLogger("neural_compressor").setLevel(logging.WARNING)  # it logs every config at INFO
        signature = artifact.signature
        score, metric = _scorer(context, signature)
        before = model_facts(artifact.model, signature, context.evaluation)
        calibration = context.calibration.head(config.calibration_samples)
        scores: list[float] = []  # the fp32 baseline, then one per trial

        def calibrate(model) -> None:
            predict(model, calibration.inputs, signature, batch_size=32)

        def validate(model) -> float:
            # autotune scores the fp32 model first, as its baseline, then one model per trial.
            value = score(model)
            label = f"trial {len(scores)}" if scores else "fp32 baseline"
            scores.append(value)
            context.progress(f"autotune: {label} {metric} {value:.4f}", len(scores), config.max_trials + 1)
            return value

        # Neural Compressor's own export, of a copy: the input model is shared with other variants and later steps,
        # and export and tuning must not change its mode or weights.
        captured = export(
            copy.deepcopy(artifact.model).eval(),
            example_inputs(signature),
            dynamic_shapes=dynamic_shapes(artifact.model, signature),
        )
        tuning = TuningConfig(
            config_set=[StaticQuantConfig(**_SEARCH_SPACE)],
            tolerable_loss=config.tolerable_loss,
            max_trials=config.max_trials,
        )
        quantized = autotune(captured, tuning, eval_fn=validate, run_fn=calibrate)
        baseline, trials = scores[0], scores[1:]
        if quantized is None or not any(meets(t, baseline, config.tolerable_loss) for t in trials):
            raise NoSchemeFound(
                f"no int8 scheme kept the {metric} loss within tolerable_loss={config.tolerable_loss} "
                f"(at least {baseline * (1 - config.tolerable_loss):.4f} against fp32's {baseline:.4f}, on the "
                f"calibration split) in {len(trials)} of max_trials={config.max_trials} trial(s): "
                f"{', '.join(f'{t:.4f}' for t in trials) or 'none ran'}"
            )
        # INC returns the first trial that met the bar (the last one it ran): the one to keep.
        pt2e.fold_weight_quantize(quantized)
        path = pt2e.to_onnx(quantized, signature, context.work_dir / "model.onnx")
        return PassOutcome(
            Artifact("onnx", signature, path=path),
            {
                "parameters": before["parameters"],
                "accuracy_before": before["accuracy"],
                "accuracy_after": top1(quantized, signature, context.evaluation),
                "validation_metric": metric,
                "validation_fp32": baseline,
                "validation_trials": trials,
                "trials": len(trials),
            },
        )


def _scorer(context: PassContext, signature: Signature) -> tuple[Callable[[Any], float], str]:
    """How a candidate model is judged: the recipe's evaluator on the calibration split where the run has one,
    else top-1 accuracy against the calibration split's class labels."""
    from edgecraft.compress.torch_io import predict
    from edgecraft.compress.training import require_class_labels

    validation = context.validation
    if validation is not None:
        return (lambda model: validation.score(predict(model, validation.data.inputs, signature))), validation.metric
    require_class_labels(
        context.calibration,
        signature,
        "quantize.autotune (no evaluator given: validation on the calibration split's labels)",
    )

    def accuracy(model: Any) -> float:
        value = top1(model, signature, context.calibration)
        if value is None:  # the labels were checked above; an output of undeclared shape may still not be 2-D
            raise ValueError(
                "quantize.autotune judges top-1 accuracy: the first output must be [batch, classes] scores"
            )
        return value

    return accuracy, "accuracy"
