"""Renaming a graph's inputs and outputs reaches into its subgraphs (issue 25, finding 4).

silero VAD's ``If`` branches read the graph inputs ``sr`` and ``state`` by name; ``convert.tflite`` renames inputs
to ``in_0``, ... first, and a rename that left the branches alone wrote a model that reads names nothing defines
("Nodes in a graph must be topologically sorted")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from edgecraft.compress.onnx_export import rename_io


def _if_model() -> onnx.ModelProto:
    """``y = x * state`` when ``sr > 8000`` else ``x + state``; both branches read the graph inputs ``x`` and
    ``state`` by name, the else branch through a nested ``If`` (a subgraph of a subgraph), and a branch defines a
    value named like the new output name (``out_0``), which must not capture anything."""
    vector = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2]) for name in ("y_then", "y_else", "inner")]
    then_branch = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "state"], ["out_0"]),
            helper.make_node("Identity", ["out_0"], ["y_then"]),
        ],
        "then",
        [],
        [vector[0]],
    )
    nested = helper.make_graph([helper.make_node("Add", ["x", "state"], ["inner"])], "nested", [], [vector[2]])
    else_branch = helper.make_graph(
        [
            helper.make_node("Constant", [], ["always"], value=helper.make_tensor("t", TensorProto.BOOL, [], [True])),
            helper.make_node("If", ["always"], ["y_else"], then_branch=nested, else_branch=nested),
        ],
        "else",
        [],
        [vector[1]],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["limit"], value=helper.make_tensor("l", TensorProto.INT64, [], [8000])),
            helper.make_node("Greater", ["sr", "limit"], ["fast"]),
            helper.make_node("If", ["fast"], ["y"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Identity", ["state"], ["state_out"]),
        ],
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("sr", [16000, 8000])
def test_renaming_inputs_and_outputs_reaches_if_branches(tmp_path: Path, sr: int) -> None:
    model = _if_model()
    onnx.checker.check_model(model, full_check=True)
    x, state = np.array([1.0, 2.0], np.float32), np.array([3.0, 4.0], np.float32)
    before = _run(model, {"x": x, "sr": np.array(sr, np.int64), "state": state})

    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    rename_io(renamed, {"x": "in_0", "sr": "in_1", "state": "in_2", "y": "out_0", "state_out": "out_1"})
    path = tmp_path / "renamed.onnx"
    onnx.save(renamed, str(path))  # checked as written, the way the converters read it
    onnx.checker.check_model(str(path), full_check=True)

    assert [value.name for value in renamed.graph.input] == ["in_0", "in_1", "in_2"]
    assert [value.name for value in renamed.graph.output] == ["out_0", "out_1"]
    after = _run(renamed, {"in_0": x, "in_1": np.array(sr, np.int64), "in_2": state})
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(after[0], x * state if sr > 8000 else x + state)


def test_tflite_plain_names_keep_a_model_with_if_branches_valid(tmp_path: Path) -> None:
    """``convert.tflite``'s own renaming step writes a model that passes the full check and runs the same."""
    from edgecraft.compress.passes.tflite import _with_plain_names

    source = tmp_path / "vad.onnx"
    onnx.save(_if_model(), str(source))
    names = _with_plain_names(source, tmp_path / "plain.onnx")
    assert names == {"in_0": "x", "in_1": "sr", "in_2": "state", "out_0": "y", "out_1": "state_out"}
    onnx.checker.check_model(str(tmp_path / "plain.onnx"), full_check=True)
    feeds: dict[str, np.ndarray] = {
        "x": np.ones(2, np.float32),
        "sr": np.array(16000, np.int64),
        "state": np.full(2, 2.0, np.float32),
    }
    plain = {new: feeds[old] for new, old in names.items() if old in feeds}
    before = _run(onnx.load(str(source)), feeds)
    after = _run(onnx.load(str(tmp_path / "plain.onnx")), plain)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
