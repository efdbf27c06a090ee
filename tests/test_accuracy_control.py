"""Accuracy-aware int8: the search keeps the fewest most sensitive layers in float that meet the budget, on every
format's own quantizer, and neither the search nor the sensitivity analysis ever reads the evaluation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecraft.compress import registry
from edgecraft.compress.accuracy_control import (
    AccuracyAwareOptions,
    AccuracyBudgetMissed,
    FallbackIncomplete,
    Int8Format,
    Layer,
    search,
)
from edgecraft.compress.base import Dataset, PassContext, Validation
from edgecraft.core.results import AccuracyControl

LAYERS = [Layer(f"layer{i}", "Conv") for i in range(8)]
# What quantizing each layer costs the metric: two layers matter, the rest barely.
COST = {
    "layer0": 0.001,
    "layer1": 0.002,
    "layer2": 0.05,
    "layer3": 0.001,
    "layer4": 0.001,
    "layer5": 0.08,
    "layer6": 0.001,
    "layer7": 0.001,
}


class SyntheticFormat(Int8Format):
    """A format whose "model" is the set of float layers written to a file: the metric is 1 minus the cost of
    every quantized layer, and its one output is that metric (so the output error ranks the layers too)."""

    target = "none"

    def __init__(self) -> None:
        self.quantized: list[list[str]] = []

    def quantize(self, float_layers: list[str], out_dir: Path) -> Path:
        self.quantized.append(list(float_layers))
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "model.txt"
        path.write_text("\n".join(float_layers))
        return path

    def layers(self, quantized: Path) -> list[Layer]:
        return [layer for layer in LAYERS if layer.name not in quantized.read_text().split("\n")]

    def with_float(self, quantized: Path, layer: Layer, out_dir: Path) -> Path:
        return self.quantize([*quantized.read_text().split("\n"), layer.name], out_dir)

    def run(self, path: Path, data: Dataset) -> dict[str, np.ndarray]:
        floats = set(path.read_text().split("\n"))
        metric = 1.0 - sum(cost for name, cost in COST.items() if name not in floats)
        return {"score": np.full((len(data), 1), metric, dtype=np.float32)}

    def latency_ms(self, path: Path, sample: dict[str, np.ndarray]) -> float:
        return 1.0 + 0.1 * len([name for name in path.read_text().split("\n") if name])


def synthetic_validation() -> Validation:
    data = Dataset({"x": np.zeros((4, 1), dtype=np.float32)})
    return Validation(
        data=data,
        metric="synthetic",
        reference_fn=lambda: {"score": np.ones((4, 1), np.float32)},
        score_fn=lambda outputs, reference, targets: float(outputs["score"].mean()),
    )


def options(**values) -> AccuracyAwareOptions:
    return AccuracyAwareOptions(type="test", **values)


def test_search_keeps_the_fewest_most_sensitive_layers_in_float(tmp_path: Path) -> None:
    fmt = SyntheticFormat()
    path, record = search(fmt, synthetic_validation(), options(max_drop=0.01), tmp_path, lambda *_: None)
    control = AccuracyControl.model_validate(record)
    assert [entry.layer for entry in control.sensitivity[:2]] == ["layer5", "layer2"]
    assert control.float_layers == ["layer5", "layer2"]  # the two that matter, nothing more
    assert control.met and control.final >= control.fp32 - 0.01 - 1e-9
    assert control.all_int8 == pytest.approx(1 - sum(COST.values()), abs=1e-6)
    assert control.float_op_types == {"Conv": 2}
    assert control.latency_ratio == pytest.approx(1.2 / 1.0)
    assert sorted(path.read_text().split("\n")) == ["layer2", "layer5"]
    # Grow (1, 2) until met, then stop: a miss at 1 and a hit at 2 leave nothing to bisect.
    assert [trial.float_layers for trial in control.trials] == [0, 1, 2]


def test_search_bisects_down_after_overshooting(tmp_path: Path) -> None:
    """A budget that needs three layers: grown 1, 2, 4 (met), then bisected to 3."""
    fmt = SyntheticFormat()
    budget = 1 - (sum(COST.values()) - 0.05 - 0.08 - 0.002) - 1e-6
    _, record = search(fmt, synthetic_validation(), options(max_drop=1 - budget), tmp_path, lambda *_: None)
    control = AccuracyControl.model_validate(record)
    assert [trial.float_layers for trial in control.trials] == [0, 1, 2, 4, 3]
    assert control.float_layers == ["layer5", "layer2", "layer1"]
    assert control.ranking_agreement == pytest.approx(1.0)  # each added float layer lowered the error as ranked


def test_the_search_checks_that_every_op_in_float_is_fp32_and_records_how_well_the_ranking_predicted(
    tmp_path: Path,
) -> None:
    _, record = search(SyntheticFormat(), synthetic_validation(), options(max_drop=0.01), tmp_path, lambda *_: None)
    control = AccuracyControl.model_validate(record)
    assert control.all_float is not None
    assert control.all_float.float_layers == len(LAYERS) and control.all_float.metric == pytest.approx(1.0)
    # Every search trial carries the error the ranking expected: less the more of the ranked layers are float.
    predicted = [trial.predicted_error for trial in control.trials[1:]]
    assert all(value is not None for value in predicted) and predicted == sorted(predicted, reverse=True)
    low, high = control.final_interval or (None, None)
    assert low == high == pytest.approx(control.final)  # every sample scores the same: no spread to resample


class HiddenQuantizer(SyntheticFormat):
    """A format with a quantizer outside its layer list (a residual Add's), which no float layer removes."""

    def run(self, path: Path, data: Dataset) -> dict[str, np.ndarray]:
        outputs = super().run(path, data)
        return {"score": outputs["score"] - 0.03}

    def quantized_ops(self, path: Path) -> list[str]:
        return ["residual_add (Add)"]


def test_a_fallback_that_cannot_reach_fp32_fails_naming_what_stayed_quantized(tmp_path: Path) -> None:
    with pytest.raises(
        FallbackIncomplete,
        match=r"all 8 quantized ops kept in float.*0\.9700 against 1\.0000.*"
        r"still quantized: residual_add \(Add\)",
    ):
        search(HiddenQuantizer(), synthetic_validation(), options(max_drop=0.01), tmp_path, lambda *_: None)


class CorrectedFloat(SyntheticFormat):
    """A format handed a float model that is not the recipe's fp32 (bias-corrected before the pass): every model it
    makes, the all-float one included, sits 0.03 below fp32, and that is its ceiling, not a hidden quantizer."""

    def run(self, path: Path, data: Dataset, target_name: str | None = None) -> dict[str, np.ndarray]:
        return {"score": super().run(path, data)["score"] - 0.03}


def test_the_all_float_model_is_checked_against_the_float_model_the_pass_was_handed(tmp_path: Path) -> None:
    fmt = CorrectedFloat()
    fmt.float_source = (fmt.quantize([layer.name for layer in LAYERS], tmp_path / "handed"), "none")
    _, record = search(fmt, synthetic_validation(), options(max_drop=0.1), tmp_path, lambda *_: None)
    control = AccuracyControl.model_validate(record)
    assert control.all_float is not None and control.all_float.metric == pytest.approx(0.97)
    assert control.met and control.trials[-1].metric >= 0.9


def test_the_bootstrap_interval_spans_the_metric_of_a_split_that_disagrees_in_places() -> None:
    from edgecraft.bench.evaluators import EvaluatorSpec
    from edgecraft.preparation import validation_for

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    data = Dataset({"x": np.arange(200, dtype=np.float32)[:, None]})  # each sample's input is its index
    validation = validation_for(EvaluatorSpec(type="agreement"), _FixedOutputs(logits), data)
    flipped = logits.copy()
    flipped[:20] = -flipped[:20]  # 20 of 200 samples (10 %) now disagree with fp32's top-1
    score = validation.score({"logits": flipped})
    low, high = validation.interval({"logits": flipped}) or (0.0, 0.0)
    assert score == pytest.approx(0.9, abs=0.005) and low < score < high
    assert 0.02 < high - low < 0.15  # ±√(p(1−p)/n) ≈ ±2 points at 95 %


class _FixedOutputs:
    """An artifact stand-in whose reference outputs are fixed logits (validation_for reads format and model)."""

    format = "torch"

    def __init__(self, logits: np.ndarray) -> None:
        from edgecraft.core.signature import Signature, TensorSpec

        self.signature = Signature(
            inputs=[TensorSpec(name="x", dtype="float32", shape=["batch", 1])], outputs=[TensorSpec(name="logits")]
        )
        self.model = _Constant(logits)


def _Constant(logits: np.ndarray):
    import torch

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(logits)[x[:, 0].long()]

    return Constant()


def test_a_budget_nothing_meets_fails_with_the_trials_and_the_culprits(tmp_path: Path) -> None:
    fmt = SyntheticFormat()
    with pytest.raises(AccuracyBudgetMissed, match=r"max_drop=0.0.*fp32 1\.0000.*layer5 \(Conv\)") as caught:
        search(fmt, synthetic_validation(), options(max_drop=0.0, max_trials=3), tmp_path, lambda *_: None)
    assert "3 of max_trials=3" in str(caught.value)


def test_a_met_budget_quantizes_every_layer_and_ranks_nothing(tmp_path: Path) -> None:
    fmt = SyntheticFormat()
    _, record = search(fmt, synthetic_validation(), options(max_drop=0.5), tmp_path, lambda *_: None)
    assert record["float_layers"] == [] and record["sensitivity"] == [] and fmt.quantized == [[]]


def test_first_and_last_layer_stay_float_whatever_the_budget(tmp_path: Path) -> None:
    fmt = SyntheticFormat()
    _, record = search(fmt, synthetic_validation(), options(first_last_float=True), tmp_path, lambda *_: None)
    assert record["float_layers"] == ["layer0", "layer7"]


def test_plain_int8_needs_no_validation(tmp_path: Path) -> None:
    path, record = search(SyntheticFormat(), None, options(), tmp_path, lambda *_: None)
    assert record is None and path.read_text() == ""


class EvaluationSplit:
    """Stands in for the evaluation split: any use of it fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"the accuracy-aware search read the evaluation split ({name})")

    def __len__(self) -> int:
        raise AssertionError("the accuracy-aware search read the evaluation split (len)")


def relative_error_validation(digits_cnn) -> Validation:
    """1 − relative L2 error against fp32 on the calibration split: any quantized layer costs something, every
    float layer gives some back, so a budget between all-int8 and fp32 needs some (not all) layers in float."""
    from edgecraft.bench.evaluators import EvaluatorSpec
    from edgecraft.preparation import validation_for

    return validation_for(EvaluatorSpec(type="regression"), digits_cnn["torch"], digits_cnn["splits"].calibration)


INT8_PASSES = {
    "onnxruntime": {"type": "quantize.static"},
    "openvino": {"type": "quantize.nncf", "fast_bias_correction": True},
    "litert": {"type": "convert.tflite", "quantization": "int8"},
    "executorch": {"type": "convert.executorch", "quantization": "int8"},
}


@pytest.mark.parametrize("runtime", list(INT8_PASSES))
def test_each_format_meets_a_budget_with_its_own_quantizer_without_the_evaluation_split(
    runtime: str, digits_cnn, tmp_path: Path
) -> None:
    step = registry.get(INT8_PASSES[runtime]["type"])
    validation = relative_error_validation(digits_cnn)
    context = PassContext(
        train=digits_cnn["splits"].train,
        calibration=digits_cnn["splits"].calibration,
        evaluation=EvaluationSplit(),
        work_dir=tmp_path / "ranked",
        cache_dir=tmp_path / "cache",
        validation=validation,
    )
    context.work_dir.mkdir()
    source = digits_cnn["torch"] if step.input_formats == ("torch",) else digits_cnn["onnx"]
    ranked = step.apply(source, step.config_model(**INT8_PASSES[runtime], sensitivity=True), context)
    control = AccuracyControl.model_validate(ranked.details["accuracy_control"])
    assert control.layers >= 3 and len(control.sensitivity) == control.layers and not control.float_layers
    assert control.all_int8 < control.fp32

    # Half-way between all-int8 and fp32: some layers must go back to float, and fewer than all of them.
    max_drop = (control.fp32 - control.all_int8) / 2
    context.work_dir = tmp_path / "budget"
    context.work_dir.mkdir()
    outcome = step.apply(source, step.config_model(**INT8_PASSES[runtime], max_drop=max_drop), context)
    control = AccuracyControl.model_validate(outcome.details["accuracy_control"])
    assert control.met and control.final >= control.fp32 - max_drop - 1e-9
    assert 0 < len(control.float_layers) < control.layers
    assert control.latency_ratio is not None and control.latency_ratio > 0
    # The file shipped is the one judged: run it again and score it.
    from edgecraft.targets import feeds
    from edgecraft.targets import registry as targets

    target = targets.get(runtime)
    session = target.load(outcome.artifact.path, "cpu", 1, target.options_model())
    # In calls of 8: the batch an ExecuTorch program is exported for by default (the others take any batch).
    outputs = feeds.concatenate(target.run_batches(session, validation.data.inputs, 8, validation.data.layout))
    assert validation.score(outputs) == pytest.approx(control.final, abs=1e-4)


ACCURACY_RECIPE = """\
name: accuracy-aware
models:
  - builtin: digits-cnn
    evaluator: {type: regression}   # 1 − relative error: every quantized layer costs something
variants:
  - name: fp32
  - name: ranked                    # every layer ranked, no budget
    passes: [{type: quantize.static, sensitivity: true}]
  - name: impossible                # no int8 model is exactly fp32: the row fails and says why
    passes: [{type: quantize.static, max_drop: 0.0, max_trials: 2}]
targets: [onnxruntime:cpu]
benchmark: {operator_profile: false}
"""


def test_the_cli_records_sensitivity_and_fails_a_missed_budget_with_its_reason(tmp_path: Path) -> None:
    import json

    from tests.conftest import edgecraft

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(ACCURACY_RECIPE)
    completed = edgecraft("run", recipe, "--quick", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = json.loads((run_dir / "results.json").read_text())
    rows = {row["variant"]: row for row in results["rows"]}
    assert rows["fp32"]["status"] == rows["ranked"]["status"] == "ok"
    assert rows["impossible"]["status"] == "failed"
    assert "no int8 model" in rows["impossible"]["reason"] and "max_drop=0.0" in rows["impossible"]["reason"]
    ranked = next(record for record in results["passes"] if record["variant"] == "ranked")
    control = AccuracyControl.model_validate(ranked["accuracy_control"])
    assert len(control.sensitivity) == control.layers >= 3 and control.max_drop is None
    assert "accuracy_control" not in ranked["details"]
    report = (run_dir / "report.html").read_text()
    assert control.sensitivity[0].layer in report  # the most sensitive layer is named in the panel


@pytest.mark.slow  # NNCF's search validates the model a dozen times or more: minutes on 2 cores
def test_nncf_own_accuracy_control_meets_the_budget_with_the_same_evaluator_and_record(
    digits_cnn, tmp_path: Path
) -> None:
    step = registry.get("quantize.nncf")
    validation = relative_error_validation(digits_cnn)
    context = PassContext(
        train=digits_cnn["splits"].train,
        calibration=digits_cnn["splits"].calibration,
        evaluation=EvaluationSplit(),
        work_dir=tmp_path,
        validation=validation,
    )
    plain = step.apply(digits_cnn["onnx"], step.config_model(type="quantize.nncf", sensitivity=True), context)
    ranked = AccuracyControl.model_validate(plain.details["accuracy_control"])
    max_drop = (ranked.fp32 - ranked.all_int8) / 2  # half-way: NNCF must revert some, not all, quantizers
    context.work_dir = tmp_path / "nncf"
    context.work_dir.mkdir()
    outcome = step.apply(
        digits_cnn["onnx"], step.config_model(type="quantize.nncf", max_drop=max_drop, search="nncf"), context
    )
    control = AccuracyControl.model_validate(outcome.details["accuracy_control"])
    assert control.met and control.final >= control.fp32 - max_drop - 1e-9 and control.all_int8 < control.final
    assert 0 < len(control.float_layers) < control.layers and control.measure.startswith("NNCF")


def test_nncf_search_needs_a_budget() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="search: nncf is NNCF's accuracy-aware quantization: it needs max_drop"):
        registry.get("quantize.nncf").config_model(type="quantize.nncf", search="nncf")


def test_layers_kept_in_float_run_in_bf16_where_the_cpu_computes_it(digits_cnn, tmp_path: Path) -> None:
    """float_precision: bf16 judges every trial in bf16 and names bf16 in the IR, so the row runs what was judged;
    on a CPU without bf16 the pass refuses in one line instead of measuring f32 under a bf16 label."""
    from edgecraft.compress.cpu import has_bf16
    from edgecraft.core.errors import EdgecraftError
    from edgecraft.targets import registry as targets

    step = registry.get("quantize.nncf")
    context = PassContext(
        train=digits_cnn["splits"].train,
        calibration=digits_cnn["splits"].calibration,
        evaluation=EvaluationSplit(),
        work_dir=tmp_path,
        validation=relative_error_validation(digits_cnn),
    )
    config = step.config_model(type="quantize.nncf", first_last_float=True, float_precision="bf16")
    if not has_bf16():
        with pytest.raises(EdgecraftError, match="float_precision: bf16 needs a CPU that computes bf16"):
            step.apply(digits_cnn["onnx"], config, context)
        return
    outcome = step.apply(digits_cnn["onnx"], config, context)
    control = AccuracyControl.model_validate(outcome.details["accuracy_control"])
    assert control.float_precision == "bf16" and len(control.float_layers) == 2
    target = targets.get("openvino")
    session = target.load(outcome.artifact.path, "cpu", 1, target.options_model())
    assert str(session.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
    explicit = target.load(outcome.artifact.path, "cpu", 1, target.options_model(inference_precision="f32"))
    assert str(explicit.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"


def test_an_onnxruntime_layer_kept_in_float_reads_unrounded_inputs(digits_cnn, tmp_path: Path) -> None:
    """nodes_to_exclude alone leaves an excluded node reading its producer's rounded (DequantizeLinear) output:
    "float" layers that still compute on int8 values, which made EfficientNet-Lite0 worse with 4 of them."""
    import onnx

    from edgecraft.compress.passes.onnx_quantization import OnnxRuntimeInt8, StaticQuantizationConfig

    samples = digits_cnn["splits"].calibration.head(32).samples()
    fmt = OnnxRuntimeInt8(digits_cnn["onnx"].path, samples, StaticQuantizationConfig())
    layers = fmt.layers(fmt.quantize([], tmp_path / "all-int8"))
    middle = layers[1]
    graph = onnx.load(str(fmt.quantize([middle.name], tmp_path / "one-float"))).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    node = next(node for node in graph.node if node.name == middle.name)
    assert [producers.get(name) for name in node.input if name in producers] == ["Clip"], middle
    everything = onnx.load(str(fmt.quantize([layer.name for layer in layers], tmp_path / "all-float"))).graph
    assert not [node.op_type for node in everything.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
