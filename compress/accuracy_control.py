"""Accuracy-aware int8: rank the quantized layers by how much each one costs, then keep the fewest most sensitive
layers in float that bring the evaluator's metric within ``max_drop`` of fp32.

This is NNCF's ``quantize_with_accuracy_control`` algorithm (rank, then revert the worst layers to float until
the drop is within budget), written once for every format: NNCF offers it for OpenVINO and ONNX only, ONNX
Runtime and TFLite have nothing like it, and one loop gives one meaning of the budget (the recipe's own
evaluator), one sensitivity table and one record in the report for all three runtimes. What is per format (how
to quantize with some layers left in float, how to rank the layers, how to run a model) is a ``Int8Format``
that calls the format's own quantizer: ONNX Runtime's ``nodes_to_exclude``, NNCF's ``ignored_scope`` and the
TFLite converter's deny-lists.

Everything here is judged on the calibration split (``PassContext.validation``), never on the evaluation split
that the report's accuracy comes from.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from edgecraft.compress.base import Dataset, PassConfig, Validation

# Batches the validation split is run in: large enough to be quick, small enough for a 224×224 model's memory.
_BATCH = 16
# Runs of the quick in-pass latency estimate (batch 1, median): enough for a ratio, far from the benchmark.
_TIMING_RUNS = 20
# Metrics are fractions of a few hundred samples: 99/100 must meet a budget of 1.0 − 0.01.
_EPSILON = 1e-9


class AccuracyBudgetMissed(RuntimeError):
    """No model within the search's limits kept the metric within ``max_drop``; ``record`` is the search's
    ``AccuracyControl`` record (every trial, the ranking), for whoever wants to see how close it came."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class FallbackIncomplete(RuntimeError):
    """The format's model with every candidate op in float is not the fp32 model: something the search cannot
    reach stays quantized, so no budget would be met for the right reason."""


# An all-float model's output error against fp32 (Σ(out − ref)² / Σref²) at most this: 50 dB, far above any int8
# model (EfficientNet-Lite0's all-int8 is ~0.008, 21 dB) and far below an fp32 runtime's own rounding (~1e-12).
_FLOAT_ERROR = 1e-5
# ... and its metric this close to fp32's: one sample in ten thousand, or a continuous metric's last digits.
_FLOAT_METRIC = 1e-4


class AccuracyAwareOptions(PassConfig):
    """The options every int8 pass shares for accuracy-aware quantization (its config subclasses this)."""

    max_drop: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Accuracy budget: keep the most sensitive layers in float until the evaluator's metric on the "
        "calibration split is at most this far below fp32 (0.01: one point of top-1). None: quantize every layer.",
    )
    sensitivity: bool = Field(
        False,
        description="Rank every layer's sensitivity even when the budget is met (or no budget is set), for "
        "the report's sensitivity panel.",
    )
    max_trials: int = Field(12, gt=0, description="Quantized models the accuracy-aware search tries at most.")

    def accuracy_aware(self) -> bool:
        """Whether any of these options asks for more than plain int8."""
        return self.max_drop is not None or self.sensitivity or self.first_last_float

    first_last_float: bool = Field(
        False,
        description="Keep the first and the last quantized layer in float (the input stem and the "
        "classifier, often the most sensitive), whatever the budget.",
    )


@dataclass(frozen=True)
class Layer:
    name: str
    op_type: str


@dataclass(frozen=True)
class LayerScore:
    """A layer's sensitivity from a format's own debugger (no model with the layer in float was run)."""

    score: float
    metric: None = None


@dataclass(frozen=True)
class Judgement:
    """A model's evaluator metric and its output error against fp32 (Σ(out − ref)² / Σref² over every float
    output): the metric moves in steps of one sample, the error continuously, so layers rank by the error."""

    metric: float
    error: float


