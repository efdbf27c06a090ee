"""One model's failure never loses another's rows, and user code that raises gives one line, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import edgecraft

TWO_MODELS = """\
name: isolation
models:
  - name: working
    factory: tests.helpers:tiny_net
  - name: broken
    factory: tests.helpers:raising_factory
data: {source: "tests.helpers:random_data"}
variants:
  - name: fp32
  - name: dynamic
    passes: [{type: quantize.dynamic}]
targets: [onnxruntime:cpu]
"""


def run(tmp_path: Path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    completed = edgecraft("run", path, "--quick", "--output-dir", tmp_path / "runs")
    results = sorted((tmp_path / "runs").glob("*/results.json"))
    return completed, json.loads(results[-1].read_text()) if results else None


def test_a_model_whose_factory_raises_fails_only_its_own_rows(tmp_path: Path) -> None:
    completed, results = run(tmp_path, TWO_MODELS)
    assert completed.returncode == 0, completed.stderr
    assert Path(completed.stdout.strip()).name == "report.html"
    rows = {(row["model"], row["variant"]): row for row in results["rows"]}
    assert [rows["working", v]["status"] for v in ("fp32", "dynamic")] == ["ok", "ok"]
    assert rows["working", "fp32"]["measurement"]["fidelity"]["max_abs_diff"] < 1e-4
    reason = "model.factory 'tests.helpers:raising_factory' raised ValueError: boom: the checkpoint path is wrong"
    for variant in ("fp32", "dynamic"):
        assert rows["broken", variant]["status"] == "failed"
        assert rows["broken", variant]["reason"] == f"model not prepared: {reason}"
    models = {model["name"]: model for model in results["models"]}
    assert models["broken"]["failure"] == reason and models["working"]["failure"] is None
    assert "Traceback" not in completed.stderr


def test_when_no_model_can_be_prepared_the_reason_is_the_error(tmp_path: Path) -> None:
    completed, results = run(
        tmp_path, TWO_MODELS.replace("  - name: working\n    factory: tests.helpers:tiny_net\n", "")
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        "error: model.factory 'tests.helpers:raising_factory' raised ValueError: boom: the checkpoint path is wrong"
    )
    assert "Traceback" not in completed.stderr
    assert [row["status"] for row in results["rows"]] == ["failed", "failed"]  # the run folder is still written


def test_a_data_function_that_cannot_be_called_gives_one_line(tmp_path: Path) -> None:
    completed, _ = run(
        tmp_path,
        TWO_MODELS.replace("tests.helpers:random_data", "os:system").replace(
            "  - name: broken\n    factory: tests.helpers:raising_factory\n", ""
        ),
    )
    assert completed.returncode == 2
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.source 'os:system' raised TypeError: ") and "Traceback" not in completed.stderr
