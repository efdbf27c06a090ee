"""Evaluators: what "accuracy" means for a model, from its outputs, the fp32 reference's outputs and the targets.

A registry, like passes and targets, one module each in this package: ``classification`` (top-1 / top-5 against
class labels) and ``agreement`` (top-1 agreement with the fp32 reference, for unlabelled data) in ``scores``,
``embedding`` (cosine to the fp32 embeddings and retrieval recall@k), ``regression`` (per-output absolute error
and SNR), or a user's ``module:function``.
Each has one headline metric, a fraction where higher is better: the accuracy budget, the verdict, the Pareto
front and the compare gate all use it, and the report names it. numpy only: the agent may evaluate too.

Which outputs an evaluator reads is decided in one place, ``read_outputs``: the outputs the spec names; else every
output (regression, a user's function); else the one output that can hold what it measures (class scores, an
embedding), an output declared with that ``kind`` first. Where several could, it never picks one: it is a one-line
error naming the candidates and how to choose. ``check`` runs it before anything is measured, ``choose`` writes its
answer into the spec, and ``evaluate`` reads what the spec names.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar, SupportsFloat, cast

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from edgecraft.core.errors import EdgecraftError
from edgecraft.core.registry import Registry
from edgecraft.core.results import Quality
from edgecraft.core.signature import TensorSpec
from edgecraft.imports import RecipeFolder, load_function
from edgecraft.targets.feeds import Feeds

# A user's 'package.module:function' (evaluators here; factories and data sources in recipes): dotted
# identifiers only, since a relative or empty module name makes the import raise.
FUNCTION_REFERENCE = re.compile(r"[^\W\d]\w*(\.[^\W\d]\w*)*:[^\W\d]\w*")


class EvaluatorMismatch(ValueError):
    """An evaluator that does not fit the model's outputs or the data's targets."""


class EvaluatorSpec(RecipeFolder):
    """A recipe's choice of evaluator, and the output(s) it reads. Read from a recipe file, it knows the recipe's
    folder (``base_dir``): a ``module:function`` is imported from there, or from the working folder."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(
        description="classification, agreement, embedding, regression, or 'module:function' (called as "
        "function(outputs, reference, targets) with dicts of arrays by output name; returns a float, or a dict "
        "of floats whose first entry is the headline)."
    )
    outputs: list[str] | None = Field(
        None,
        description="Outputs it reads. Default: regression and 'module:function' read every output; "
        "classification and agreement the one [batch, classes] output (the one declared kind: scores, if any), "
        "embedding the one [batch, dimensions] output (the one declared kind: embedding, if any); when several "
        "outputs could be it, name it here.",
    )
    k: int = Field(5, gt=0, description="k of top-k accuracy and of retrieval recall@k.")

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in EVALUATORS and not FUNCTION_REFERENCE.fullmatch(value):
            raise ValueError(
                f"unknown evaluator {value!r}; known: {', '.join(EVALUATORS.names())}, or 'module:function'"
            )
        return value


