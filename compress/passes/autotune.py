"""Accuracy-aware post-training int8 with Intel Neural Compressor's ``autotune``: try quantization schemes in
turn until one stays within the tolerated accuracy loss, then write the winner as a QDQ ONNX model.

Neural Compressor 3.x quantizes PyTorch (PT2E) graphs only (its ONNX Runtime backend is gone), so this pass
starts from the PyTorch model, like QAT. Tuning is judged on the calibration split, never on the evaluation
split that the report's accuracy comes from.
"""

from __future__ import annotations

import copy

import logging
from typing import Literal

from pydantic import Field

from compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from compress.facts import model_facts, top1
from compress.registry import register

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


@register
class Autotune(Pass):
    name = "quantize.autotune"
    config_model = AutotuneConfig
    input_formats = ("torch",)
    output_format = "onnx"
    libraries = ("neural-compressor", "torchao")

    def apply(self, artifact: Artifact, config: AutotuneConfig, context: PassContext) -> PassOutcome:

        from compress import pt2e
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import StaticQuantConfig, TuningConfig, autotune

        from compress.torch_io import dynamic_shapes, example_inputs, predict
        from compress.training import require_class_labels

        logging.getLogger("neural_compressor").setLevel(logging.WARNING)  # it logs every config at INFO
        signature = artifact.signature
        require_class_labels(context.calibration, signature, "quantize.autotune (validation on the calibration split)")
        before = model_facts(artifact.model, signature, context.evaluation)
        calibration = context.calibration.head(config.calibration_samples)
        trials: list[float] = []

        def calibrate(model) -> None:
            predict(model, calibration.inputs, signature, batch_size=32)

        def validate(model) -> float:
            # autotune scores the fp32 model first, as its baseline, then one model per trial.
            score = top1(model, signature, context.calibration)
            label = f"trial {len(trials)}" if trials else "fp32 baseline"
            trials.append(score)
            context.progress(f"autotune: {label} accuracy {score:.4f}", len(trials), config.max_trials + 1)
            return score

        # Neural Compressor's own export, of a copy: the input model is shared with other variants and later steps,
        # and export and tuning must not change its mode or weights.
        captured = export(
            copy.deepcopy(artifact.model).eval(),
            example_inputs(signature),
            dynamic_shapes=dynamic_shapes(artifact.model, signature),
        )
        tuning = TuningConfig(
            config_set=[StaticQuantConfig(**_SEARCH_SPACE)], tolerable_loss=config.tolerable_loss, max_trials=config.max_trials
        )
        quantized = autotune(captured, tuning, eval_fn=validate, run_fn=calibrate)
        if quantized is None:
            raise NoSchemeFound(
                f"no int8 scheme kept the accuracy loss within tolerable_loss={config.tolerable_loss} "
                f"in {config.max_trials} trial(s) (validation accuracies: {[round(t, 4) for t in trials]})"
            )
        path = pt2e.to_onnx(quantized, signature, context.work_dir / "model.onnx")
        return PassOutcome(
            Artifact("onnx", signature, path=path),
            {
                "parameters": before["parameters"],
                "accuracy_before": before["accuracy"],
                "accuracy_after": top1(quantized, signature, context.evaluation),
                "validation_accuracy_fp32": trials[0] if trials else None,
                "validation_accuracy_trials": trials[1:],
                "trials": len(trials) - 1,
            },
        )
