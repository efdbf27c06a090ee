"""The Python API: ``edgecraft.run()`` and the CLI take one code path and give the same rows; a ``Run`` answers the
report's questions (verdict, table, comparison) from its results; ``import edgecraft`` stays cheap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import edgecraft
from edgecraft.recipe.schema import DataSpec, ModelSpec
from edgecraft.reports.results_file import load_results
from tests.conftest import REPO


def readme_python_lines() -> str:
    """The code block of the README's "Python API" section, exactly as a reader copies it."""
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("\n```", 1)[0]


@pytest.fixture(scope="module")
def api_run(quickstart_run: Path, tmp_path_factory: pytest.TempPathFactory) -> edgecraft.Run:
    """The README's Python lines, run as written (the quickstart through the API, after the CLI's run of it, whose
    trained models and pass steps are reused), from a folder where ``recipes/`` is the repository's."""
    folder = tmp_path_factory.mktemp("readme")
    (folder / "recipes").symlink_to(REPO / "recipes")
    namespace: dict = {}
    previous = Path.cwd()
    os.chdir(folder)
    try:
        exec(compile(readme_python_lines(), "README.md", "exec"), namespace)
    finally:
        os.chdir(previous)
    run = namespace["run"]
    assert run.run_dir.parent == folder / "runs"  # the recipe's default output folder, under the reader's folder
    return run


def _identity(rows) -> list[tuple]:
    """A row apart from its measured figures (timings, memory): what it is, its file, where it ran and its quality
    (the evaluator and the fidelity to fp32 on the same evaluation data are computed, not timed)."""
    return [
        (
            r.model,
            r.variant,
            r.target,
            r.status,
            r.reason,
            r.lossless,
            r.sha256,
            r.size_bytes,
            r.artifact,
            r.device,
            r.emulated,
            r.measurement and r.measurement.quality,
            r.measurement and r.measurement.fidelity,
        )
        for r in rows
    ]


def test_cli_and_api_give_the_same_rows(quickstart_run: Path, api_run: edgecraft.Run) -> None:
    cli = load_results(quickstart_run)
    assert _identity(api_run.rows) == _identity(cli.rows)
    assert all(row.sha256 and row.status == "ok" for row in api_run.rows)
    assert api_run.results.recipe == cli.recipe and api_run.results.recipe_text == cli.recipe_text
    assert api_run.results.benchmark == cli.benchmark
    # The run folder is the CLI's: results.json reads back to the same results.
    assert load_results(api_run.run_dir) == api_run.results
    assert api_run.report_path == api_run.run_dir / "report.html" and api_run.report_path.is_file()


def test_run_tables_and_verdict(api_run: edgecraft.Run) -> None:
    frame = api_run.to_pandas()
    assert len(frame) == len(api_run.rows) == 6
    assert {"model", "variant", "target", "status", "p50_ms", "size_bytes", "accuracy"} <= set(frame.columns)
    assert list(frame["p50_ms"]) == [row.measurement.latency_ms.p50 for row in api_run.rows]
    # The same columns and values as the run's results.csv.
    csv_header = (api_run.run_dir / "results.csv").read_text().splitlines()[0].split(",")
    assert list(frame.columns) == csv_header

    verdict = api_run.verdict()
    assert [(r.model, r.target) for r in verdict] == [
        ("digits-cnn", "onnxruntime:cpu"),
        ("digits-mobilenet", "onnxruntime:cpu"),
    ]
    assert all(r.choice is not None and r.choice.row.status == "ok" for r in verdict)
    assert all(r.choice is None for r in api_run.verdict(max_accuracy_drop=0) if r.reason.startswith("no variant"))

    page = api_run._repr_html_()
    for r in verdict:
        assert f"<b>{r.model}</b> on <code>{r.target}</code>: ship <b>{r.choice.row.variant}</b>" in page
    assert page.count("<tr>") == 1 + len(api_run.rows)
    assert str(api_run.report_path) in page
    assert "6 row(s)" in repr(api_run)


def test_compare_is_the_gate(quickstart_run: Path, api_run: edgecraft.Run) -> None:
    comparison = api_run.compare(edgecraft.Run.load(quickstart_run))
    assert len(comparison.rows) == 6
    assert comparison.outcome in ("PASS", "FAIL")
    for row in comparison.rows:  # the same artifacts: only latency, which is measured, may differ
        assert row.size_change == 0 and row.accuracy_change == 0
        assert {finding.kind for finding in row.findings} <= {"regression", "inconclusive"}
    # A gate that accepts any latency change passes.
    assert api_run.compare(edgecraft.Run.load(quickstart_run), max_latency_increase=1.0).rows
    with pytest.raises(TypeError, match="max_latency_increase"):
        api_run.compare(api_run, max_latency=0.1)


def test_to_pandas_without_pandas_says_so(api_run: edgecraft.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        api_run.to_pandas()


def test_recipe_from_python_objects_equals_the_yaml() -> None:
    from_file = edgecraft.Recipe.from_yaml(REPO / "recipes" / "quickstart.yaml")
    in_code = edgecraft.Recipe(
        name="quickstart",
        models=[{"builtin": "digits-cnn"}, {"builtin": "digits-mobilenet"}],
        data={"source": "digits", "splits": {"train": 0.6, "calibration": 0.2, "evaluation": 0.2}, "seed": 0},
        variants=[
            {"name": "fp32"},
            {
                "name": "int8-static",
                "passes": [{"type": "quantize.static", "calibration_method": "minmax", "per_channel": True}],
            },
            {"name": "int8-dynamic", "passes": [{"type": "quantize.dynamic"}]},
        ],
        targets=["onnxruntime:cpu"],
        benchmark={"profile": "default", "threads": 1},
    )
    assert in_code == from_file
    # A recipe made in code is stored as the YAML of what was given, which reads back to the same recipe.
    assert edgecraft.Recipe.model_validate(yaml.safe_load(in_code.to_yaml())) == in_code
    assert from_file.to_yaml() == (REPO / "recipes" / "quickstart.yaml").read_text()


def test_bad_recipe_path_is_an_edgecraft_error(tmp_path: Path) -> None:
    with pytest.raises(edgecraft.EdgecraftError, match="recipe file not found"):
        edgecraft.run(tmp_path / "missing.yaml")


def test_public_names_and_a_cheap_import() -> None:
    assert sorted(edgecraft.__all__) == ["Data", "EdgecraftError", "Model", "Recipe", "Run", "run"]
    assert edgecraft.Model is ModelSpec and edgecraft.Data is DataSpec  # the recipe's own types
    assert all(getattr(edgecraft, name) for name in edgecraft.__all__)
    with pytest.raises(AttributeError):
        edgecraft.run_recipe  # noqa: B018 - private names are not re-exported
    code = (
        "import sys, edgecraft; heavy = [m for m in ('torch', 'tensorflow', 'onnxruntime', 'pandas') "
        "if m in sys.modules]; assert not heavy, heavy; edgecraft.Recipe; edgecraft.run; "
        "assert 'torch' not in sys.modules"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
