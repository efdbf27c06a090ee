"""The pass interface: a pass takes a model artifact and a config, and returns a new artifact plus a record.

Pass modules must not import torch, onnxruntime or any other heavy library at module level: the registry
imports every pass module to build the recipe schema, and that happens on the CLI's start-up path.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgecraft.core.signature import Signature
from edgecraft.targets.feeds import Layout


@dataclass(frozen=True)
class Artifact:
    """A model at one step of the pipeline, with its signature (named inputs and outputs).

    ``format`` is ``"torch"`` (``model`` holds the live ``nn.Module``) or a file format such as ``"onnx"``
    (``path`` holds the file). ``architecture`` says what a PyTorch model's stored weights can be poured back
    into (see ``compress.module_state``): ``"original"``, the recipe's own model (pruned or not), or
    ``"builtin:NAME"``, a built-in's.
    """

    format: str
    signature: Signature
    path: Path | None = None
    model: Any = None
    architecture: str = "original"


@dataclass(frozen=True)
class Dataset:
    """Named inputs (each [samples, ...], one sample per index) and optional targets ([samples, ...]: labels,
    boxes, pair ids); ``layout`` says how the model takes them (batch axes, fixed batch, state)."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray | None = None
    layout: Layout = field(default_factory=Layout)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(
            {name: array[indices] for name, array in self.inputs.items()},
            None if self.targets is None else self.targets[indices],
            self.layout,
        )

    def head(self, count: int) -> Dataset:
        return self.subset(np.arange(min(count, len(self))))

    def samples(self) -> list[dict[str, np.ndarray]]:
        """One call's feeds per sample, as the model takes them: what calibration readers hand to quantizers."""
        per_call = self.layout.per_call
        return [
            self.layout.to_model({name: array[i : i + per_call] for name, array in self.inputs.items()})
            for i in range(0, len(self) - per_call + 1, per_call)
        ]


@dataclass
class Validation:
    """The recipe's evaluator on the calibration split: what accuracy-aware passes search against.

    Never the evaluation split, which the report's accuracy comes from: a search tuned on it would report its own
    selection bias. ``reference`` (the fp32 model's outputs on ``data``) is computed on first use only.
    """

    data: Dataset
    metric: str
    reference_fn: Callable[[], dict[str, np.ndarray]]
    # The headline metric of (outputs, fp32 reference, targets) for the same samples.
    score_fn: Callable[[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray | None], float]

    @functools.cached_property
    def reference(self) -> dict[str, np.ndarray]:
        return self.reference_fn()

    def score(self, outputs: dict[str, np.ndarray]) -> float:
        """The evaluator's headline metric of ``outputs`` (every output by name, for ``data``'s samples)."""
        return float(self.score_fn(outputs, self.reference, self.data.targets))

    def interval(
        self, outputs: dict[str, np.ndarray], resamples: int = 200, seed: int = 0
    ) -> tuple[float, float] | None:
        """A 95 % bootstrap interval of ``score(outputs)`` over the split's samples: how far a metric measured on a
        hundred samples can be trusted (a budget of one point is one sample in a hundred). None where an output
        does not hold one row per sample (a model fed off axis 0, a stateful one): no resampling is honest there."""
        count = len(self.data)
        arrays = [*outputs.values(), *self.reference.values()]
        if count < 2 or any(array.ndim == 0 or len(array) != count for array in arrays):
            return None
        rng = np.random.default_rng(seed)
        targets = self.data.targets
        values = []
        for _ in range(resamples):
            pick = rng.integers(0, count, count)
            values.append(
                self.score_fn(
                    {name: array[pick] for name, array in outputs.items()},
                    {name: array[pick] for name, array in self.reference.items()},
                    None if targets is None else targets[pick],
                )
            )
        low, high = np.percentile(values, [2.5, 97.5])
        return float(low), float(high)


@dataclass
class PassContext:
    """What a pass may use besides its input: the data splits, a folder for its outputs, a folder for
    intermediates that several passes of one run can share (keyed by content), and a progress hook."""

    train: Dataset
    calibration: Dataset
    evaluation: Dataset
    work_dir: Path
    cache_dir: Path | None = None
    seed: int = 0
    progress: Callable[[str, int, int], None] = field(default=lambda description, done, total: None)
    # The PyTorch model as the recipe named it, before any pass (e.g. a teacher to distill from after pruning).
    original: Any = None
    # The evaluator on the calibration split, for passes that search for accuracy (None outside a recipe run).
    validation: Validation | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of the shared supervised training loop (compress.training.fit)."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 1e-4
    seed: int = 0


class PassConfig(BaseModel):
    """Base of every pass's recipe entry; ``type`` is the registered pass name (the union's discriminator).

    No option may be infinite or NaN: ``lr: .inf`` would train the model into NaNs, not fail."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    type: str


def config_type(model: type[PassConfig]) -> str:
    """The single value of a pass config's ``type: Literal[...]``: the pass's name in recipes and the registry."""
    annotation = model.model_fields["type"].annotation
    values = get_args(annotation)
    if get_origin(annotation) is not Literal or len(values) != 1:
        raise TypeError(f"{model.__name__}.type must be a Literal of one name, got {annotation}")
    return str(values[0])


@dataclass
class PassOutcome:
    """A pass's new artifact and the facts it reports about what it did (flat, JSON-serialisable)."""

    artifact: Artifact
    details: dict[str, Any] = field(default_factory=dict)


Config = TypeVar("Config", bound=PassConfig)


class Pass(ABC, Generic[Config]):
    """One compression or conversion step, generic in its config (``class Fp16Conversion(Pass[Fp16Config])``).
    Subclasses set the class variables and register themselves; a pass's name is its config's ``type`` literal,
    written once there."""

    name: ClassVar[str]
    config_model: ClassVar[type[PassConfig]]
    input_formats: ClassVar[tuple[str, ...]]
    output_format: ClassVar[str]
    # Distributions whose versions change this pass's output: part of the step-cache key.
    libraries: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "config_model" in cls.__dict__:
            cls.name = config_type(cls.config_model)

    def environment_facts(self, config: Config) -> dict[str, Any]:
        """Facts of this machine that change the pass's output (e.g. a setting chosen for the CPU): part of the
        step-cache key, so a cache shared between machines never serves a step made for another CPU."""
        return {}

    def is_lossless(self, config: Config) -> bool:
        """True when the pass only changes format, so outputs must still match the fp32 reference."""
        return False

    @abstractmethod
    def apply(self, artifact: Artifact, config: Config, context: PassContext) -> PassOutcome:
        """Return the transformed artifact; write any file under ``context.work_dir``."""
