"""The built-in reference models: names, input shapes and training recipes, without importing torch.

The recipe schema validates model names against this table on the CLI's start-up path, so the architectures
themselves (``compress.models``) are named here by import path and loaded only when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from compress.base import TrainingConfig


@dataclass(frozen=True)
class ReferenceModel:
    """How to build a built-in model, what input it takes and how it is trained."""

    name: str
    factory: str
    input_shape: tuple[int, int, int]
    training: TrainingConfig

    def build(self) -> Any:
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)()


REFERENCE_MODELS: dict[str, ReferenceModel] = {
    m.name: m
    for m in (
        ReferenceModel("digits-cnn", "compress.models:DigitsCNN", (1, 32, 32), TrainingConfig(epochs=15, lr=1e-2)),
        ReferenceModel(
            "digits-mobilenet", "compress.models:DigitsMobileNet", (3, 64, 64), TrainingConfig(epochs=8, lr=5e-3)
        ),
    )
}
