"""Models whatever their inputs and outputs, through the real command line: several named outputs of different
shapes on every runtime, token ids with a mask and a sequence axis, a native NHWC TFLite file with synthetic
inputs, the split shapes that used to crash, and the bad inputs that must be one line and exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from edgecraft.core.results import RunResults
from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft
from tests.fixtures_models import NATIVE_TFLITE_OUTPUTS, THREE_HEAD_OUTPUTS, write_native_tflite

QUICK = "benchmark: {profile: quick, batch_sizes: [1, 4], parallel_requests: [1]}\n"


def run(recipe_text: str, tmp_path: Path, *args: str) -> tuple[RunResults, Path]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    completed = edgecraft("run", recipe, "--output-dir", tmp_path / "runs", *args)
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    return load_results(run_dir), run_dir


def fails_in_one_line(recipe_text: str, tmp_path: Path, *expected: str) -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text)
    completed = edgecraft("run", recipe, "--quick", "--output-dir", tmp_path / "runs")
    err = completed.stderr.strip()
    assert completed.returncode == 2, err[-2000:]
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


THREE_HEADS = f"""name: three-heads
models:
  - factory: tests.fixtures_models:three_head_net
    outputs: [boxes, landmarks, face_probability]
    evaluator: regression
data:
  source: tests.fixtures_models:three_head_dataset
  splits: {{train: 0.0, calibration: 0.4, evaluation: 0.3}}
variants:
  - name: fp32
  - name: int8
    passes: [{{type: quantize.static}}]
  - name: tflite
    passes: [{{type: convert.tflite}}]
  - name: tflite-int8
    passes: [{{type: convert.tflite, quantization: int8}}]
targets: [onnxruntime:cpu, openvino:cpu, litert:cpu]
{QUICK}"""


def test_three_heads_of_different_shapes_run_on_every_runtime_with_per_output_fidelity(tmp_path: Path) -> None:
    results, run_dir = run(THREE_HEADS, tmp_path)
    model = results.models[0]
    assert [spec.describe() for spec in model.signature.outputs] == [
        "boxes: float32 [batch×4]",
        "landmarks: float32 [batch×10]",
        "face_probability: float32 [batch×2]",
    ]
    assert model.reference.metric == "1 − relative L2 error" and model.reference.value == 1.0
    rows = {(row.variant, row.target): row for row in results.rows}
    assert set(rows) == {
        ("fp32", "onnxruntime:cpu"),
        ("fp32", "openvino:cpu"),
        ("int8", "onnxruntime:cpu"),
        ("int8", "openvino:cpu"),
        ("tflite", "litert:cpu"),
        ("tflite-int8", "litert:cpu"),
    }
    for key, row in rows.items():
        assert row.status == "ok", (key, row.reason)
        fidelity = row.measurement.fidelity.outputs
        assert list(fidelity) == THREE_HEAD_OUTPUTS, key  # every output, by the model's own names
        if row.lossless:  # fp32 on ORT and OpenVINO, and the fp32 TFLite (NHWC inside, heads reordered by onnx2tf)
            assert all(o.max_abs_diff <= 1e-4 for o in fidelity.values()), (key, fidelity)
            assert not row.warnings or all(not w.startswith("conversion bug?") for w in row.warnings)
        else:  # int8 differs, on every head, by a measured amount
            assert all(0 < o.max_abs_diff < 2 and o.snr_db > 10 for o in fidelity.values()), (key, fidelity)
        quality = row.measurement.quality
        assert {f"{name}.max_abs_error" for name in THREE_HEAD_OUTPUTS} <= set(quality.metrics)
    html = (run_dir / "report.html").read_text()
    assert 'id="fidelity-table"' in html and html.count("<code>face_probability</code>") == len(rows)
    assert "image: float32 [batch×3×48×48] NCHW" in html and "1 − relative L2 error" in html


TOKENS = f"""name: tokens
models:
  - factory: tests.helpers:token_pooler
    outputs: [{{name: embedding, kind: embedding}}]
    evaluator: {{type: embedding, k: 1}}
data:
  source: tests.helpers:token_data
  splits: {{train: 0.0, calibration: 0.5, evaluation: 0.5}}
variants:
  - name: fp32
  - name: int8-dynamic
    passes: [{{type: quantize.dynamic}}]
targets: [onnxruntime:cpu, openvino:cpu]
{QUICK}"""


def test_token_ids_and_a_mask_with_a_dynamic_sequence_axis(tmp_path: Path) -> None:
    """A transformer's signature: int64 ids and mask, batch and sequence dynamic in the export."""
    import onnx

    results, run_dir = run(TOKENS, tmp_path)
    model = results.models[0]
    assert [spec.describe() for spec in model.signature.inputs] == [
        "input_ids: int64 [batch×12]",
        "attention_mask: int64 [batch×12]",
    ]
    assert model.data_shapes == {"input_ids": [1, 12], "attention_mask": [1, 12]}
    assert any("sequence length 12 (padded)" in note and "real tokens per sample" in note for note in model.data_notes)
    exported = onnx.load(str(run_dir / "models" / "token_pooler" / "fp32.onnx"))
    assert [i.name for i in exported.graph.input] == ["input_ids", "attention_mask"]
    assert exported.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    # Pairs differ in one token: the fp32 model finds most partners (chance would be 1 in 59), and the split kept
    # every pair whole (an evaluation split of single members would have no recall at all).
    assert model.reference.metric == "mean cosine to fp32" and model.reference.metrics["recall_at_1"] >= 0.5
    assert any("grouped by target" in note for note in model.data_notes)
    for row in results.rows:
        assert row.status == "ok", row.reason
        assert row.measurement.quality.metrics["mean_cosine"] > 0.99
    fp32 = [row for row in results.rows if row.variant == "fp32"]
    assert all(row.measurement.fidelity.max_abs_diff <= 1e-4 for row in fp32)


