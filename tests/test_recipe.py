"""Recipe validation: good recipes load, bad ones name the file, line, field and problem."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from edgecraft.cli import main
from edgecraft.core.errors import EdgecraftError
from edgecraft.recipe.load import load_recipe
from edgecraft.recipe.schema import recipe_json_schema

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


def tiny_onnx(path: Path) -> Path:
    """A valid one-node ONNX model (Identity)."""
    tensor = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4]) for name in ("x", "y")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "tiny", [tensor[0]], [tensor[1]])
    onnx.save(helper.make_model(graph), path)
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
        (
            ("name: t\n", "name: t\ndata: {splits: {train: 0.7, calibration: 0.2, evaluation: 0.2}}\n"),
            "at most 1, got 1.1",
        ),
        (
            ("builtin: digits-cnn\n", "builtin: digits-cnn\n    evaluator: magic\n"),
            "recipe.yaml:4: models[0].evaluator",
        ),
        (("builtin: digits-cnn\n", "builtin: digits-cnn\n    evaluator: magic\n"), "unknown evaluator 'magic'"),
        (
            ("builtin: digits-cnn\n", "builtin: digits-cnn\n    outputs: [logits]\n"),
            "carries its own inputs and outputs",
        ),
        (
            ("builtin: digits-cnn\n", "factory: m:f\n    input_shape: [3]\n    inputs: [{name: x, shape: [batch]}]\n"),
            "give inputs or input_shape, not both",
        ),
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
    recipe, _ = load_recipe(
        write(
            tmp_path, GOOD.replace("type: quantize.static\n        calibration_method: entropy", "type: quantize.qat")
        )
    )
    assert recipe.variants[1].passes[0].type == "quantize.qat"
    ends_in_torch = GOOD.replace("type: quantize.static\n        calibration_method: entropy", "type: prune.structured")
    assert "variants[1].passes end with a PyTorch model" in error_of(tmp_path, ends_in_torch)
    onnx_model = tiny_onnx(tmp_path / "m.onnx")
    on_onnx = GOOD.replace("builtin: digits-cnn", f"onnx: {onnx_model}").replace(
        "type: quantize.static\n        calibration_method: entropy", "type: quantize.qat"
    )
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


# --- recipes that used to validate and then crash (issue 11) -------------------------------------------------------

# The 460-byte file of the issue: six levels of ten-fold aliases are a million values once written out.
ALIAS_BOMB = "extra:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"  {b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdef", "bcdefg")
)
SHORT = "name: t\nmodels:\n  - builtin: digits-cnn\nvariants:\n  - name: fp32\n"  # line 6 is what follows


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SHORT + "extra: &a [*a]\n", "6: extra[0]: alias *a is inside the value it names"),
        (
            SHORT + ALIAS_BOMB,
            "6: extra: its aliases expand to more than 100000 values; write it out without nested aliases",
        ),
        (
            SHORT + "variants:\n  - name: int8\n",
            "6: variants: given twice, on lines 4 and 6 (YAML would silently keep only the last)",
        ),
        (SHORT + "benchmark: {seed: -1}\n", "6: benchmark.seed: Input should be greater than or equal to 0 (got -1)"),
        (SHORT + "data: {seed: -1}\n", "6: data.seed: Input should be greater than or equal to 0 (got -1)"),
        (SHORT + "data: {seed: 4294967296}\n", "6: data.seed: Input should be less than 4294967296 (got 4294967296)"),
        (
            SHORT.replace("digits-cnn\n", "digits-cnn\n    name: ../../../../tmp/escaped\n"),
            (
                "4: models[0].name: use letters, digits, '.', '_' or '-', starting with a letter or digit, at most 64 "
                "characters, got '../../../../tmp/escaped'"
            ),
        ),
        (
            SHORT + "    targets: []\n",
            (
                "6: variants[0].targets: an empty list would give the variant no rows; name at least one target, "
                "or leave 'targets' out for every target"
            ),
        ),
        (
            SHORT + "    passes: [{type: convert.tflite}]\n",  # and the default target runs only ONNX
            (
                "1: recipe: variant 'fp32' ends in a tflite model that none of its targets runs (onnxruntime:cpu); it "
                "would give no rows"
            ),
        ),
        (
            SHORT + "data: {splits: {train: 0}}\n",
            "1: recipe: the built-in digits-cnn is trained on data.splits.train, which is 0",
        ),
        (
            SHORT + "    passes: [{type: quantize.qat, lr: .inf}]\n",
            "6: variants[0].passes[0].lr: Input should be a finite number (got inf)",
        ),
        (
            SHORT + "    passes: [{type: quantize.qat, lr: 'nan'}]\n",
            "6: variants[0].passes[0].lr: Input should be a finite number (got 'nan')",
        ),
        (SHORT + "benchmark: {timeout_s: .inf}\n", "6: benchmark.timeout_s: Input should be a finite number (got inf)"),
        (
            SHORT + "benchmark: {pin_cpus: [4096]}\n",
            f"6: benchmark.pin_cpus: CPU 4096 does not exist here (CPUs 0-{(os.cpu_count() or 1) - 1})",
        ),
        (
            SHORT + "data: {source: '..:f'}\n",
            "6: data.source: expected 'auto', 'digits', a .npz file or 'module:function', got '..:f'",
        ),
        (SHORT + "extra: 2024-13-45\n", "6: extra: cannot read '2024-13-45' as timestamp: month must be in 1..12"),
        (SHORT + "extra: " + "[" * 40 + "]" * 40 + "\n", "6: extra" + "[0]" * 31 + ": nested deeper than 32 levels"),
        (SHORT + "extra: a\x00b\n", "6: malformed YAML: unacceptable character #x0000"),
        (SHORT + "' ': 1\n", "6: [' ']: Extra inputs are not permitted (got 1)"),
        # A union's branches each reject the value: one line, not one per branch.
        (
            SHORT + "    passes: [{type: quantize.static, reduce_range: 3}]\n",
            "6: variants[0].passes[0].reduce_range: Input should be 'auto' (got 3)",
        ),
        (
            SHORT.replace("builtin: digits-cnn", "factory: m:f\n    outputs: [{name: y, range: [0, .inf]}]"),
            "4: models[0].outputs[0].range[1]: Input should be a finite number (got inf)",
        ),
    ],
)
def test_recipes_that_would_crash_later_are_one_line_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    started = time.perf_counter()
    assert main(["recipe", "validate", str(path)]) == 2
    assert time.perf_counter() - started < 5  # a hang guard: the alias bomb used to take 15 s and 2 GB
    assert capsys.readouterr().err == f"error: {path}:{expected}\n"


def test_onnx_file_that_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_text("not a model")
    message = error_of(tmp_path, SHORT.replace("builtin: digits-cnn", "onnx: model.onnx"))
    assert message.startswith(
        f"{tmp_path / 'recipe.yaml'}:3: models[0].onnx: {tmp_path / 'model.onnx'} is not an "
        "ONNX model (Error parsing message"
    ) and message.endswith(") (got 'model.onnx')")
    (tmp_path / "model.onnx").write_bytes(b"")  # parses as an empty ModelProto
    assert "is not an ONNX model (no graph with outputs)" in error_of(
        tmp_path, SHORT.replace("builtin: digits-cnn", "onnx: model.onnx")
    )


def test_npz_file_that_is_not_npz(tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_text("not an archive")
    assert "data.source: " in error_of(tmp_path, SHORT + "data: {source: data.npz}\n")
    assert "data.npz is not an .npz archive" in error_of(tmp_path, SHORT + "data: {source: data.npz}\n")


def test_recipe_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_bytes(SHORT.encode() + b"extra: \xff\n")
    with pytest.raises(EdgecraftError, match=r"a recipe must be UTF-8 text \(invalid start byte at byte 72\)"):
        load_recipe(path)


def test_anchors_that_share_a_pass_between_variants_still_work(tmp_path: Path) -> None:
    text = SHORT + "  - name: a\n    passes: [&q {type: quantize.static}]\n  - name: b\n    passes: [*q]\n"
    recipe, _ = load_recipe(write(tmp_path, text))
    assert [variant.passes[0].type for variant in recipe.variants[1:]] == ["quantize.static"] * 2


@pytest.mark.parametrize(
    ("file_name", "display_name"),
    [("my model (v2).onnx", "my_model_v2_"), ("...onnx", "model"), (".hidden.onnx", "hidden"), ("ü.onnx", "model")],
)
def test_names_derived_from_file_stems_are_safe_folder_names(tmp_path: Path, file_name: str, display_name: str) -> None:
    tiny_onnx(tmp_path / file_name)
    recipe, _ = load_recipe(write(tmp_path, SHORT.replace("builtin: digits-cnn", f"onnx: '{file_name}'")))
    assert recipe.models[0].display_name == display_name
