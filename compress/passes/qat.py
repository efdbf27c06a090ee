"""Quantization-aware training: fine-tune the model with simulated int8 so that it learns to live with rounding,
then write it as a QDQ ONNX model.

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
from typing import Literal

from pydantic import Field

from edgecraft.compress.base import (
    Artifact,
    Pass,
    PassConfig,
    PassContext,
    PassOutcome,
    TrainingConfig,
)
from edgecraft.compress.cpu import int8_saturates
from edgecraft.compress.facts import model_facts, top1
from edgecraft.compress.registry import register


class QatConfig(PassConfig):
    """Fine-tune with fake-quantized weights (int8, per channel) and activations (uint8), then convert to int8."""

    type: Literal["quantize.qat"] = "quantize.qat"
    epochs: int = Field(2, gt=0)
    lr: float = Field(1e-4, gt=0, le=1, description="Small: the model is already trained, QAT only adapts it to int8.")
    batch_size: int = Field(64, gt=0)
    reduce_range: Literal["auto"] | bool = Field(
        "auto",
        description="7-bit activations (0-127). 'auto': on x86 CPUs without VNNI, where ONNX Runtime's uint8×int8 "
        "kernels saturate (torchao's advice for such CPUs).",
    )

    def reduced(self) -> bool:
        return int8_saturates() if self.reduce_range == "auto" else self.reduce_range


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
        from torchao.quantization.pt2e.quantize_pt2e import (
            convert_pt2e,
            prepare_qat_pt2e,
        )

        from edgecraft.compress import pt2e
        from edgecraft.compress.training import require_class_labels, train

        signature = artifact.signature
        require_class_labels(context.train, signature, "quantize.qat")
        before = model_facts(artifact.model, signature, context.evaluation)
        torch.manual_seed(context.seed)
        # Captured in train mode: BatchNorm keeps updating its statistics while the fake quantizers learn.
        captured = pt2e.capture(copy.deepcopy(artifact.model).train(), signature)
        quantizer = x86.X86InductorQuantizer().set_global(
            x86.get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=config.reduced())
        )
        prepared = prepare_qat_pt2e(captured, quantizer)
        allow_exported_model_train_eval(prepared)  # the shared training loop switches train/eval modes
        training = TrainingConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=context.seed)
        train(
            prepared,
            context.train,
            signature,
            training,
            on_epoch=lambda epoch, loss: context.progress(f"QAT (loss {loss:.3f})", epoch, config.epochs),
        )
        context.progress("QAT: converting to int8", config.epochs, config.epochs)
        converted = convert_pt2e(prepared)
        path = pt2e.to_onnx(converted, signature, context.work_dir / "model.onnx")
        return PassOutcome(
            Artifact("onnx", signature, path=path),
            {
                "parameters": before["parameters"],
                "macs": before["macs"],
                "accuracy_before": before["accuracy"],
                "accuracy_after": top1(converted, signature, context.evaluation),
                "epochs": config.epochs,
                "quantizer": "torchao X86InductorQuantizer (int8 per-channel weights, uint8 activations)",
                "reduce_range": config.reduced(),
            },
        )
