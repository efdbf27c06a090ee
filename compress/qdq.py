"""QDQ (QuantizeLinear/DequantizeLinear) ONNX models handed to a quantizer or converter that wants float.

A QAT or autotune model is QDQ ONNX in the layout its quantizer chose, and that layout suits one runtime
better than another: torchao's x86 quantizer leaves the convolutions that feed a residual Add in float,
which ONNX Runtime cannot fuse (no speed-up over fp32) while OpenVINO runs it in int8; onnx2tf lowers
QuantizeLinear to a saturating cast that the TFLite converter rejects ('tf.ClipByValue' is neither a custom
op nor a flex op). Stripping the pairs, keeping the trained weights, lets ONNX Runtime's own quantizer or
the TFLite converter lay out the int8 model for its runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def without_qdq(onnx_path: Path, out_path: Path) -> int:
    """Write ``onnx_path`` with its QuantizeLinear/DequantizeLinear nodes removed (nothing is written, and
    0 returned, when it has none); returns how many nodes went.

    Weights stored as int8 + DequantizeLinear become their float values, which still lie on the int8 grid
    that QAT trained them for; activation fake-quant pairs are bypassed, for the next quantizer to
    calibrate again. No library offers this rewrite, hence these lines.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    rename: dict[str, str] = {}
    dropped: list[onnx.NodeProto] = []
    folded: list[onnx.TensorProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in constants:  # int8 weights: fold to float
            scale = constants[node.input[1]].astype(np.float32)
            zero = constants[node.input[2]].astype(np.float32) if len(node.input) > 2 and node.input[2] else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            values = constants[source].astype(np.float32)
            shape = [1] * values.ndim
            if np.ndim(scale) == 1 and values.ndim:
                shape[axis] = -1
            folded.append(
                numpy_helper.from_array((values - np.reshape(zero, shape)) * np.reshape(scale, shape), node.output[0])
            )
            dropped.append(node)
        elif source in producers and producers[source].op_type == "QuantizeLinear":  # fake-quant pair: bypass
            rename[node.output[0]] = producers[source].input[0]
            dropped += [node, producers[source]]
    if not dropped:
        return 0
    kept = [node for node in graph.node if all(node is not gone for gone in dropped)]
    for node in kept:
        for index, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[index] = name
    for output in graph.output:  # a graph output must keep its name: feed it through an Identity
        if output.name in rename:
            target = output.name
            while target in rename:
                target = rename[target]
            kept.append(onnx.helper.make_node("Identity", [target], [output.name]))
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(folded)
    used = {name for node in graph.node for name in node.input}
    remaining = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    onnx.checker.check_model(model)
    onnx.save(model, str(out_path))
    return len({id(node) for node in dropped})
