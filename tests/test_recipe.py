"""Recipe validation: good recipes load, bad ones name the file, line, field and problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecraft.cli import main
from edgecraft.errors import EdgecraftError
from edgecraft.recipe import load_recipe, recipe_json_schema

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
name: t
models:
  - builtin: digits-cnn
variants:
  - name: fp32
  - name: int8
    passes:
      - type: quantize.static
        calibration_method: entropy
targets: [onnxruntime:cpu]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(EdgecraftError) as info:
        load_recipe(write(tmp_path, text))
    return str(info.value)


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "recipes").glob("*.yaml")))
def test_shipped_recipes_are_valid(name: str) -> None:
    recipe, text = load_recipe(REPO / "recipes" / name)
    assert recipe.variants and text


def test_good_recipe_parses_passes_into_typed_configs(tmp_path: Path) -> None:
    recipe, _ = load_recipe(write(tmp_path, GOOD))
    static = recipe.variants[1].passes[0]
    assert static.type == "quantize.static"
    assert static.calibration_method == "entropy"
    assert static.per_channel is True  # default filled in
    assert [entry.label for entry in recipe.targets] == ["onnxruntime:cpu"]


def test_malformed_yaml_names_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, "name: t\nmodels: [\n  - builtin: digits-cnn\n")
    assert "malformed YAML" in message
    assert f"{tmp_path / 'recipe.yaml'}:3:" in message


def test_unknown_pass_names_the_line_and_the_known_passes(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("type: quantize.static", "type: quantize.magic"))
    assert ":8:" in message  # the line of the bad entry
    assert "variants[1].passes[0]" in message
    assert "quantize.magic" in message and "quantize.static" in message


def test_bad_option_value_points_at_its_own_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("calibration_method: entropy", "calibration_method: median"))
    assert ":9:" in message and "calibration_method" in message and "'median'" in message


def test_missing_model_file(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("builtin: digits-cnn", "onnx: missing.onnx"))
    assert ":3:" in message and "models[0].onnx" in message
    assert "file not found" in message and "missing.onnx" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("builtin: digits-cnn", "builtin: resnet-9000"), "models[0].builtin"),
        (("builtin: digits-cnn", "factory: not-a-reference"), "module:function"),
        (("onnxruntime:cpu", "tensorrt:gpu"), "unknown runtime 'tensorrt'"),
        (("onnxruntime:cpu", "onnxruntime:tpu"), "no device 'tpu'"),
        (("name: int8", "name: fp32"), "variant names must be unique"),
        (("calibration_method: entropy", "calibration_methd: entropy"), "Extra inputs are not permitted"),
        (("name: t\n", "name: t\ndata: {splits: {train: 0.7, calibration: 0.2, evaluation: 0.2}}\n"), "at most 1, got 1.1"),
        (("builtin: digits-cnn\n", "builtin: digits-cnn\n    evaluator: magic\n"), "recipe.yaml:4: models[0].evaluator"),
        (("builtin: digits-cnn\n", "builtin: digits-cnn\n    evaluator: magic\n"), "unknown evaluator 'magic'"),
        (("builtin: digits-cnn\n", "builtin: digits-cnn\n    outputs: [logits]\n"), "factory model's signature"),
        (("builtin: digits-cnn\n", "factory: m:f\n    input_shape: [3]\n    inputs: [{name: x, shape: [batch]}]\n"),
         "give inputs or input_shape, not both"),
        (("name: t\n", "name: t\nbenchmark: {runs: 0}\n"), "benchmark.runs"),
        (("name: t\n", ""), "name: Field required"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    assert expected in error_of(tmp_path, GOOD.replace(*change))


def test_onnx_passes_cannot_run_before_export(tmp_path: Path) -> None:
    text = GOOD.replace("variants:", "passes:\n  - type: quantize.dynamic\nvariants:")
    assert "passes[0] (quantize.dynamic) needs a onnx model but gets torch" in error_of(tmp_path, text)


def test_variants_may_start_from_the_pytorch_model_but_must_end_in_a_file(tmp_path: Path) -> None:
    recipe, _ = load_recipe(write(tmp_path, GOOD.replace("type: quantize.static\n        calibration_method: entropy",
                                                         "type: quantize.qat")))
    assert recipe.variants[1].passes[0].type == "quantize.qat"
    ends_in_torch = GOOD.replace("type: quantize.static\n        calibration_method: entropy", "type: prune.structured")
    assert "variants[1].passes end with a PyTorch model" in error_of(tmp_path, ends_in_torch)
    onnx_model = (tmp_path / "m.onnx")
    onnx_model.write_bytes(b"")
    on_onnx = GOOD.replace("builtin: digits-cnn", f"onnx: {onnx_model}").replace(
        "type: quantize.static\n        calibration_method: entropy", "type: quantize.qat")
    assert "(quantize.qat) changes a PyTorch model; it cannot apply to an onnx model" in error_of(tmp_path, on_onnx)


def test_json_schema_lists_every_registered_pass() -> None:
    schema = json.dumps(recipe_json_schema())
    assert '"quantize.static"' in schema and '"quantize.dynamic"' in schema


def test_cli_schema_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Recipe"
    assert main(["recipe", "validate", str(write(tmp_path, GOOD))]) == 0
    assert "ok (1 model(s), 2 variant(s), 1 target(s))" in capsys.readouterr().out


def test_cli_bad_recipe_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["recipe", "validate", str(write(tmp_path, GOOD.replace("quantize.static", "prune.magic")))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