def output_error(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    noise = signal = 0.0
    for name, expected in reference.items():
        if expected.dtype.kind != "f":
            continue
        expected = expected.astype(np.float64)
        noise += float(((outputs[name].astype(np.float64) - expected) ** 2).sum())
        signal += float((expected**2).sum())
    return noise / signal if signal else noise


class Int8Format(ABC):
    """One format's hooks for the search: its quantizer with layers left in float, its layers, and the target that
    runs it (models run through the same ``targets`` code as the benchmark)."""

    target: str
    # What the layers kept in float compute in (f32 unless the format runs them in bf16 or fp16).
    float_precision: str = "f32"
    # How ``rank`` scores a layer, in words, for the report (a higher score: a more sensitive layer).
    measure: str = (
        "share of the int8 model's output error (relative L2², against fp32) removed by keeping only "
        "this layer in float"
    )

    @abstractmethod
    def quantize(self, float_layers: list[str], out_dir: Path) -> Path:
        """The model quantized by the format's own quantizer, with ``float_layers`` left in float."""

    @abstractmethod
    def layers(self, quantized: Path) -> list[Layer]:
        """The layers of an all-int8 model that run quantized (candidates to keep in float)."""

    def with_float(self, quantized: Path, layer: Layer, out_dir: Path) -> Path:
        """``quantized`` with only ``layer`` computed in float (same calibration), for ranking."""
        raise NotImplementedError

    def quantized_ops(self, path: Path) -> list[str]:
        """The ops that still compute on int8 in the model at ``path`` (named when a fallback is incomplete)."""
        return [f"{layer.name} ({layer.op_type})" for layer in self.layers(path)]

    def rank(
        self,
        quantized: Path,
        layers: list[Layer],
        judge: Callable[[Path], Judgement],
        work_dir: Path,
        progress: Callable[[int], None],
    ) -> Mapping[str, Judgement | LayerScore]:
        """Each layer judged with only that layer in float in ``quantized`` (or scored by the format's debugger)."""
        judged = {}
        for index, layer in enumerate(layers):
            judged[layer.name] = judge(self.with_float(quantized, layer, work_dir / "one-layer-float"))
            progress(index + 1)
        return judged

    # The float model handed to the format (what every op in float must reproduce) and the target that runs it:
    # after weight rounding or bias correction it is not the recipe's fp32 model. None: the recipe's fp32 model.
    float_source: tuple[Path, str] | None = None

    def run(self, path: Path, data: Dataset, target_name: str | None = None) -> dict[str, np.ndarray]:
        """Every output by name for ``data``'s inputs, in batches the model takes, on every core."""
        from edgecraft.targets import feeds, registry

        target = registry.get(target_name or self.target)
        session = target.load(path, "cpu", os.cpu_count() or 1, target.options_model())
        return feeds.concatenate(target.run_batches(session, data.inputs, _BATCH, data.layout))

    def latency_ms(self, path: Path, sample: dict[str, np.ndarray]) -> float:
        """Median of a few single-sample runs after one warm-up, on one thread: a ratio between two models of one
        pass, no more (the benchmark measures the rows properly)."""
        from edgecraft.targets import registry

        target = registry.get(self.target)
        session = target.load(path, "cpu", 1, target.options_model())
        target.run(session, sample)
        samples = []
        for _ in range(_TIMING_RUNS):
            start = time.perf_counter()
            target.run(session, sample)
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)


