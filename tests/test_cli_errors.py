"""Bad input from the command line: one clear line on stderr, exit code 2, no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import edgecraft

BASE = "name: bad\nvariants: [{name: fp32}]\n"


def fails_cleanly(recipe: Path, *expected: str) -> str:
    completed = edgecraft("run", str(recipe), "--quick", "--output-dir", str(recipe.parent / "runs"))
    assert completed.returncode == 2, completed.stderr
    err = completed.stderr.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err
    return err


def test_missing_model_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "models:\n  - onnx: nowhere/model.onnx\n")
    fails_cleanly(recipe, f"{recipe}:4", "models[0].onnx", "file not found", "nowhere/model.onnx")


def test_missing_weights_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        BASE + "models:\n  - {factory: 'tests.helpers:tiny_net', weights: w.pt, input_shape: [1, 16, 16]}\n"
    )
    fails_cleanly(recipe, "models[0].weights", "file not found")


def test_missing_recipe_file(tmp_path: Path) -> None:
    fails_cleanly(tmp_path / "absent.yaml", "recipe file not found")


def test_malformed_yaml(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: bad\nmodels: [{builtin: digits-cnn}\nvariants: []\n")
    fails_cleanly(recipe, "malformed YAML", f"{recipe}:3:")


def test_unknown_pass_name(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: bad\nmodels: [{builtin: digits-cnn}]\nvariants:\n  - name: x\n    passes: [{type: prune.magic}]\n"
    )
    fails_cleanly(recipe, f"{recipe}:5", "prune.magic", "quantize.static")


def test_wrong_input_shape_for_the_model(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "models:\n  - {factory: 'tests.helpers:tiny_net', input_shape: [3, 16, 16]}\n")
    fails_cleanly(recipe, "model rejects inputs", "input: float32 [batch×3×16×16]")


def test_data_shape_disagrees_with_declared_input_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((50, 1, 8, 8), np.float32), labels=np.zeros(50, np.int64))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        BASE + "data: {source: d.npz}\nmodels:\n  - {factory: 'tests.helpers:tiny_net', input_shape: [1, 16, 16]}\n"
    )
    fails_cleanly(recipe, "input 'input' has shape [50, 1, 8, 8]", "[batch, 1, 16, 16]", "dimension 2 must be 16")


def test_classification_without_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((50, 1, 16, 16), np.float32))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        BASE + "data: {source: d.npz}\nmodels:\n  - {factory: 'tests.helpers:tiny_net', evaluator: classification}\n"
    )
    fails_cleanly(recipe, "model 'tiny_net'", "evaluator 'classification' needs targets (labels)")


@pytest.mark.parametrize("factory", ["tests.helpers:no_such_function", "no_such_module:build"])
def test_factory_that_cannot_be_imported(tmp_path: Path, factory: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + f"models:\n  - {{factory: '{factory}', input_shape: [1, 16, 16]}}\n")
    fails_cleanly(recipe, "model.factory", "cannot import")


def test_user_model_and_data_function_run(tmp_path: Path) -> None:
    """The happy path for a user's own factory model and data function (no built-in anywhere)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        BASE
        + "data: {source: 'tests.helpers:random_data'}\nmodels:\n  - {factory: 'tests.helpers:tiny_net', name: mine}\n"
    )
    completed = edgecraft("run", str(recipe), "--quick", "--output-dir", str(tmp_path / "runs"))
    assert completed.returncode == 0, completed.stderr
    from edgecraft.reports.results_file import load_results

    results = load_results(Path(completed.stdout.strip()).parent)
    assert [(row.model, row.status) for row in results.rows] == [("mine", "ok")], [r.reason for r in results.rows]
    assert results.rows[0].measurement.fidelity.max_abs_diff <= 1e-4
