"""``convert.tflite``'s own glue around onnx2tf, on small graphs shaped like the real files it failed on (issue 25):
node names TensorFlow refuses (PaddleOCR's ``Softmax@0``), an Erf that needed Flex ops (MiniLM), a native NHWC
input taken for NCHW (MTCNN O-Net), an NCHW output written NHWC (PP-OCRv4 det) and signature outputs named
``output_0``, ... instead of the graph's (PP-OCRv4 rec). Each converted file is run in the LiteRT target and
compared with ONNX Runtime on the same input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from edgecraft.compress import registry
from edgecraft.compress.base import Artifact, Dataset, PassContext
from edgecraft.compress.passes.tflite import _with_plain_names, file_io
from edgecraft.core.formats.tflite import IoNote, io_note, read_io_note, write_io_note
from edgecraft.targets import registry as targets
from edgecraft.targets.base import NoOptions

SCOPE_NAME = re.compile(r"^[A-Za-z0-9_.\\/>-]*$")  # TensorFlow's, as its error message quotes it
RNG = np.random.default_rng(0)


def weights(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.normal(0, 0.3, shape).astype(np.float32), name)


def save(nodes: list, inputs: list, outputs: list, initializers: list, path: Path, opset: int = 13) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8), str(path))
    return path


def ort(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def convert(source: Path, data: dict[str, np.ndarray], work_dir: Path, **options: object) -> Path:
    """``convert.tflite`` (fp32 unless ``options`` say) on ``source``, its signature read from the file as a
    recipe run does."""
    signature = targets.get("onnxruntime").signature(source)
    pass_ = registry.get("convert.tflite")
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(data)
    context = PassContext(train=dataset, calibration=dataset, evaluation=dataset, work_dir=work_dir)
    config = pass_.config_model(type="convert.tflite", **options)
    outcome = pass_.apply(Artifact("onnx", signature, path=source), config, context)
    assert outcome.artifact.path is not None
    return outcome.artifact.path


def litert(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    target = targets.get("litert")
    return target.run(target.load(path, "cpu", 1, NoOptions()), feeds)


def test_node_names_become_valid_unique_scope_names_in_subgraphs_too(tmp_path: Path) -> None:
    """PaddleOCR names nodes ``Softmax@0`` (TensorFlow: "'Softmax@0' is not a valid scope name"); every node name,
    an If branch's included, becomes a valid scope name, unnamed nodes get one, all unique, and the graph computes
    the same."""
    vector = [2]
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["b"], name="Relu@0")],
        "branch",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, vector)],
    )
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], name="Softmax@0"),
        helper.make_node("Relu", ["s"], ["r"], name="Relu@0"),
        helper.make_node("Neg", ["r"], ["n"], name=""),
        helper.make_node("Abs", ["n"], ["a"], name="p_re_lu_7/add:0_pooling"),
        helper.make_node("Identity", ["a"], ["i"], name="Softmax_0"),  # what Softmax@0 would become
        helper.make_node("ReduceSum", ["i"], ["total"], keepdims=0, name="sum here"),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="gt"),
        helper.make_node("If", ["positive"], ["y"], then_branch=branch, else_branch=branch, name="If#1"),
    ]
    source = save(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, vector)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, vector), helper.make_tensor_value_info("i", 1, vector)],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
        tmp_path / "names.onnx",
    )
    names = _with_plain_names(source, tmp_path / "plain.onnx")
    assert names == {"in_0": "x", "out_0": "y", "out_1": "i"}
    plain = onnx.load(str(tmp_path / "plain.onnx"))
    onnx.checker.check_model(plain, full_check=True)
    every = [node.name for node in plain.graph.node]
    for node in plain.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                every += [inner.name for inner in attribute.g.node]
    assert len(every) == 10 and all(name and SCOPE_NAME.match(name) for name in every), every
    assert len(set(every)) == len(every), every
    assert {"Softmax_0", "Softmax_0_1", "p_re_lu_7/add_0_pooling", "gt"} <= set(every), every
    x = np.array([1.0, -2.0], np.float32)
    before = list(ort(source, {"x": x}).values())
    after = list(ort(tmp_path / "plain.onnx", {"in_0": x}).values())
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_a_model_with_refused_node_names_converts(tmp_path: Path) -> None:
    """The name onnx2tf failed on: ``Softmax@0``, at the end of a small classifier."""
    source = save(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="MatMul@0"),
            helper.make_node("Softmax", ["m"], ["y"], axis=1, name="Softmax@0"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [weights("w", 6, 2)],
        tmp_path / "cls.onnx",
    )
    x = RNG.uniform(-1, 1, (8, 6)).astype(np.float32)
    path = convert(source, {"x": x}, tmp_path / "work")
    np.testing.assert_allclose(litert(path, {"x": x[:1]})["y"], ort(source, {"x": x[:1]})["y"], atol=1e-5)


def test_erf_converts_to_tflite_builtins(tmp_path: Path) -> None:
    """BERT's exact GELU as MiniLM's export writes it (an Erf the GELU pattern does not catch) needed Flex ops
    ("'tf.Erf' op is neither a custom op nor a flex op"); onnx2tf's builtin replacement converts it, and a file
    of builtins only runs in the plain LiteRT interpreter."""
    source = save(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("Mul", ["m", "inv_sqrt2"], ["scaled"], name="scale"),
            helper.make_node("Erf", ["scaled"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="add"),
            helper.make_node("Mul", ["m", "e1"], ["me"], name="mul"),
            helper.make_node("Mul", ["me", "half"], ["y"], name="half"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 16])],
        [
            weights("w", 8, 16),
            numpy_helper.from_array(np.array(1 / np.sqrt(2), np.float32), "inv_sqrt2"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
        tmp_path / "gelu.onnx",
    )
    x = RNG.uniform(-3, 3, (8, 5, 8)).astype(np.float32)
    path = convert(source, {"x": x}, tmp_path / "work")
    ops = {op["op_name"] for op in _ops(path)}
    assert not any(op.startswith(("Flex", "CUSTOM")) for op in ops), ops
    # A [N, sequence, features] input keeps its shape (onnx2tf would have made it [N, 8, 5]).
    assert targets.get("litert").signature(path).inputs[0].shape == ["batch", 5, 8]
    np.testing.assert_allclose(litert(path, {"x": x[:1]})["y"], ort(source, {"x": x[:1]})["y"], atol=1e-4)


def test_dynamo_ordered_gelu_becomes_the_gelu_builtin_and_quantizes(tmp_path: Path) -> None:
    """torch's dynamo exporter writes GELU as ``x / sqrt(2) -> Erf -> + 1 -> Mul(0.5, .) -> Mul(x, .)`` (MiniLM),
    an order onnx2tf does not recognise; its Erf replacement then divides by a quantized zero in full-integer
    int8 ("(DIV) failed to invoke"). Reordered, it becomes TFLite's GELU builtin, which runs in int8."""
    source = save(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
            helper.make_node("Div", ["m", "sqrt2"], ["scaled"], name="div"),
            helper.make_node("Erf", ["scaled"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["e1"], name="add"),
            helper.make_node("Mul", ["half", "e1"], ["h"], name="mul_half"),
            helper.make_node("Mul", ["m", "h"], ["y"], name="mul_x"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 16])],
        [
            weights("w", 8, 16),
            numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
        tmp_path / "gelu.onnx",
    )
    x = RNG.uniform(-3, 3, (32, 5, 8)).astype(np.float32)
    want = ort(source, {"x": x[:1]})["y"]
    fp32 = convert(source, {"x": x}, tmp_path / "fp32")
    ops = {op["op_name"] for op in _ops(fp32)}
    assert "GELU" in ops and "DIV" not in ops, ops
    np.testing.assert_allclose(litert(fp32, {"x": x[:1]})["y"], want, atol=1e-4)
    int8 = convert(source, {"x": x}, tmp_path / "int8", quantization="int8")
    assert "GELU" in {op["op_name"] for op in _ops(int8)}
    np.testing.assert_allclose(litert(int8, {"x": x[:1]})["y"], want, atol=0.1 * float(np.abs(want).max()))


