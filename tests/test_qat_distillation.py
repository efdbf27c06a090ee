"""quantize.qat without labels: the fp32 model teaches its fake-quantized self (QAT by self-distillation).

The model built to lose under post-training quantization is the outlier-channel digits-cnn of
tests/test_quantization_training.py, with a second output (its pooled features, an embedding) and no labels
anywhere. Bars on trained models are margins below what was measured, never one run's value (see that file).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgecraft.bench.evaluators import EvaluatorSpec
from edgecraft.compress.base import Artifact, Dataset, PassContext
from edgecraft.compress.passes.qat import NO_EVALUATOR, QatConfig, choose_losses
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.preparation import validation_for
from tests.conftest import REPO
from tests.test_quantization_training import apply


class ScoresAndEmbedding(nn.Module):
    """digits-cnn returning its class scores and its pooled features: two outputs, two kinds."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.flatten(self.cnn.pool(self.cnn.features(x)), 1)
        return self.cnn.classifier(features), features


def with_outlier_channel(cnn: nn.Module) -> nn.Module:
    """The same function, with one channel of the first block 100× larger (and the next convolution scaled to
    match): per-tensor int8 activations then spend their range on it (see the outlier test of QAT with labels)."""
    model = copy.deepcopy(cnn)
    norm, following = model.features[0][1], model.features[1][0]
    with torch.no_grad():
        norm.weight[0] *= 100
        norm.bias[0] *= 100
        following.weight[:, 0] /= 100
    return model


def two_outputs(digits_cnn: dict) -> Artifact:
    from edgecraft.model_source import with_outputs

    model = ScoresAndEmbedding(with_outlier_channel(digits_cnn["model"])).eval()
    declared = [TensorSpec(name="logits", kind="scores"), TensorSpec(name="embedding", kind="embedding")]
    signature = with_outputs(model, Signature(inputs=digits_cnn["signature"].inputs, outputs=declared))
    return Artifact("torch", signature, model=model)


def unlabelled(digits_cnn: dict, artifact: Artifact, evaluator: str | None) -> PassContext:
    """The digits splits without targets, no train split, the evaluator (if any, reading the first output) on the
    calibration split."""
    splits = digits_cnn["splits"]
    calibration = Dataset(splits.calibration.inputs)
    spec = EvaluatorSpec(type=evaluator, outputs=artifact.signature.output_names[:1]) if evaluator else None
    validation = validation_for(spec, artifact, calibration) if spec else None
    return PassContext(
        train=Dataset({"input": splits.train.inputs["input"][:0]}),
        calibration=calibration,
        evaluation=Dataset(splits.evaluation.inputs),
        work_dir=digits_cnn["context"].work_dir,
        validation=validation,
    )


def onnx_outputs(path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))


