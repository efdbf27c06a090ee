"""A user's ``module:function`` beside the recipe, or in the working folder: found from either, and one clear line
(exit 2, before anything is measured) when it is in neither."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecraft.core.errors import EdgecraftError
from edgecraft.imports import call_object, resolve, search_path
from edgecraft.recipe.load import load_recipe
from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft

MY_EVAL = '''
import numpy as np


def score(outputs, reference, targets):
    """The share of samples whose argmax is the fp32 reference's, on every output."""
    name = next(iter(outputs))
    return {"same_argmax": float((outputs[name].argmax(1) == reference[name].argmax(1)).mean())}
'''


def write_model(path: Path) -> Path:
    """A 16 → 10 linear classifier as an ONNX file (input 'input' [batch, 16], output 'logits' [batch, 10])."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding a recipe, the model file, its data and the user's evaluator module beside them."""
    folder = tmp_path / "project"
    folder.mkdir()
    write_model(folder / "model.onnx")
    rng = np.random.default_rng(1)
    np.savez(
        folder / "data.npz", input=rng.standard_normal((60, 16)).astype(np.float32), labels=rng.integers(0, 10, 60)
    )
    (folder / "my_eval.py").write_text(MY_EVAL)
    (folder / "recipe.yaml").write_text(
        "name: mine\nmodels:\n  - {onnx: model.onnx, evaluator: 'my_eval:score'}\ndata: {source: data.npz}\n"
        "variants: [{name: fp32}]\n"
    )
    return folder


def one_line_error(completed, *expected: str) -> str:
    assert completed.returncode == 2, completed.stderr[-2000:]
    err = completed.stderr.strip()
    assert err.startswith("error: ") and "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def test_run_finds_the_evaluator_beside_the_recipe_from_another_working_folder(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    completed = edgecraft(
        "run", project / "recipe.yaml", "--quick", "--output-dir", tmp_path / "runs", "--no-cache", cwd=elsewhere
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    quality = results.rows[0].measurement.quality
    assert (quality.evaluator, quality.metric, quality.value) == ("my_eval:score", "same_argmax", 1.0)


def test_run_with_an_evaluator_module_nowhere_is_one_line_naming_the_folders(project: Path, tmp_path: Path) -> None:
    recipe = project / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("my_eval:score", "missing_mod:score"))
    completed = edgecraft("run", recipe, "--quick", "--output-dir", tmp_path / "runs", cwd=tmp_path)
    one_line_error(completed, "evaluator 'missing_mod:score'", "no module 'missing_mod'", str(project))


def test_bench_with_a_missing_evaluator_module_stops_before_measuring(project: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    completed = edgecraft(
        "bench",
        project / "model.onnx",
        "--inputs",
        project / "data.npz",
        "--evaluator",
        "missing_mod:score",
        "--quick",
        "--output-dir",
        runs,
        cwd=tmp_path,
    )
    one_line_error(completed, "--evaluator", "'missing_mod:score'", "no module 'missing_mod'", str(tmp_path))
    assert not runs.exists()  # nothing was measured: no run folder


def test_bench_finds_the_evaluator_in_the_working_folder(project: Path, tmp_path: Path) -> None:
    completed = edgecraft(
        "bench",
        "model.onnx",
        "--inputs",
        "data.npz",
        "--evaluator",
        "my_eval:score",
        "--quick",
        "--output-dir",
        tmp_path / "runs",
        cwd=project,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    assert results.rows[0].measurement.quality.value == 1.0


# ---- the resolver, in this process ----------------------------------------------------------------------------


def test_a_recipes_specs_know_its_folder(project: Path) -> None:
    recipe, _ = load_recipe(project / "recipe.yaml")
    evaluator = recipe.models[0].evaluator
    assert evaluator is not None and evaluator.base_dir == project.resolve()
    assert search_path(evaluator.base_dir)[0] == project.resolve()


def test_resolve_imports_from_the_base_folder_and_names_the_field(tmp_path: Path) -> None:
    folder = tmp_path / "beside"
    folder.mkdir()
    (folder / "user_source_for_resolve.py").write_text("def build():\n    return 42\n\nVALUE = 1\n")
    assert call_object("user_source_for_resolve:build", "data.source", base_dir=folder) == 42
    with pytest.raises(EdgecraftError, match=r"^model.factory 'user_source_for_resolve:VALUE' is a int, not a funct"):
        call_object("user_source_for_resolve:VALUE", "model.factory", base_dir=folder)
    with pytest.raises(EdgecraftError) as caught:
        resolve("nowhere_module_xyz:build", "model.factory", base_dir=tmp_path / "other")
    message = str(caught.value)
    assert message.startswith("model.factory 'nowhere_module_xyz:build': cannot import 'nowhere_module_xyz'")
    assert str(tmp_path / "other") in message and "\n" not in message


def test_a_user_module_that_fails_to_import_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "user_broken_module.py").write_text("import not_installed_dependency_xyz\n")
    (tmp_path / "user_raising_module.py").write_text("raise RuntimeError('bad\\nconfig')\n")
    with pytest.raises(EdgecraftError, match="No module named 'not_installed_dependency_xyz'"):
        resolve("user_broken_module:f", "evaluator", base_dir=tmp_path)
    with pytest.raises(EdgecraftError, match=r"it raised RuntimeError: bad config$"):
        resolve("user_raising_module:f", "evaluator", base_dir=tmp_path)