def _ops(path: Path) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return list(Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)._get_ops_details())


def test_a_native_nhwc_input_keeps_its_shape(tmp_path: Path) -> None:
    """MTCNN O-Net takes [N, 48, 48, 3] and transposes it itself; onnx2tf made the file take [N, 48, 3, 48]. An
    input that is not an NCHW image keeps the model's shape, and the note does not call it NCHW."""
    source = save(
        [
            helper.make_node("Transpose", ["image"], ["t"], perm=[0, 3, 1, 2], name="Transpose9"),
            helper.make_node("Conv", ["t", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Transpose", ["r"], ["back"], perm=[0, 2, 3, 1], name="PushTranspose"),
            helper.make_node("Flatten", ["back"], ["flat"], axis=1, name="flatten"),
            helper.make_node("MatMul", ["flat", "fc"], ["y"], name="dense"),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 10, 10, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [weights("w", 5, 3, 3, 3), weights("fc", 5 * 8 * 8, 4)],
        tmp_path / "nhwc.onnx",
    )
    images = RNG.uniform(0, 1, (8, 10, 10, 3)).astype(np.float32)
    path = convert(source, {"image": images}, tmp_path / "work")
    assert read_io_note(path).nchw_inputs == frozenset()
    spec = targets.get("litert").signature(path).inputs[0]
    assert spec.shape == ["batch", 10, 10, 3] and spec.layout == "NHWC", spec
    np.testing.assert_allclose(
        litert(path, {"image": images[:1]})["y"], ort(source, {"image": images[:1]})["y"], atol=1e-4
    )


def test_an_nchw_output_written_nhwc_comes_back_nchw(tmp_path: Path) -> None:
    """PP-OCRv4 det's [N, 1, H, W] map came back [1, H, W, 1] and the pass refused it; the note records it as
    channels-last, the LiteRT target returns it in the model's order and the signature says so."""
    source = save(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
            helper.make_node("Sigmoid", ["c"], ["map"], name="sigmoid"),
            helper.make_node("Conv", ["image", "w2"], ["feat"], name="conv2"),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 12, 16])],
        [
            helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 1, 12, 16]),
            helper.make_tensor_value_info("feat", TensorProto.FLOAT, ["N", 4, 10, 14]),
        ],
        [weights("w", 1, 3, 3, 3), weights("w2", 4, 3, 3, 3)],
        tmp_path / "det.onnx",
    )
    images = RNG.uniform(0, 1, (8, 3, 12, 16)).astype(np.float32)
    path = convert(source, {"image": images}, tmp_path / "work")
    note = read_io_note(path)
    assert note.nchw_inputs == {"image"} and note.channels_last_outputs == {"map", "feat"}, note
    outputs = {spec.name: spec.shape for spec in targets.get("litert").signature(path).outputs}
    assert outputs == {"map": ["batch", 1, 12, 16], "feat": ["batch", 4, 10, 14]}, outputs
    have, want = litert(path, {"image": images[:1]}), ort(source, {"image": images[:1]})
    for name in ("map", "feat"):
        assert have[name].shape == want[name].shape
        np.testing.assert_allclose(have[name], want[name], atol=1e-4)