class Evaluator(ABC):
    name: ClassVar[str]
    metric: ClassVar[str]
    headline: ClassVar[str]
    needs_targets: ClassVar[bool] = False
    reads_all_outputs: ClassVar[bool] = False
    # Without ``outputs:``, the evaluator reads the one output that can hold what it measures: one declared with
    # ``reads_kind``, else the one for which ``fits`` holds. ``holds`` says what that is, for the error that asks.
    reads_kind: ClassVar[str | None] = None
    holds: ClassVar[str] = "what it reads"
    # The targets are group ids (samples that belong together, e.g. a query and its document): splits keep
    # each group whole, or no split would hold a pair to retrieve.
    groups_targets: ClassVar[bool] = False

    def check(self, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
        """Raise ``EvaluatorMismatch`` when the outputs or targets cannot mean what this evaluator measures."""
        if self.needs_targets and targets is None:
            raise EvaluatorMismatch(f"evaluator {self.name!r} needs targets (labels) in the data, and it has none")

    @classmethod
    def fits(cls, output: TensorSpec) -> bool:
        """Whether ``output`` could be what this evaluator reads (its shape and declared kind allow it)."""
        return True

    @abstractmethod
    def measure(self, outputs: Feeds, reference: Feeds, targets: np.ndarray | None, k: int) -> dict[str, float]:
        """Every figure, the headline among them."""


EVALUATORS: Registry[type[Evaluator]] = Registry(
    "evaluator", "evaluators", key=lambda cls: cls.name, package="edgecraft.bench.evaluators"
)
register = EVALUATORS.register


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of each row's ``k`` highest scores (unordered)."""
    k = min(k, scores.shape[1])
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def snr_db(reference: np.ndarray, values: np.ndarray) -> float | None:
    """10·log10(Σref² / Σ(values − ref)²); None where it is no finite number: identical outputs (infinite SNR)
    or an all-zero reference (no signal to compare the error with)."""
    noise = float(((values.astype(np.float64) - reference.astype(np.float64)) ** 2).sum())
    signal = float((reference.astype(np.float64) ** 2).sum())
    if noise == 0 or signal == 0:
        return None
    return float(10 * np.log10(signal / noise))


def groups_targets(spec: EvaluatorSpec | None) -> bool:
    return spec is not None and spec.type in EVALUATORS and EVALUATORS.get(spec.type).groups_targets


def choose(spec: EvaluatorSpec | None, outputs: list[TensorSpec], targets: np.ndarray | None) -> EvaluatorSpec:
    """The recipe's evaluator, or the default: classification with integer labels, agreement without.

    Where the model has several outputs and ``read_outputs`` can tell which one the evaluator reads, the spec
    returned names it, so that ``evaluate`` reads exactly what ``check`` checked. Where it cannot, the spec is
    returned as it is, and ``check`` says why."""
    if spec is None:
        labelled = targets is not None and targets.ndim == 1 and targets.dtype.kind in "iu"
        spec = EvaluatorSpec(type="classification" if labelled else "agreement")
    if spec.outputs is not None or len(outputs) < 2 or _reads_all(spec):
        return spec
    try:
        read = read_outputs(spec, outputs)
    except EvaluatorMismatch:
        return spec
    return spec.model_copy(update={"outputs": [output.name for output in read]})


def read_outputs(spec: EvaluatorSpec, outputs: list[TensorSpec]) -> list[TensorSpec]:
    """The output specs the evaluator reads: the one place that decides it (``check`` and ``evaluate`` both ask).

    The outputs ``spec.outputs`` names (an unknown name raises ``EvaluatorMismatch`` with the known ones); else
    every output for regression and a user's function; else the only output declared with the evaluator's kind
    (``scores``, ``embedding``), else the only one that fits its shape. Several that fit raise
    ``EvaluatorMismatch`` naming them and how to choose; none that fits leaves the first output, for the
    evaluator's own check to say why it does not fit."""
    by_name = {output.name: output for output in outputs}
    if spec.outputs:
        unknown = [name for name in spec.outputs if name not in by_name]
        if unknown:
            raise EvaluatorMismatch(
                f"evaluator {spec.type!r} reads output(s) {unknown}, but the model's outputs are {list(by_name)}"
            )
        return [by_name[name] for name in spec.outputs]
    if _reads_all(spec) or len(outputs) < 2:
        return list(outputs)
    evaluator = EVALUATORS.get(spec.type)
    declared = [output for output in outputs if evaluator.reads_kind and output.kind == evaluator.reads_kind]
    if len(declared) == 1:
        return declared
    candidates = declared or [output for output in outputs if evaluator.fits(output)]
    if len(candidates) > 1:
        named = ", ".join(f"{output.name} {_shape(output)}" for output in candidates)
        raise EvaluatorMismatch(
            f"evaluator {spec.type!r}: the model has {len(candidates)} outputs that could hold {evaluator.holds} "
            f"({named}); say which with evaluator.outputs: [NAME] in the recipe, or --evaluator-output NAME on "
            "bench"
        )
    return candidates or [outputs[0]]


def _shape(output: TensorSpec) -> str:
    """``[N, 4]``: an output's shape as the error that asks for a choice shows it, symbolic axes by their names
    (``?`` where the file names none)."""
    if output.shape is None:
        return "[unknown shape]"
    return "[" + ", ".join("?" if d is None else str(d) for d in output.shape) + "]"


def _reads_all(spec: EvaluatorSpec) -> bool:
    """Regression and a user's function read every output (unless the spec names some)."""
    return spec.type not in EVALUATORS or EVALUATORS.get(spec.type).reads_all_outputs


def check(spec: EvaluatorSpec, outputs: list[TensorSpec], targets: np.ndarray | None) -> None:
    """Fail early, before any long work, when the evaluator cannot apply to this model and data: the outputs it
    reads (``read_outputs``: several candidates are an error that asks), the targets, and a user's
    ``module:function``, imported here from the recipe's folder or the working folder (it must exist and be
    callable). Every problem is an ``EvaluatorMismatch`` of one line."""
    read = read_outputs(spec, outputs)
    if spec.type in EVALUATORS:
        EVALUATORS.get(spec.type)().check(read, targets)
    else:
        try:
            _user_function(spec)
        except EdgecraftError as exc:
            raise EvaluatorMismatch(str(exc)) from None


def _user_function(spec: EvaluatorSpec) -> Any:
    return load_function(spec.type, "evaluator", spec.base_dir)


def evaluate(spec: EvaluatorSpec, outputs: Feeds, reference: Feeds, targets: np.ndarray | None) -> Quality:
    """The evaluator's figures on ``outputs`` (every output by name) against the reference and the targets.

    It reads the outputs ``spec`` names (``choose`` names the one it reads where the model has several); a spec
    that names none reads what ``read_outputs`` decides from the reference's arrays, and refuses to guess."""
    names = spec.outputs or [output.name for output in read_outputs(spec, _specs_of(reference))]
    read = {name: outputs[name] for name in names}
    expected = {name: reference[name] for name in names}
    if spec.type in EVALUATORS:
        evaluator = EVALUATORS.get(spec.type)()
        figures = evaluator.measure(read, expected, targets, spec.k)
        return Quality(
            evaluator=spec.type, metric=evaluator.metric, value=figures[evaluator.headline], metrics=_finite(figures)
        )
    try:
        function = _user_function(spec)
    except EdgecraftError as exc:  # check() imported it before: only a module that changed meanwhile gets here
        raise EvaluatorMismatch(str(exc)) from None
    result: Any = function(read, expected, targets)
    # float() takes a real number of any kind, and refuses what the user's function should not have returned.
    figures = (
        {"score": float(cast(SupportsFloat, result))}
        if np.isscalar(result)
        else {k: float(v) for k, v in dict(result).items()}
    )
    headline = next(iter(figures))
    return Quality(evaluator=spec.type, metric=headline, value=figures[headline], metrics=_finite(figures))


def _specs_of(arrays: Feeds) -> list[TensorSpec]:
    """Output specs as the arrays show them: a batch axis, then the measured dimensions (no declared kind)."""
    return [TensorSpec(name=name, shape=["batch", *array.shape[1:]]) for name, array in arrays.items()]


def metric_name(evaluator: str) -> str:
    """The headline metric's name: a registered evaluator's own, else (a user's ``module:function``) its name."""
    return EVALUATORS.get(evaluator).metric if evaluator in EVALUATORS else evaluator


def not_measured(spec: EvaluatorSpec | None, reason: str) -> Quality:
    name = spec.type if spec else "none"
    return Quality(evaluator=name, metric=metric_name(name), value=None, not_measured=reason)


def _finite(figures: dict[str, float]) -> dict[str, float]:
    """JSON has no NaN or infinity: a figure that is not finite is left out rather than written as null."""
    return {key: value for key, value in figures.items() if np.isfinite(value)}