def search(
    fmt: Int8Format,
    validation: Validation | None,
    options: AccuracyAwareOptions,
    work_dir: Path,
    progress: Callable[[str, int, int], None],
) -> tuple[Path, dict[str, Any] | None]:
    """The quantized model to ship and the ``AccuracyControl`` record (None when the options ask for no budget,
    ranking or float layers). Raises ``AccuracyBudgetMissed`` when no model within ``max_trials`` meets the budget."""
    all_int8 = fmt.quantize([], work_dir / "all-int8")
    if not options.accuracy_aware():
        return all_int8, None
    if validation is None:
        raise ValueError(
            "accuracy-aware quantization needs the recipe's evaluator and calibration split (run it from a recipe)"
        )
    data = validation.data

    def judge(path: Path) -> Judgement:
        outputs = fmt.run(path, data)
        return Judgement(validation.score(outputs), output_error(outputs, validation.reference))

    layers = fmt.layers(all_int8)
    forced = [layers[0].name, layers[-1].name] if options.first_last_float and len(layers) > 1 else []
    start = fmt.quantize(forced, work_dir / "first-last-float") if forced else all_int8
    fp32 = validation.score(validation.reference)
    baseline = judge(start)
    budget = fp32 - options.max_drop if options.max_drop is not None else None
    trials = [{"float_layers": len(forced), "metric": baseline.metric, "error": baseline.error}]
    needs_search = budget is not None and baseline.metric < budget - _EPSILON
    candidates = [layer for layer in layers if layer.name not in forced]
    ranked: list[tuple[Layer, float, float | None]] = []
    judged: Mapping[str, Judgement | LayerScore] = {}
    all_float = None
    if needs_search or options.sensitivity:
        progress("accuracy-aware int8: every quantized op in float (must be fp32)", 0, 1)
        all_float = _all_float_trial(fmt, layers, validation, work_dir)
        judged = fmt.rank(
            start,
            candidates,
            judge,
            work_dir,
            lambda done: progress(f"sensitivity: layer {done}/{len(candidates)}", done, len(candidates)),
        )
        ranked = sorted(
            ((layer, _score(judged[layer.name], baseline), judged[layer.name].metric) for layer in candidates),
            key=lambda item: (-item[1], -(item[2] or 0), item[0].name),
        )
    predicts = bool(ranked) and not any(isinstance(judgement, LayerScore) for judgement in judged.values())
    chosen, float_layers = start, list(forced)
    if needs_search:
        assert budget is not None  # needs_search implies a budget
        order = [layer.name for layer, _, _ in ranked]
        shares = [score for _, score, _ in ranked]

        def attempt(count: int) -> tuple[Path, float]:
            path = fmt.quantize(forced + order[:count], work_dir / f"float-{len(forced) + count}")
            judgement = judge(path)
            trial = {"float_layers": len(forced) + count, "metric": judgement.metric, "error": judgement.error}
            if predicts:  # what the ranking expects: each float layer removes its share of the error that is left
                trial["predicted_error"] = baseline.error * math.prod(1 - min(max(s, 0.0), 1.0) for s in shares[:count])
            trials.append(trial)
            progress(
                f"accuracy-aware int8: {len(forced) + count} layer(s) in float, metric {judgement.metric:.4f} "
                f"(budget {budget:.4f})",
                len(trials),
                options.max_trials,
            )
            return path, judgement.metric

        # At least one layer stays quantized: a model with every layer in float is fp32, not an int8 answer.
        found = _fewest(attempt, len(order) - 1, budget, options.max_trials - 1)
        if found is not None:
            count, chosen, _ = found
            float_layers += order[:count]

    all_int8_metric = trials[0]["metric"] if not forced else judge(all_int8).metric
    record = outcome(fmt, validation, chosen, layers, float_layers, options.max_drop, all_int8_metric) | {
        "sensitivity": [
            {
                "layer": layer.name,
                "op_type": layer.op_type,
                "score": score,
                "metric": metric,
                "gain": None if metric is None else metric - baseline.metric,
            }
            for layer, score, metric in ranked
        ],
        "trials": trials,
        "all_float": all_float,
        "ranking_agreement": _ranking_agreement(trials),
    }
    if not record["met"] and needs_search:
        raise AccuracyBudgetMissed(
            f"no int8 model (at least one layer quantized) met max_drop={options.max_drop} "
            f"({validation.metric} on the calibration split: fp32 "
            f"{fp32:.4f}, int8 {baseline.metric:.4f}; with the most sensitive layers in float: "
            + ", ".join(f"{t['float_layers']} → {t['metric']:.4f}" for t in trials[1:])
            + f", all {len(layers)} → {fp32:.4f} (= fp32); {len(trials)} of max_trials={options.max_trials} "
            "models tried). Most sensitive layers: "
            + ", ".join(f"{layer.name} ({layer.op_type})" for layer, _, _ in ranked[:5]),
            record,
        )
    if float_layers:
        sample = data.head(1).samples()[0]
        record["latency_ratio"] = fmt.latency_ms(chosen, sample) / fmt.latency_ms(all_int8, sample)
    return chosen, record


