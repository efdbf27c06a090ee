"""The Python-API notebook runs as written (its code cells, in order, in one namespace)."""

from __future__ import annotations

import json

from tests.conftest import REPO


def test_python_api_notebook_runs(capsys) -> None:
    notebook = json.loads((REPO / "notebooks" / "python_api.ipynb").read_text())
    namespace: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "python_api.ipynb", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "int8-static" in printed and "tflite-int8" in printed
    assert "digits-cnn onnxruntime:cpu →" in printed and "digits-cnn litert:cpu →" in printed
    assert "→ None" not in printed  # every target has a recommended variant, not a verdict of "None"
    assert all(row.status == "ok" for row in namespace["results"].rows), [r.reason for r in namespace["results"].rows]
    assert all(r.choice is not None for r in namespace["analysis"].recommendations)