def agreement_and_cosine(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> tuple[float, float]:
    agreement = float((outputs["logits"].argmax(1) == reference["logits"].argmax(1)).mean())
    a, b = outputs["embedding"], reference["embedding"]
    cosine = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return agreement, float(cosine.mean())


def test_self_distillation_recovers_what_static_ptq_loses_on_a_two_output_model_without_labels(
    digits_cnn: dict, tmp_path
) -> None:
    """Measured on an AMD EPYC (AVX-512 VNNI): top-1 agreement with fp32 / embedding cosine, PTQ 43 % / 0.90,
    QAT by self-distillation 97 % / 0.99. The bars hold the outlier test's margins: PTQ loses at least 10 points,
    QAT recovers at least 10 of them and ends within 6 points of fp32."""
    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.compress.torch_io import predict

    artifact = two_outputs(digits_cnn)
    context = {"context": unlabelled(digits_cnn, artifact, "agreement")}
    x = digits_cnn["splits"].evaluation.inputs["input"]
    reference = predict(artifact.model, {"input": x}, artifact.signature)
    exported = Artifact(
        "onnx", artifact.signature, path=export_torch(artifact.model, artifact.signature, tmp_path / "fp32.onnx")
    )
    ptq = agreement_and_cosine(
        onnx_outputs(apply("quantize.static", exported, context, tmp_path).artifact.path, x), reference
    )
    trained = apply("quantize.qat", artifact, context, tmp_path, epochs=3, batch_size=32, lr=1e-4)
    qat = agreement_and_cosine(onnx_outputs(trained.artifact.path, x), reference)
    assert ptq[0] <= 0.9, (ptq, qat)
    assert qat[0] >= ptq[0] + 0.1 and qat[0] >= 0.94, (ptq, qat)
    assert qat[1] > ptq[1], (ptq, qat)
    details = trained.details
    assert details["objective"] == "self-distillation from the fp32 model"
    assert details["losses"] == {"logits": "kl", "embedding": "cosine"}
    calibration = len(context["context"].calibration)
    assert details["metric"] == "top-1 agreement with fp32" and details["training_samples"] == calibration
    scores = [details["metric_before"], *details["metric_per_epoch"]]
    assert len(scores) == 4 and scores[details["best_epoch"]] == max(scores) and details["stopped_early"] is False
    assert "accuracy_before" not in details and "accuracy_after" not in details  # no labels: no top-1 computed


SIGNATURE = Signature(
    inputs=[TensorSpec(name="input", dtype="float32", shape=["batch", 4])],
    outputs=[
        TensorSpec(name="logits", kind="scores"),
        TensorSpec(name="embedding", kind="embedding"),
        TensorSpec(name="boxes", kind="values"),
        TensorSpec(name="extra"),
    ],
)


def metric_of(evaluator: str) -> str:
    """The evaluator's own metric name, as a recipe run hands it to the pass."""
    artifact = Artifact("torch", SIGNATURE, model=None)
    return validation_for(EvaluatorSpec(type=evaluator), artifact, Dataset({})).metric


def test_losses_follow_the_declared_kind_then_the_evaluator_then_the_recipe() -> None:
    assert choose_losses(SIGNATURE, None, "auto") == {
        "logits": "kl",
        "embedding": "cosine",
        "boxes": "mse",
        "extra": "mse",
    }
    chosen = choose_losses(SIGNATURE, None, {"extra": "cosine", "logits": "mse"})
    assert chosen == {"logits": "mse", "embedding": "cosine", "boxes": "mse", "extra": "cosine"}
    single = Signature(inputs=SIGNATURE.inputs, outputs=[TensorSpec(name="out")])
    assert choose_losses(single, metric_of("embedding"), "auto") == {"out": "cosine"}
    assert choose_losses(single, metric_of("agreement"), "auto") == {"out": "kl"}
    assert choose_losses(single, metric_of("classification"), "auto") == {"out": "kl"}
    assert choose_losses(single, metric_of("regression"), "auto") == {"out": "mse"}
    # The evaluator reads one output of several, which the pass cannot tell: undeclared outputs stay MSE.
    assert choose_losses(SIGNATURE, metric_of("embedding"), "auto")["extra"] == "mse"


def test_a_loss_for_an_unknown_output_is_one_line_naming_the_outputs() -> None:
    with pytest.raises(ValueError) as error:
        choose_losses(SIGNATURE, None, {"score": "kl", "box": "mse"})
    assert str(error.value) == (
        "quantize.qat loss: unknown output(s) ['box', 'score']; the model's outputs are "
        "['logits', 'embedding', 'boxes', 'extra']"
    )
    with pytest.raises(ValueError, match="Input should be 'kl', 'mse' or 'cosine'"):
        QatConfig(type="quantize.qat", loss={"logits": "l1"})


def test_labels_are_mixed_in_only_where_there_are_class_labels_for_a_scores_output(digits_cnn: dict, tmp_path) -> None:
    from edgecraft.compress.training import NotTrainable

    bare = {"context": unlabelled(digits_cnn, digits_cnn["torch"], None)}
    with pytest.raises(NotTrainable) as error:
        apply("quantize.qat", digits_cnn["torch"], bare, tmp_path, alpha=0.5)
    assert str(error.value) == (
        "quantize.qat with alpha 0.5 < 1 (alpha: 1 needs no labels) trains on class labels (integer targets "
        "[samples]); the data has no targets"
    )
    # An embedding model's group ids are integer targets too, but no output predicts them.
    embedder = Artifact(
        "torch",
        digits_cnn["signature"].model_copy(update={"outputs": [TensorSpec(name="logits", kind="embedding")]}),
        model=digits_cnn["model"],
    )
    grouped = {"context": digits_cnn["context"]}
    with pytest.raises(ValueError) as error:
        apply("quantize.qat", embedder, grouped, tmp_path, alpha=0.5)
    assert str(error.value) == (
        "quantize.qat with alpha 0.5 < 1 (alpha: 1 needs no labels) fits class labels to class scores, but its "
        "output is distilled as {'logits': 'cosine'}"
    )


def test_early_stopping_records_every_epoch_and_keeps_the_best(digits_cnn: dict, tmp_path) -> None:
    """A learning rate that wrecks the model: the first epoch is worse than none, training stops after
    `patience` epochs, and the model written is the one before training, as its score on the calibration split
    shows."""
    context = unlabelled(digits_cnn, digits_cnn["torch"], "agreement")
    outcome = apply("quantize.qat", digits_cnn["torch"], {"context": context}, tmp_path, epochs=4, lr=0.5, patience=1)
    details = outcome.details
    assert details["metric"] == "top-1 agreement with fp32" and details["best_epoch"] == 0
    assert details["stopped_early"] is True and details["epochs_run"] == 1 and len(details["metric_per_epoch"]) == 1
    assert details["metric_per_epoch"][0] < details["metric_before"] - 0.2, details
    written = context.validation.score(onnx_outputs(outcome.artifact.path, context.calibration.inputs["input"]))
    assert written == pytest.approx(details["metric_before"], abs=0.02), details
    assert written > details["metric_per_epoch"][0] + 0.2


@pytest.mark.slow  # a whole QAT run (a minute on 2 cores) for one branch of the early stopping
def test_without_an_evaluator_it_stops_on_the_distillation_loss_and_says_so(digits_cnn: dict, tmp_path) -> None:
    context = unlabelled(digits_cnn, digits_cnn["torch"], None)
    outcome = apply("quantize.qat", digits_cnn["torch"], {"context": context}, tmp_path, epochs=2, lr=0.5, patience=1)
    details = outcome.details
    assert details["metric"] == NO_EVALUATOR and details["best_epoch"] == 0 and details["stopped_early"] is True
    assert details["metric_per_epoch"][0] > details["metric_before"]  # a loss: lower is better


@pytest.mark.slow
def test_self_distillation_holds_minilm_with_static_int8_activations(tmp_path) -> None:
    """all-MiniLM-L6-v2 has no labels: QAT by self-distillation on the calibration split (60 texts, as
    recipes/minilm-qat.yaml) with the feed-forward output layers in float keeps the mean cosine to fp32 at
    or above 0.995 on the evaluation split on ONNX Runtime and OpenVINO, with static int8 activations
    everywhere else. The recipe's settings, as a run hands them to the pass."""
    from edgecraft import data
    from edgecraft.compress.pretrained import minilm
    from edgecraft.compress.torch_io import predict
    from edgecraft.compress.zoo import REFERENCE_MODELS
    from edgecraft.recipe.load import load_recipe
    from edgecraft.targets import registry as targets

    reference = REFERENCE_MODELS["minilm-l6"]
    model, signature = reference.build().eval(), reference.signature
    inputs, groups = minilm.dataset()
    splits = data.split(Dataset(inputs, groups), (0.0, 0.2, 0.4), 0, grouped=True)
    artifact = Artifact("torch", signature, model=model)
    context = PassContext(
        train=splits.train,
        calibration=splits.calibration,
        evaluation=splits.evaluation,
        work_dir=tmp_path,
        validation=validation_for(EvaluatorSpec(type="embedding"), artifact, splits.calibration),
    )
    recipe, _ = load_recipe(REPO / "recipes" / "minilm-qat.yaml")
    qat = next(p for v in recipe.variants for p in v.passes if p.type == "quantize.qat")
    outcome = apply("quantize.qat", artifact, {"context": context}, tmp_path, **qat.model_dump(exclude={"type"}))
    expected = predict(model, splits.evaluation.inputs, signature)["sentence_embedding"]
    assert outcome.details["losses"] == {"sentence_embedding": "cosine"} and "accuracy_after" not in outcome.details
    for runtime in ("onnxruntime", "openvino"):
        target = targets.get(runtime)
        session = target.load(outcome.artifact.path, "cpu", 1, target.options_model())
        produced = target.run(session, splits.evaluation.inputs)["sentence_embedding"]
        cosine = (produced * expected).sum(1) / (np.linalg.norm(produced, axis=1) * np.linalg.norm(expected, axis=1))
        assert cosine.mean() >= 0.995, (runtime, cosine.mean(), outcome.details)