def outcome(
    fmt: Int8Format,
    validation: Validation,
    chosen: Path,
    layers: list[Layer],
    float_layers: list[str],
    max_drop: float | None,
    all_int8: float,
    measure: str | None = None,
) -> dict[str, Any]:
    """The part of the ``AccuracyControl`` record every search writes, ours or a library's: the model ``chosen``
    re-run and scored on the calibration split (with its bootstrap interval) against fp32 and the budget, and the
    ``float_layers`` (names of ``layers``) it keeps in float; ``measure``: how layers were ranked, where not by the
    format's own measure."""
    outputs = fmt.run(chosen, validation.data)
    final = validation.score(outputs)
    fp32 = validation.score(validation.reference)
    by_name = {layer.name: layer for layer in layers}
    return {
        "metric": validation.metric,
        "max_drop": max_drop,
        "measure": measure or fmt.measure,
        "fp32": fp32,
        "all_int8": all_int8,
        "final": final,
        "final_interval": validation.interval(outputs),
        "met": max_drop is None or final >= fp32 - max_drop - _EPSILON,
        "layers": len(layers),
        "float_layers": float_layers,
        "float_precision": fmt.float_precision,
        "float_op_types": dict(Counter(by_name[name].op_type for name in float_layers)),
    }


def _all_float_trial(fmt: Int8Format, layers: list[Layer], validation: Validation, work_dir: Path) -> dict[str, Any]:
    """The format's model with every candidate op in float, which must be the float model the pass was handed: if
    it is not, a quantizer the search cannot reach (a residual Add's, a pooling's, the graph input's) carries error
    that no number of float layers removes, and the search would climb towards the wrong ceiling. Fails naming
    them. The trial's metric and error are against fp32, like every trial's."""
    path = fmt.quantize([layer.name for layer in layers], work_dir / "all-float")
    outputs = fmt.run(path, validation.data)
    if fmt.float_source is None:
        ceiling, handed = validation.reference, "fp32"
    else:
        ceiling, handed = (
            fmt.run(fmt.float_source[0], validation.data, fmt.float_source[1]),
            "the float model handed in",
        )
    metric, expected = validation.score(outputs), validation.score(ceiling)
    error = output_error(outputs, ceiling)
    if abs(metric - expected) > _FLOAT_METRIC or error > _FLOAT_ERROR:
        left = fmt.quantized_ops(path)
        raise FallbackIncomplete(
            f"{fmt.target}: with all {len(layers)} quantized ops kept in float the model is not {handed} "
            f"({validation.metric} {metric:.4f} against {expected:.4f}, output error {error:.2e} against at most "
            f"{_FLOAT_ERROR:g}); still quantized: " + (", ".join(left[:10]) or "no op the format reports")
        )
    return {"float_layers": len(layers), "metric": metric, "error": output_error(outputs, validation.reference)}


def _ranking_agreement(trials: list[dict[str, Any]]) -> float | None:
    """Spearman's rank correlation between the errors the ranking predicted for the trials and those measured:
    1 when more float layers lowered the error as the ranking said. None with fewer than three predictions."""
    pairs = [(trial["predicted_error"], trial["error"]) for trial in trials if "predicted_error" in trial]
    if len(pairs) < 3:
        return None
    predicted, measured = (np.argsort(np.argsort(values)).astype(float) for values in zip(*pairs, strict=True))
    if predicted.std() == 0 or measured.std() == 0:
        return None
    return float(np.corrcoef(predicted, measured)[0, 1])


def _score(judgement: Judgement | LayerScore, baseline: Judgement) -> float:
    """A layer's sensitivity: the debugger's own score, else the share of the output error its float removed."""
    if isinstance(judgement, LayerScore):
        return judgement.score
    return (baseline.error - judgement.error) / baseline.error if baseline.error else 0.0


def _fewest(
    attempt: Callable[[int], tuple[Path, float]], candidates: int, budget: float, max_attempts: int
) -> tuple[int, Path, float] | None:
    """The fewest of the ranked layers in float that meet ``budget``: double the count until a model meets it,
    then bisect between the last miss and the first hit (each ``attempt`` quantizes and validates one model)."""
    met: dict[int, tuple[Path, float]] = {}
    missed, count, attempts = 0, 1, 0
    while attempts < max_attempts and count <= candidates:
        path, metric = attempt(count)
        attempts += 1
        if metric >= budget - _EPSILON:
            met[count] = (path, metric)
        else:
            missed = count
        if not met:
            if count == candidates:
                break
            count = min(count * 2, candidates)
        elif min(met) - missed <= 1:
            break
        else:
            count = (missed + min(met)) // 2
    if not met:
        return None
    count = min(met)
    return count, *met[count]