def test_a_token_model_exports_with_a_dynamic_sequence(tmp_path: Path) -> None:
    import onnxruntime

    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.core.signature import Signature, TensorSpec
    from tests.helpers import token_pooler

    signature = Signature(
        inputs=[
            TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in ("input_ids", "attention_mask")
        ],
        outputs=[TensorSpec(name="embedding")],
    )
    path = export_torch(token_pooler(), signature, tmp_path / "tokens.onnx")
    session = onnxruntime.InferenceSession(str(path))
    for batch, length in ((1, 5), (3, 40)):
        feeds = {"input_ids": np.ones((batch, length), np.int64), "attention_mask": np.ones((batch, length), np.int64)}
        assert session.run(None, feeds)[0].shape == (batch, 8)


def test_native_nhwc_tflite_with_two_outputs_runs_on_synthetic_inputs(tmp_path: Path) -> None:
    """A .tflite written by TensorFlow (not edgecraft), measured as it is: NHWC, no transposition, no accuracy."""
    model = write_native_tflite(tmp_path / "detector.tflite")
    completed = edgecraft("bench", model, "--quick", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 0, completed.stderr[-2000:]
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = load_results(run_dir)
    record = results.models[0]
    assert [spec.describe() for spec in record.signature.inputs] == ["image: float32 [batch×64×64×3] NHWC"]
    assert {spec.name: spec.shape[1:] for spec in record.signature.outputs} == {
        name: list(shape) for name, shape in NATIVE_TFLITE_OUTPUTS.items()
    }
    assert record.data_shapes == {"image": [1, 64, 64, 3]}
    row = results.rows[0]
    assert row.status == "ok" and row.measurement.latency_ms.p50 > 0
    assert (
        row.measurement.accuracy is None and row.measurement.quality.not_measured == "not measured (no labelled data)"
    )
    assert set(row.measurement.fidelity.outputs) == set(NATIVE_TFLITE_OUTPUTS)
    html = (run_dir / "report.html").read_text()
    assert "not measured (no labelled data)" in html
    assert "accuracy " + "%" not in (run_dir / "summary.md").read_text()


def test_a_thousand_class_model_with_two_hundred_labelled_samples_runs(tmp_path: Path) -> None:
    results, _ = run(
        "name: wide\nmodels: [{factory: 'tests.helpers:wide_classifier'}]\n"
        "data: {source: 'tests.helpers:wide_data'}\nvariants: [{name: fp32}]\n" + QUICK,
        tmp_path,
    )
    assert results.rows[0].status == "ok"
    assert results.models[0].reference.metric == "top-1 accuracy"
    assert any("200" not in note and "40 evaluation samples (shuffled" in note for note in results.models[0].data_notes)


def test_fractions_point_four_point_two_point_four_on_three_hundred_samples_run(tmp_path: Path) -> None:
    results, _ = run(
        "name: split\nmodels: [{factory: 'tests.helpers:tiny_net'}]\n"
        "data: {source: 'tests.helpers:three_hundred', splits: {train: 0.4, calibration: 0.2, "
        "evaluation: 0.4}}\nvariants: [{name: fp32}]\n" + QUICK,
        tmp_path,
    )
    assert results.rows[0].status == "ok"
    assert results.models[0].data_notes[0].startswith("120 evaluation samples (stratified")


# ---- bad input: one line, exit 2 -------------------------------------------------------------------------------

TOKEN_MODEL = "name: bad\nmodels:\n  - factory: tests.helpers:token_pooler\nvariants: [{name: fp32}]\n"


def token_npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    np.savez(tmp_path / "tokens.npz", **arrays)
    return TOKEN_MODEL + "data: {source: tokens.npz}\n"


def test_input_names_that_do_not_match_the_models(tmp_path: Path) -> None:
    ids = np.ones((20, 6), np.int64)
    recipe = TOKEN_MODEL.replace(
        "token_pooler\n",
        "token_pooler\n    inputs: [{name: input_ids, dtype: int64, "
        "shape: [batch, sequence]}, {name: attention_mask, dtype: int64, shape: [batch, "
        "sequence]}]\n",
    )
    np.savez(tmp_path / "tokens.npz", ids=ids, mask=ids)
    fails_in_one_line(
        recipe + "data: {source: tokens.npz}\n",
        tmp_path,
        "input(s) ['input_ids', 'attention_mask'] are missing from the data; it has ['ids', 'mask']",
    )


def test_a_wrong_dtype(tmp_path: Path) -> None:
    recipe = TOKEN_MODEL.replace(
        "token_pooler\n",
        "token_pooler\n    inputs: [{name: input_ids, dtype: int64, "
        "shape: [batch, sequence]}, {name: attention_mask, dtype: int64, shape: [batch, "
        "sequence]}]\n",
    )
    np.savez(tmp_path / "tokens.npz", input_ids=np.ones((20, 6), np.float32), attention_mask=np.ones((20, 6), np.int64))
    fails_in_one_line(
        recipe + "data: {source: tokens.npz}\n",
        tmp_path,
        "input 'input_ids' has dtype float32 but the model takes int64",
    )


def test_a_missing_required_input(tmp_path: Path) -> None:
    """Inputs read from the data: the model's forward then lacks an argument."""
    text = token_npz(tmp_path, input_ids=np.ones((20, 6), np.int64))
    fails_in_one_line(
        text,
        tmp_path,
        "the model's forward() takes (input_ids, attention_mask); the data has ['input_ids'], with no attention_mask",
    )


def test_an_evaluator_that_does_not_fit_the_outputs(tmp_path: Path) -> None:
    ids = np.ones((20, 6), np.int64)
    text = token_npz(tmp_path, input_ids=ids, attention_mask=ids, targets=np.arange(20) % 4)
    text = text.replace(
        "token_pooler\n",
        "token_pooler\n    outputs: [{name: embedding, kind: embedding}]\n    evaluator: classification\n",
    )
    fails_in_one_line(
        text,
        tmp_path,
        "model 'token_pooler'",
        "evaluator 'classification' reads class scores",
        "'embedding' is declared as embedding",
    )


def test_an_npz_with_extra_arrays_warns_and_runs(tmp_path: Path) -> None:
    ids = np.ones((40, 6), np.int64)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(token_npz(tmp_path, input_ids=ids, attention_mask=ids, token_type_ids=0 * ids) + QUICK)
    completed = edgecraft("run", recipe, "--output-dir", tmp_path / "runs")
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "ignoring array(s) ['token_type_ids']" in completed.stderr


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("evaluator", "magic", "unknown evaluator 'magic'"),
        ("inputs", "[{name: x, dtype: complex64, shape: [batch, 3]}]", "unknown dtype 'complex64'"),
    ],
)
def test_bad_signature_and_evaluator_fields_point_at_the_recipe_line(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    text = TOKEN_MODEL.replace("token_pooler\n", f"token_pooler\n    {field}: {value}\n")
    fails_in_one_line(text, tmp_path, f"{tmp_path / 'recipe.yaml'}:", f"models[0].{field}", message)


def test_a_training_pass_on_a_three_head_model_fails_its_rows_with_the_reason(tmp_path: Path) -> None:
    """Pruning with fine-tuning fits class scores to labels: on three heads it says why it cannot, and only the
    variant that asked for it fails."""
    text = THREE_HEADS.replace(
        """variants:
  - name: fp32""",
        """variants:
  - name: fp32
  - name: pruned
    passes: [{type: prune.structured, ratio: 0.5, finetune_epochs: 1}, {type: export.onnx}]""",
    )
    # Only ONNX Runtime, and so none of the TFLite variants (a variant no target runs is refused at validation).
    text = text.replace("targets: [onnxruntime:cpu, openvino:cpu, litert:cpu]", "targets: [onnxruntime:cpu]")
    text = re.sub(r"  - name: tflite.*\n    passes: .*\n", "", text)
    results, _ = run(text.replace("train: 0.0", "train: 0.3"), tmp_path)
    rows = {row.variant: row for row in results.rows}
    assert rows["fp32"].status == "ok" and rows["int8"].status == "ok"
    assert rows["pruned"].status == "failed"
    assert "fits one [batch, classes] output to class labels; the model has 3 outputs" in rows["pruned"].reason


def test_bench_a_two_input_onnx_file_with_named_data_and_an_evaluator(tmp_path: Path) -> None:
    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.core.signature import Signature, TensorSpec
    from tests.helpers import token_data, token_pooler

    signature = Signature(
        inputs=[
            TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in ("input_ids", "attention_mask")
        ],
        outputs=[TensorSpec(name="embedding")],
    )
    model = export_torch(token_pooler(), signature, tmp_path / "tokens.onnx")
    np.savez(tmp_path / "tokens.npz", **token_data())
    completed = edgecraft(
        "bench",
        model,
        "--inputs",
        tmp_path / "tokens.npz",
        "--evaluator",
        "embedding",
        "--target",
        "onnxruntime:cpu",
        "--target",
        "openvino:cpu",
        "--quick",
        "--output-dir",
        tmp_path / "runs",
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    assert results.models[0].data_shapes == {"input_ids": [1, 12], "attention_mask": [1, 12]}
    for row in results.rows:
        assert row.status == "ok" and row.measurement.quality.metric == "mean cosine to fp32"
        assert (
            row.measurement.accuracy == pytest.approx(1.0, abs=1e-6)
            and "recall_at_5" in row.measurement.quality.metrics
        )