def test_a_note_without_channels_last_outputs_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    io_note(path).write_text(json.dumps({"names": {"in_0": "x", "out_0": "y"}, "nchw_inputs": ["x"]}))
    assert read_io_note(path) == IoNote({"in_0": "x", "out_0": "y"}, frozenset({"x"}), frozenset())
    assert read_io_note(tmp_path / "native.tflite") == IoNote()
    write_io_note(path, {"in_0": "x"}, [], ["y"])
    assert read_io_note(path).channels_last_outputs == {"y"}


def test_signature_outputs_named_by_position_map_back(tmp_path: Path) -> None:
    """Where onnx2tf writes its SavedModel with Keras' ExportArchive (PP-OCRv4 rec), the signature names the
    outputs ``output_0``, ... in the graph's order rather than ``out_0``, ...: the note maps them by position."""
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 3], tf.float32, name="in_0")])
        def serve(self, in_0: tf.Tensor) -> list:
            return [in_0 * 2.0, in_0 + 1.0]

    module = Model()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    path = tmp_path / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm")).convert())
    source = save(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"], name="mul"),
            helper.make_node("Add", ["x", "one"], ["plus_one"], name="add"),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [
            helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [1, 3]),
            helper.make_tensor_value_info("plus_one", TensorProto.FLOAT, [1, 3]),
        ],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        ],
        tmp_path / "two.onnx",
    )
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    names, channels_last = file_io(path, {"in_0": "x", "out_0": "doubled", "out_1": "plus_one"}, [], source, {"x": x})
    assert names == {"in_0": "x", "output_0": "doubled", "output_1": "plus_one"} and channels_last == []
    write_io_note(path, names, [], channels_last)
    have = litert(path, {"x": x})
    np.testing.assert_allclose(have["doubled"], x * 2)
    np.testing.assert_allclose(have["plus_one"], x + 1)
