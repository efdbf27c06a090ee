"""The notebooks in notebooks/ run as a reader runs them: in a real Jupyter kernel (nbclient, this venv's Python),
cell by cell, with the one knob they show set (``EDGECRAFT_NOTEBOOK_QUICK=1``: small training, the quick benchmark
profile). A failing cell fails the test. Outputs are stripped in the repository."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_api import readme_python_lines

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Path:
    """A kernel spec that starts this interpreter (not whatever 'python3' a system Jupyter knows), found first
    through JUPYTER_PATH; and a working folder whose recipes/ is the repository's, so runs land in a temporary
    folder."""
    share = tmp_path_factory.mktemp("jupyter")
    spec = share / "kernels" / "edgecraft-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "edgecraft test",
                "language": "python",
            }
        )
    )
    monkeypatch_module.setenv("JUPYTER_PATH", str(share))
    monkeypatch_module.setenv("EDGECRAFT_NOTEBOOK_QUICK", "1")
    folder = tmp_path_factory.mktemp("notebook-runs")
    (folder / "recipes").symlink_to(REPO / "recipes")
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def execute(name: str, folder: Path) -> dict:
    """Run the notebook in a fresh kernel from ``folder``; return it with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    client = NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="edgecraft-test", resources={"metadata": {"path": str(folder)}}
    )
    start = time.perf_counter()
    client.execute()  # a cell that raises raises CellExecutionError here, naming the cell and the error
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    return notebook


def outputs(notebook: dict, kind: str = "text") -> str:
    """Everything the cells showed: printed text, results' plain text, HTML; or the SVG/PNG images' count."""
    parts = []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if kind == "text":
                parts.append(output.get("text", ""))
                parts.append(output.get("data", {}).get("text/plain", ""))
                parts.append(output.get("data", {}).get("text/html", ""))
            elif kind in output.get("data", {}):
                parts.append(output["data"][kind])
    return "\n".join(part if isinstance(part, str) else "".join(part) for part in parts)


def code_lines(name: str) -> list[str]:
    notebook = json.loads((REPO / "notebooks" / name).read_text())
    return [
        line
        for cell in notebook["cells"]
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if line.strip()
    ]


def test_notebooks_are_stripped_and_numbered() -> None:
    assert [path.name for path in NOTEBOOKS] == [
        "01-quickstart.ipynb",
        "02-your-own-model.ipynb",
        "03-pruning-and-distillation.ipynb",
        "04-int8-that-holds.ipynb",
        "05-remote-device.ipynb",
    ]
    for path in NOTEBOOKS:
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            assert not cell.get("outputs") and cell.get("execution_count") is None, (path.name, cell["source"][:1])


def test_the_first_notebook_runs_the_readme_lines() -> None:
    """The README's Python lines are the first notebook's, in the same order (tests/test_api.py runs them)."""
    readme = [line for line in readme_python_lines().splitlines() if line.strip()]
    lines = code_lines("01-quickstart.ipynb")
    positions = [lines.index(line) for line in readme]
    assert positions == sorted(positions)


def test_01_quickstart(kernel_env: Path, quickstart_run: Path) -> None:
    """After the session's quickstart run (tests/conftest.py), whose trained models and pass steps it reuses, as a
    reader's second run does."""
    notebook = execute("01-quickstart.ipynb", kernel_env)
    text = outputs(notebook)
    assert "edgecraft · quickstart" in text and ": ship <b>" in text  # the inline verdict and table
    assert "digits-cnn on onnxruntime:cpu: int8-static" in text or "digits-cnn on onnxruntime:cpu: " in text
    assert "on onnxruntime:cpu: None" not in text  # every model has a variant to ship
    assert outputs(notebook, "image/svg+xml").count("<svg") >= 2  # the charts, inline
    assert "'PASS'" in text or "'FAIL'" in text


def test_02_your_own_model(kernel_env: Path) -> None:
    notebook = execute("02-your-own-model.ipynb", kernel_env)
    text = outputs(notebook)
    assert "<in-memory torch.nn.Module TwoHeads" in text and "<in-memory torch Dataset DigitsWithFeatures" in text
    assert "name='image'" in text and "name='features'" in text and "name='ink'" in text
    for variant in ("ort-int8", "openvino-int8", "tflite-int8"):
        assert variant in text
    assert "failed" not in text.split("edgecraft · two-heads", 1)[1].split("</table>", 1)[0]


def test_03_pruning_and_distillation(kernel_env: Path) -> None:
    notebook = execute("03-pruning-and-distillation.ipynb", kernel_env)
    text = outputs(notebook)
    assert "pruned-75" in text and "distilled-half" in text
    assert "student" in text  # the distillation record, with the student trained alone
    assert "failed" not in text.split("edgecraft · prune-curve", 1)[1].split("</table>", 1)[0]
    assert outputs(notebook, "image/png")  # the curve


def test_04_int8_that_holds(kernel_env: Path) -> None:
    notebook = execute("04-int8-that-holds.ipynb", kernel_env)
    text = outputs(notebook)
    assert "ort-int8-accurate" in text and "nncf-int8-accurate" in text
    assert "all int8" in text and "op_type" in text  # the search and the sensitivity ranking
    assert "ort-int8-dynamic on onnxruntime:cpu:" in text and "ConvInteger" in text  # the operator panel


def test_05_remote_device(kernel_env: Path) -> None:
    notebook = execute("05-remote-device.ipynb", kernel_env)
    text = outputs(notebook)
    assert "http://127.0.0.1:" in text and "onnxruntime:cpu@local" in text
    assert "failed" not in text.split("edgecraft · remote", 1)[1].split("</table>", 1)[0]
    assert "local" in text.split("device", 1)[1]  # the agent's rows carry their device
