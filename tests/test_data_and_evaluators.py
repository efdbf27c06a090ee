"""Datasets (named inputs, any targets, splits), signatures' synthetic inputs, and the evaluators: no model runs."""

from __future__ import annotations

import numpy as np
import pytest

from edgecraft import data
from edgecraft.bench import evaluators
from edgecraft.bench.evaluators import EvaluatorMismatch, EvaluatorSpec
from edgecraft.compress.base import Dataset
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.targets import feeds

TOKENS = Signature(
    inputs=[
        TensorSpec(name="input_ids", dtype="int64", shape=["batch", "sequence"]),
        TensorSpec(name="attention_mask", dtype="int64", shape=["batch", "sequence"]),
    ],
    outputs=[TensorSpec(name="embedding", dtype="float32", shape=["batch", 8], kind="embedding")],
)


def dataset(samples: int, targets: np.ndarray | None) -> Dataset:
    return Dataset({"x": np.arange(samples, dtype=np.float32)[:, None]}, targets)


def indices(part: Dataset) -> set[int]:
    return {int(value) for value in part.inputs["x"][:, 0]}


# ---- splits ----------------------------------------------------------------------------------------------------


def test_a_thousand_classes_with_two_hundred_samples_split_by_a_seeded_shuffle() -> None:
    """An ImageNet head with a few labelled photos: most classes have one member, so no stratification."""
    labels = np.random.default_rng(0).integers(0, 1000, 200)
    splits = data.split(dataset(200, labels), (0.6, 0.2, 0.2), seed=0)
    assert (len(splits.train), len(splits.calibration), len(splits.evaluation)) == (120, 40, 40)
    assert splits.how.startswith("shuffled")
    parts = [indices(splits.train), indices(splits.calibration), indices(splits.evaluation)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert (
        data.split(dataset(200, labels), (0.6, 0.2, 0.2), seed=0).evaluation.targets.tolist()
        == splits.evaluation.targets.tolist()
    )  # seeded


def test_fractions_that_do_not_divide_evenly_are_rounded() -> None:
    """0.4 / 0.2 / 0.4 of 300 is 120 / 60 / 120; floating point made scikit-learn ask for 301."""
    labels = np.arange(300) % 3
    splits = data.split(dataset(300, labels), (0.4, 0.2, 0.4), seed=0)
    assert (len(splits.train), len(splits.calibration), len(splits.evaluation)) == (120, 60, 120)
    assert splits.how == "stratified"
    assert np.bincount(splits.evaluation.targets).tolist() == [40, 40, 40]
    assert len(indices(splits.train) | indices(splits.calibration) | indices(splits.evaluation)) == 300


def test_fractions_below_one_leave_samples_out_and_targets_of_any_shape_follow() -> None:
    boxes = np.arange(400, dtype=np.float32).reshape(100, 4)
    splits = data.split(dataset(100, boxes), (0.0, 0.3, 0.3), seed=1)
    assert (len(splits.train), len(splits.calibration), len(splits.evaluation)) == (0, 30, 30)
    assert splits.how == "shuffled"
    for part in (splits.calibration, splits.evaluation):  # each target row stays with its input
        assert np.array_equal(part.targets[:, 0], part.inputs["x"][:, 0] * 4)


def test_too_few_samples_for_a_split_is_one_line() -> None:
    with pytest.raises(EdgecraftError) as caught:
        data.split(dataset(4, None), (0.6, 0.1, 0.3), seed=0)
    message = str(caught.value)
    assert "4 samples are too few" in message and "calibration would get no sample" in message
    assert "'calibration': 0" in message and "\n" not in message


# ---- data against a signature ----------------------------------------------------------------------------------


def tokens(samples: int = 6) -> dict[str, np.ndarray]:
    return {"input_ids": np.ones((samples, 5), np.int64), "attention_mask": np.ones((samples, 5), np.int64)}


def test_data_is_checked_against_the_signature_by_name() -> None:
    cast = data.conform(Dataset({**tokens(), "input_ids": np.ones((6, 5), np.int32)}), TOKENS, "data")
    assert cast.inputs["input_ids"].dtype == np.int64  # within a kind: cast
    with pytest.raises(EdgecraftError, match=r"input\(s\) \['attention_mask'\] are missing from the data"):
        data.conform(Dataset({"input_ids": tokens()["input_ids"]}), TOKENS, "data")
    with pytest.raises(EdgecraftError, match="input 'input_ids' has dtype float32 but the model takes int64"):
        data.conform(Dataset({**tokens(), "input_ids": np.ones((6, 5), np.float32)}), TOKENS, "data")
    with pytest.raises(EdgecraftError, match="different numbers of samples"):
        data.conform(Dataset({**tokens(), "attention_mask": np.ones((5, 5), np.int64)}), TOKENS, "data")


def test_extra_arrays_warn_and_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    conformed = data.conform(Dataset({**tokens(), "token_type_ids": np.zeros((6, 5), np.int64)}), TOKENS, "d.npz")
    assert list(conformed.inputs) == ["input_ids", "attention_mask"]
    assert "ignoring array(s) ['token_type_ids']" in caplog.text


def test_npz_keys_name_the_inputs_and_targets(tmp_path) -> None:
    np.savez(tmp_path / "d.npz", **tokens(), targets=np.arange(6))
    loaded = data.load_source("d.npz", tmp_path, TOKENS)
    assert sorted(loaded.inputs) == ["attention_mask", "input_ids"] and loaded.targets.tolist() == list(range(6))
    image = Signature(inputs=[TensorSpec(name="pixels", dtype="float32", shape=["batch", 1, 2, 2])], outputs=[])
    np.savez(tmp_path / "legacy.npz", inputs=np.zeros((3, 1, 2, 2), np.float32), labels=np.arange(3))
    legacy = data.load_source("legacy.npz", tmp_path, image)  # 'inputs' names a single-input model's input
    assert list(legacy.inputs) == ["pixels"] and legacy.targets.tolist() == [0, 1, 2]


def test_synthetic_inputs_follow_dtypes_and_declared_ranges() -> None:
    signature = Signature(
        inputs=[
            *TOKENS.inputs,
            TensorSpec(name="token_type_ids", dtype="int64", shape=["batch", "sequence"]),
            TensorSpec(name="image", dtype="float32", shape=["batch", 3, 4, 4], layout="NCHW", range=(-1.0, 1.0)),
        ],
        outputs=[],
    )
    shapes = {name: [1, 32] for name in ("input_ids", "attention_mask", "token_type_ids")}
    made = feeds.synthetic(signature, 10, vocabulary={"input_ids": 30}, shapes=shapes)
    assert made["input_ids"].shape == (10, 32) and made["input_ids"].dtype == np.int64
    assert 0 <= made["input_ids"].min() and made["input_ids"].max() < 30
    assert (made["attention_mask"] == 1).all() and (made["token_type_ids"] == 0).all()
    assert made["image"].shape == (10, 3, 4, 4) and -1 <= made["image"].min() and made["image"].max() <= 1
    again = feeds.synthetic(signature, 10, vocabulary={"input_ids": 30}, shapes=shapes)
    assert again["image"].tolist() == made["image"].tolist()


def test_synthetic_inputs_never_guess_a_dynamic_axis_besides_the_batch() -> None:
    """A recogniser measured at 16×16 pixels was reported "ok" at a fifteenth of its real latency: the size of a
    dynamic height, width or sequence is asked for, never made up."""
    with pytest.raises(
        feeds.DataMismatch,
        match=r"input 'input_ids' \[batch, sequence\] has dynamic axis 1 besides "
        r"the batch: say the shape to measure at with --shape input_ids=1,N",
    ):
        feeds.synthetic(TOKENS, 4)


# ---- evaluators --------------------------------------------------------------------------------------------------


def test_classification_reports_top1_and_top5() -> None:
    scores = np.eye(6, dtype=np.float32)[[0, 1, 2, 3]] + np.linspace(0, 0.5, 6, dtype=np.float32)
    quality = evaluators.evaluate(
        EvaluatorSpec(type="classification"), {"logits": scores}, {"logits": scores}, np.array([0, 1, 5, 4])
    )
    assert quality.metric == "top-1 accuracy" and quality.value == 0.5
    assert quality.metrics == {"top1": 0.5, "top5": 1.0}


def test_agreement_needs_no_labels() -> None:
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    quality = evaluators.evaluate(EvaluatorSpec(type="agreement"), {"p": reference[[0, 1, 1]]}, {"p": reference}, None)
    assert quality.metric == "top-1 agreement with fp32" and quality.value == pytest.approx(2 / 3)


def test_embedding_reports_cosine_to_fp32_and_recall_at_k() -> None:
    rng = np.random.default_rng(0)
    anchors = rng.standard_normal((4, 16))
    vectors = np.concatenate([anchors, anchors + 0.05 * rng.standard_normal((4, 16))]).astype(np.float32)
    groups = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    spec = EvaluatorSpec(type="embedding", k=1)
    same = evaluators.evaluate(spec, {"e": vectors}, {"e": vectors}, groups)
    assert same.value == pytest.approx(1.0) and same.metrics["recall_at_1"] == 1.0
    noisy = evaluators.evaluate(
        spec, {"e": vectors + rng.standard_normal(vectors.shape).astype(np.float32)}, {"e": vectors}, groups
    )
    assert noisy.value < 0.9 and noisy.metrics["min_cosine"] <= noisy.value


def test_regression_reports_each_output_against_fp32() -> None:
    boxes = np.ones((3, 4), np.float32)
    reference = {"boxes": boxes, "scores": np.ones((3, 2), np.float32)}
    outputs = {"boxes": boxes + 0.1, "scores": reference["scores"]}
    quality = evaluators.evaluate(EvaluatorSpec(type="regression"), outputs, reference, None)
    assert quality.metrics["boxes.max_abs_error"] == pytest.approx(0.1)
    assert quality.metrics["boxes.snr_db"] == pytest.approx(20.0)
    assert "scores.snr_db" not in quality.metrics  # exact: an infinite SNR is left out, never written as a number
    assert quality.value == pytest.approx(1 - np.sqrt(12 * 0.01 / 18))


def test_a_users_metric_function() -> None:
    spec = EvaluatorSpec(type="tests.helpers:mean_output")
    quality = evaluators.evaluate(spec, {"y": np.full((2, 3), 0.25, np.float32)}, {"y": np.zeros((2, 3))}, None)
    assert quality.evaluator == "tests.helpers:mean_output" and quality.metric == "mean" and quality.value == 0.25


@pytest.mark.parametrize(
    ("spec", "outputs", "targets", "message"),
    [
        (
            "classification",
            TOKENS.outputs,
            np.arange(4),
            "reads class scores, but output 'embedding' is declared as embedding: choose embedding",
        ),
        ("classification", [TensorSpec(name="boxes", shape=["batch", 8, 4])], np.arange(4), "has shape"),
        ("classification", [TensorSpec(name="logits", shape=["batch", 10])], None, "needs targets"),
        ("classification", [TensorSpec(name="logits", shape=["batch", 10])], np.array([3, 12]), "label 12 is beyond"),
        ("embedding", [TensorSpec(name="tokens", shape=["batch", "sequence", 8])], None, "[batch, dimensions]"),
    ],
)
def test_an_evaluator_that_does_not_fit_the_outputs_is_refused(spec, outputs, targets, message) -> None:
    with pytest.raises(EvaluatorMismatch) as caught:
        evaluators.check(EvaluatorSpec(type=spec), outputs, targets)
    assert message in str(caught.value)


def test_an_evaluator_reads_named_outputs_and_refuses_unknown_ones() -> None:
    outputs = [TensorSpec(name="boxes", shape=["batch", 4]), TensorSpec(name="probability", shape=["batch", 2])]
    evaluators.check(EvaluatorSpec(type="agreement", outputs=["probability"]), outputs, None)
    with pytest.raises(EvaluatorMismatch, match=r"reads output\(s\) \['score'\], but the model's outputs are"):
        evaluators.check(EvaluatorSpec(type="agreement", outputs=["score"]), outputs, None)
    with pytest.raises(ValueError, match="unknown evaluator 'magic'"):
        EvaluatorSpec(type="magic")


def test_default_evaluator_is_classification_with_labels_and_agreement_without() -> None:
    outputs = [TensorSpec(name="logits", shape=["batch", 10])]
    assert evaluators.choose(None, outputs, np.arange(3)).type == "classification"
    assert evaluators.choose(None, outputs, None).type == "agreement"
    assert evaluators.choose(None, outputs, np.ones((3, 4), np.float32)).type == "agreement"


# ---- which output an evaluator reads -----------------------------------------------------------------------------

FACE = [
    TensorSpec(name="boxes", shape=["batch", 4]),
    TensorSpec(name="landmarks", shape=["batch", 10]),
    TensorSpec(name="face_prob", shape=["batch", 2]),
]


@pytest.mark.parametrize(("targets", "evaluator"), [(np.arange(4), "classification"), (None, "agreement")])
def test_several_outputs_that_could_be_class_scores_are_an_error_that_asks(targets, evaluator) -> None:
    """A three-head face net with labels (or without: agreement is the default then): never a silent pick."""
    spec = evaluators.choose(None, FACE, targets)
    assert spec.type == evaluator and spec.outputs is None
    with pytest.raises(EvaluatorMismatch) as caught:
        evaluators.check(spec, FACE, targets)
    assert str(caught.value) == (
        f"evaluator '{evaluator}': the model has 3 outputs that could hold class scores (boxes [batch, 4], "
        "landmarks [batch, 10], face_prob [batch, 2]); say which with evaluator.outputs: [NAME] in the recipe, "
        "or --evaluator-output NAME on bench"
    )
    arrays = {output.name: np.ones((4, output.shape[1]), np.float32) for output in FACE}
    with pytest.raises(EvaluatorMismatch, match="3 outputs that could hold class scores"):
        evaluators.evaluate(spec, arrays, arrays, targets)  # evaluate refuses to guess too


def test_the_named_output_is_read_by_check_and_by_evaluate() -> None:
    spec = evaluators.choose(EvaluatorSpec(type="classification", outputs=["face_prob"]), FACE, np.arange(4))
    evaluators.check(spec, FACE, np.array([0, 1, 1, 0]))
    reference = {
        "boxes": np.tile([[9.0, 0, 0, 0]], (4, 1)),  # argmax 0 everywhere: 50 % if it were read
        "landmarks": np.zeros((4, 10)),
        "face_prob": np.eye(2)[[0, 1, 1, 0]],
    }
    assert evaluators.evaluate(spec, reference, reference, np.array([0, 1, 1, 0])).value == 1.0


def test_the_one_output_declared_as_scores_is_the_choice() -> None:
    outputs = [*FACE[:2], FACE[2].model_copy(update={"kind": "scores"})]
    spec = evaluators.choose(None, outputs, np.arange(4))
    assert spec.outputs == ["face_prob"]  # choose names it: evaluate reads exactly what check checked
    evaluators.check(spec, outputs, np.array([0, 1, 1, 0]))
    assert evaluators.read_outputs(EvaluatorSpec(type="agreement"), outputs) == [outputs[2]]


def test_one_output_that_fits_among_several_is_read_and_named() -> None:
    outputs = [TensorSpec(name="boxes", shape=["batch", 8, 4]), TensorSpec(name="logits", shape=["batch", 10])]
    spec = evaluators.choose(None, outputs, None)
    assert spec.type == "agreement" and spec.outputs == ["logits"]
    scores = np.eye(10, dtype=np.float32)[[1, 2, 3]]
    arrays = {"boxes": np.zeros((3, 8, 4), np.float32), "logits": scores}
    assert evaluators.evaluate(spec, arrays, arrays, None).value == 1.0


def test_a_single_output_model_is_read_as_before() -> None:
    outputs = [TensorSpec(name="logits", shape=["batch", 10])]
    spec = evaluators.choose(None, outputs, np.arange(3))
    assert spec == EvaluatorSpec(type="classification") and spec.outputs is None  # nothing changes, cache keys too
    assert evaluators.read_outputs(spec, outputs) == outputs


def test_embedding_reads_the_declared_embedding_and_asks_between_two_vectors() -> None:
    declared = [
        TensorSpec(name="embedding", shape=["batch", 8], kind="embedding"),
        TensorSpec(name="logits", shape=["batch", 10]),
    ]
    assert evaluators.choose(EvaluatorSpec(type="embedding"), declared, None).outputs == ["embedding"]
    scores_declared = [declared[0].model_copy(update={"kind": None}), declared[1].model_copy(update={"kind": "scores"})]
    assert evaluators.read_outputs(EvaluatorSpec(type="embedding"), scores_declared) == [scores_declared[0]]
    undeclared = [output.model_copy(update={"kind": None}) for output in declared]
    with pytest.raises(
        EvaluatorMismatch, match=r"2 outputs that could hold an embedding \(embedding \[batch, 8\], logits"
    ):
        evaluators.check(EvaluatorSpec(type="embedding"), undeclared, None)


def test_regression_and_a_users_function_read_every_output_without_asking() -> None:
    for name in ("regression", "tests.helpers:mean_output"):
        spec = evaluators.choose(EvaluatorSpec(type=name), FACE, np.arange(4))
        assert spec.outputs is None and evaluators.read_outputs(spec, FACE) == FACE
        evaluators.check(spec, FACE, np.arange(4))


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("missing_mod:score", "evaluator 'missing_mod:score': cannot import 'missing_mod': no module 'missing_mod'"),
        ("tests.helpers:no_such_metric", "cannot import 'no_such_metric'"),
        ("tests.fixtures_models:THREE_HEAD_INPUT", "is a str, not a function"),
    ],
)
def test_a_users_evaluator_is_imported_and_checked_before_anything_runs(reference, message) -> None:
    with pytest.raises(EvaluatorMismatch) as caught:
        evaluators.check(EvaluatorSpec(type=reference), [TensorSpec(name="y", shape=["batch", 3])], None)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1
