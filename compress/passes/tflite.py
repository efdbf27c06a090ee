"""ONNX → TFLite (LiteRT) in fp32, fp16, dynamic-range int8 or full-integer int8.

onnx2tf turns the NCHW ONNX graph into an NHWC TensorFlow SavedModel (transposes folded away rather than
inserted around every op); TensorFlow's own TFLiteConverter then applies the quantization, calibrated on the
recipe's calibration split. TensorFlow is used here, to convert, and never to run. Only inputs declared as NCHW
images become NHWC; token ids, masks, native NHWC images and other inputs keep their layout. onnx2tf may leave an
output channels-last (an NCHW output as NHWC) and may name its signature outputs ``output_0``, ... instead of the
graph's names. A note beside the .tflite records the model's own input and output names for the file's, which
inputs were transposed and which outputs are channels-last, for the LiteRT target.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from edgecraft.compress.accuracy_control import AccuracyAwareOptions, Int8Format, Judgement, Layer, LayerScore, search
from edgecraft.compress.base import Artifact, Dataset, Pass, PassContext, PassOutcome
from edgecraft.compress.qdq import without_qdq
from edgecraft.compress.registry import register
from edgecraft.core.formats.tflite import write_io_note
from edgecraft.core.signature import Signature


def _nhwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(array, (0, 2, 3, 1)))


def _nchw_inputs(signature: Signature) -> list[str]:
    """Inputs declared as NCHW images: onnx2tf makes them NHWC, every other input keeps its layout."""
    return [spec.name for spec in signature.inputs if spec.layout == "NCHW"]


def _file_layout(data: Dataset, signature: Signature) -> dict[str, np.ndarray]:
    """The calibration inputs as the TFLite file takes them (NCHW images as NHWC)."""
    images = set(_nchw_inputs(signature))
    return {
        name: _nhwc(array) if name in images else np.ascontiguousarray(array) for name, array in data.inputs.items()
    }


def _with_plain_names(onnx_path: Path, out_path: Path) -> dict[str, str]:
    """Write ``onnx_path`` with its inputs and outputs renamed ``in_0``, ``out_0``, ... and its node names made
    valid TensorFlow scope names (``_plain_node_names``); return {plain: real} for the inputs and outputs.

    onnx2tf mangles some tensor names, silently: an output named ``x:0`` came back holding another output's
    values, a leading ``/`` made it exit, a space made it raise. Plain names survive, and the LiteRT target
    maps them back to the model's own names through the note written beside the .tflite."""
    import onnx

    from edgecraft.compress.onnx_export import rename_io

    model = onnx.load(str(onnx_path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    renames = {
        value.name: f"in_{index}" for index, value in enumerate(v for v in graph.input if v.name not in initializers)
    }
    renames.update({value.name: f"out_{index}" for index, value in enumerate(graph.output)})
    rename_io(model, renames)
    _plain_node_names(graph, set())
    onnx.save(model, str(out_path))
    return {plain: real for real, plain in renames.items()}


# A character TensorFlow refuses in a scope name (it accepts ^[A-Za-z0-9_.\\/>-]*$); onnx2tf names each TF op
# after its ONNX node.
_NOT_IN_SCOPE_NAME = re.compile(r"[^A-Za-z0-9_.\\/>-]")


def _plain_node_names(graph: Any, used: set[str]) -> None:
    """Rename, in place, every node of ``graph`` and of its subgraphs (If / Loop / Scan bodies) whose name is
    not a valid TensorFlow scope name, each character outside ``[A-Za-z0-9_.\\/>-]`` made ``_``, and name the
    unnamed ones ``<op type>_<n>``, every name unique across the model (``used`` holds those taken).

    onnx2tf passes node names to TensorFlow as op names: PaddleOCR's exporter names nodes ``Softmax@0``, which
    TensorFlow refuses ("'Softmax@0' is not a valid scope name"). Node names are labels only (nothing refers to
    them), so renaming changes no computation."""
    from edgecraft.compress.onnx_export import all_graphs

    for node in (node for each in all_graphs(graph) for node in each.node):
        base = _NOT_IN_SCOPE_NAME.sub("_", node.name) if node.name else f"{node.op_type}_{len(used)}"
        name, suffix = base, 1
        while name in used:
            name, suffix = f"{base}_{suffix}", suffix + 1
        used.add(name)
        node.name = name


def _gelu_in_onnx2tf_order(graph: Any) -> int:
    """Put each exact GELU, ``x / sqrt(2) -> Erf -> + 1 -> * 0.5 -> * x`` with its two products in either order
    and either operand order, in the one form onnx2tf recognises (``Mul(x, Add(Erf, 1))`` then ``Mul(., 0.5)``,
    the divisor a Constant node's output: onnx2tf 1.28 checks it with ``hasattr(divisor, "numpy")``, which an
    initializer, a numpy array there, fails); return how many. The products commute, so the graph computes the
    same up to rounding. Run last before onnx2tf: ONNX Runtime's constant folding (``fixed_shapes``) would make
    the Constant node an initializer again.

    onnx2tf writes a GELU it recognises as TFLite's GELU builtin, which quantizes; torch's dynamo exporter writes
    ``Mul(0.5, .)`` before ``Mul(x, .)`` (MiniLM), which onnx2tf leaves as an Erf: replaced by its builtin
    approximation (see PSEUDO_OPERATORS) in float, but whose ``x / (|x| + eps)`` in full-integer int8 divides by a
    quantized zero ("div.cc data[i] != zero_point was not true ... (DIV) failed to invoke")."""
    from onnx import helper, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def scalar(name: str, value: float) -> bool:
        array = constants.get(name)
        return array is not None and array.size == 1 and bool(np.isclose(float(array.ravel()[0]), value))

    def only(node: Any, op_type: str) -> Any:
        following = consumers.get(node.output[0], [])
        return following[0] if len(following) == 1 and following[0].op_type == op_type else None

    def other(node: Any, name: str) -> str | None:
        rest = [each for each in node.input if each != name]
        return rest[0] if len(node.input) == 2 and len(rest) == 1 else None

    rewritten = 0
    for erf in [node for node in graph.node if node.op_type == "Erf"]:
        div = producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not scalar(div.input[1], float(np.sqrt(2))):
            continue
        x = div.input[0]
        add = only(erf, "Add")
        first = add and only(add, "Mul")
        second = first and only(first, "Mul")
        if not (add and first and second):
            continue
        one, factor = other(add, erf.output[0]), other(first, add.output[0])
        last = other(second, first.output[0])
        if one is None or not scalar(one, 1.0) or factor is None or last is None:
            continue
        if scalar(factor, 0.5) and last == x:  # Mul(0.5, .) then Mul(x, .): swap the factors
            half = factor
        elif factor == x and scalar(last, 0.5):  # onnx2tf's order, perhaps with operands swapped
            half = last
        else:
            continue
        del add.input[:], first.input[:], second.input[:]
        add.input.extend([erf.output[0], one])
        first.input.extend([x, add.output[0]])
        second.input.extend([first.output[0], half])
        divisor = f"{div.name or erf.output[0]}_sqrt2"
        value = numpy_helper.from_array(constants[div.input[1]].astype(np.float32).reshape(()), divisor)
        graph.node.insert(list(graph.node).index(div), helper.make_node("Constant", [], [divisor], value=value))
        div.input[1] = divisor
        rewritten += 1
    return rewritten


def _for_onnx2tf(onnx_path: Path, out_path: Path) -> int:
    """Write ``onnx_path`` as onnx2tf is given it: GELUs in the form it recognises (``_gelu_in_onnx2tf_order``),
    node names valid in TensorFlow (``_plain_node_names``: ONNX Runtime's optimisations may name new nodes);
    return the GELUs rewritten (none: nothing written)."""
    import onnx

    model = onnx.load(str(onnx_path))
    rewritten = _gelu_in_onnx2tf_order(model.graph)
    if rewritten:
        _plain_node_names(model.graph, set())
        onnx.save(model, str(out_path))
    return rewritten


def fixed_shapes(onnx_path: Path, shapes: dict[str, list[int]], out_path: Path) -> dict[str, list[int]] | None:
    """``onnx_path`` with every input fixed to one sample of ``shapes`` and its shape arithmetic folded, written
    to ``out_path``, when the graph has a dynamic axis besides the batch; else None (nothing written).

    onnx2tf converts a graph with one dynamic axis (the batch), not a transformer's batch *and* sequence ("'tf.
    Reshape' op requires 'shape' to have at most one dynamic dimension"), and fixing the input shapes alone is not
    enough while Shape ops remain: ONNX Runtime's basic optimisations fold them (standard ONNX ops only)."""
    import onnx
    import onnxruntime

    model = onnx.load(str(onnx_path))
    inputs = [value for value in model.graph.input if value.name in shapes]
    if all(dim.HasField("dim_value") for value in inputs for dim in list(value.type.tensor_type.shape.dim)[1:]):
        return None
    fixed = {}
    for value in inputs:
        fixed[value.name] = [1, *shapes[value.name][1:]]
        for dim, size in zip(value.type.tensor_type.shape.dim, fixed[value.name]):
            dim.ClearField("dim_param")
            dim.dim_value = size
    staged = out_path.with_name(out_path.stem + ".unfolded.onnx")
    onnx.save(model, str(staged))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out_path)
    onnxruntime.InferenceSession(str(staged), options, providers=["CPUExecutionProvider"])
    staged.unlink()
    return fixed


_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # onnx2tf colours its messages

# The file onnx2tf's ``download_test_image_data`` reads from the working folder, else fetches from GitHub.
SAMPLE_IMAGES = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _sample_images(folder: Path) -> None:
    """Write onnx2tf's sample-image file into ``folder`` (its working folder), generated here, so that it never
    downloads it.

    onnx2tf 1.28 (``onnx2tf.convert``, after building the model) calls ``download_test_image_data()`` whenever every
    input of the converted model is 4-D with a fixed batch of at most 20, a fixed height and width and 3 channels
    last as it converted them: a fixed-batch image model (e.g. [1,3,H,W], or one whose shape ``fixed_shapes`` fixed;
    issue 25 met it with a [1,128,128,3] input), for fp32 too. No argument prevents that call —
    ``custom_input_op_name_np_data_path`` only replaces the samples afterwards, in its dummy inference (and its
    own int8 path, not used here, calls it again) — and the function reads ``./<SAMPLE_IMAGES>`` when it exists
    before any request. The values only stand in for images where no calibration data was given (a non-float
    input): 20 × 128 × 128 × 3 float32 in [0, 1), fixed by a seed."""
    path = folder / SAMPLE_IMAGES
    if not path.exists():
        np.save(path, np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))


# onnx2tf's replacements, built of TFLite builtins (ABS, MUL, ADD, EXP, DIV), for ONNX ops that it otherwise
# writes as TensorFlow ops with no TFLite builtin: ``tf.Erf`` (BERT's exact GELU, e.g. MiniLM) and ``tf.Atan`` need
# the Flex delegate ("'tf.Erf' op is neither a custom op nor a flex op ... ERROR_NEEDS_FLEX_OPS"), which the
# converter is not allowed (builtins only: the file must run on every LiteRT build). Its Erf is Abramowitz-Stegun
# 7.1.26 (max abs error 1.5e-7); its Atan measured 2.4e-7 on [-50, 50]. Not Asin / Acos: onnx2tf 1.28's
# replacements return NaN at 0. A GELU that onnx2tf recognises as a pattern becomes the GELU builtin either way.
# (onnx2tf's Python API compares these lower-case; its command line lower-cases them itself.)
PSEUDO_OPERATORS = ["erf", "atan"]


def saved_model(
    onnx_path: Path, calibration: dict[str, np.ndarray], cache_dir: Path, keep_shape: list[str] | None = None
) -> Path:
    """onnx2tf's SavedModel for ``onnx_path`` (inputs named in_0, ...: see ``_with_plain_names``), converted once
    per ONNX content and options and reused by every precision. ``calibration`` holds file-layout samples per plain
    name; ``keep_shape`` names the inputs (plain names) the file takes in the ONNX graph's own shape.

    onnx2tf assumes every 3-, 4- and 5-D input is channels-first and makes the file take it channels-last: right
    for an NCHW image, wrong for a native NHWC one (MTCNN O-Net's [N, 48, 48, 3] became [N, 48, 3, 48]) or a
    [batch, sequence, features] tensor. Its ``keep_shape_absolutely_input_names`` keeps such an input's shape
    as it is, and the graph computes the same: measured on an NHWC input behind a Transpose, a [N, 16, H, W]
    feature map into a Conv and a [N, S, F] input into a MatMul, where ``keep_ncw_or_nchw_or_ncdhw_input_names``
    and ``keep_nwc_or_nhwc_or_ndhwc_input_names`` failed the MatMul ("Dimensions must be equal")."""
    options = {"keep_shape": sorted(keep_shape or []), "pseudo": PSEUDO_OPERATORS}
    digest = hashlib.sha256(onnx_path.read_bytes() + json.dumps(options).encode()).hexdigest()[:16]
    folder = cache_dir / f"onnx2tf-{digest}"
    if (folder / "saved_model.pb").exists():
        return folder
    import onnx2tf

    staging = (cache_dir / f"onnx2tf-{digest}.partial").resolve()
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # Real calibration data for every float input, for onnx2tf's own check of its conversion.
    samples = []
    for name, array in calibration.items():
        if array.dtype.kind == "f":
            np.save(staging / f"{name}.npy", array[:20].astype(np.float32))
            samples.append([name, str(staging / f"{name}.npy"), 0.0, 1.0])
    _sample_images(staging)
    source = onnx_path.resolve()  # before the chdir: a relative path would resolve against the staging folder
    log = io.StringIO()
    # It also writes stray files into the working directory, hence the chdir; it prints its errors (and may call
    # sys.exit) rather than raise, hence the captured output in the error.
    try:
        with contextlib.chdir(staging), contextlib.redirect_stdout(log):
            onnx2tf.convert(
                input_onnx_file_path=str(source),
                output_folder_path=str(staging / "saved_model"),
                not_use_onnxsim=True,
                custom_input_op_name_np_data_path=samples or None,
                keep_shape_absolutely_input_names=keep_shape or None,
                replace_to_pseudo_operators=PSEUDO_OPERATORS,
                non_verbose=True,
            )
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - onnx2tf exits instead of raising on some errors
        # Every line it printed as an error, in full (the row keeps the whole text; the report shows its first lines).
        errors = [line.rstrip() for line in _ANSI.sub("", log.getvalue()).splitlines() if "ERROR" in line]
        detail = (":\n" + "\n".join(errors))[:4000] if errors else ""
        raise RuntimeError(f"onnx2tf failed ({type(exc).__name__}: {exc}){detail}") from None
    (staging / "saved_model").rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


class TfliteConversionConfig(AccuracyAwareOptions):
    """What the TFLite file holds; every option runs on LiteRT's CPU (XNNPACK) kernels."""

    type: Literal["convert.tflite"] = "convert.tflite"
    quantization: Literal["none", "fp16", "dynamic-int8", "int8"] = Field(
        "none",
        description="'none': fp32; 'fp16': fp16 weights; 'dynamic-int8': int8 weights, float activations; "
        "'int8': full-integer, activations calibrated on the calibration split.",
    )
    int8_io: bool = Field(False, description="With 'int8': int8 model inputs and outputs (for integer-only devices).")
    calibration_samples: int = Field(200, gt=0)

    @model_validator(mode="after")
    def _accuracy_options_need_int8(self) -> TfliteConversionConfig:
        if self.accuracy_aware() and self.quantization != "int8":
            raise ValueError("max_drop, sensitivity and first_last_float apply to quantization: int8 only")
        if self.accuracy_aware() and self.int8_io:
            raise ValueError("max_drop, sensitivity and first_last_float keep layers in float: not with int8_io")
        return self


@register
class TfliteConversion(Pass[TfliteConversionConfig]):
    config_model = TfliteConversionConfig
    input_formats = ("onnx",)
    output_format = "tflite"
    libraries = ("onnx2tf", "tensorflow", "tensorflow-cpu")

    def is_lossless(self, config: TfliteConversionConfig) -> bool:
        return config.quantization == "none"

    def apply(self, artifact: Artifact, config: TfliteConversionConfig, context: PassContext) -> PassOutcome:
        if artifact.path is None:
            raise ValueError("convert.tflite needs an ONNX file")
        signature = artifact.signature
        source = artifact.path
        removed = without_qdq(source, context.work_dir / "float-weights.onnx")
        if removed:
            source = context.work_dir / "float-weights.onnx"
        names = _with_plain_names(source, context.work_dir / "plain-names.onnx")
        plain = {real: name for name, real in names.items()}
        samples = context.calibration.head(config.calibration_samples)
        calibration = {plain[name]: array for name, array in _file_layout(samples, signature).items()}
        converted = context.work_dir / "plain-names.onnx"
        static = fixed_shapes(
            converted,
            {plain[name]: list(array.shape) for name, array in samples.inputs.items()},
            context.work_dir / "fixed-shapes.onnx",
        )
        if static:
            converted = context.work_dir / "fixed-shapes.onnx"
        if _for_onnx2tf(converted, context.work_dir / "onnx2tf-input.onnx"):
            converted = context.work_dir / "onnx2tf-input.onnx"
        # Every input but an NCHW image keeps its shape (see saved_model).
        keep = [plain[spec.name] for spec in signature.inputs if spec.layout != "NCHW" and spec.name in plain]
        folder = saved_model(converted, calibration, context.cache_dir or context.work_dir, keep)
        fmt = TfliteInt8(folder, calibration, config, names, _nchw_inputs(signature))
        fmt.reference = (source, context.calibration.head(1).samples()[0])
        fmt.float_source = (source, "onnxruntime")
        output = context.work_dir / "model.tflite"
        control = None
        if config.quantization == "int8" and config.accuracy_aware():
            path, control = search(fmt, context.validation, config, context.work_dir, context.progress)
            shutil.copyfile(path, output)
        else:
            output.write_bytes(fmt.converter().convert())
        fmt.write_note(output)
        check_outputs(output, signature)
        details: dict[str, Any] = {"quantization": config.quantization, "int8_io": config.int8_io}
        if static:
            details["fixed_input_shapes"] = {names[name]: shape for name, shape in static.items()}
        if removed:
            details["qdq_nodes_removed"] = removed
            details["note"] = "QDQ input: weights kept as trained, activations re-calibrated by the TFLite converter"
        if config.quantization == "int8":
            details["calibration_samples"] = len(next(iter(calibration.values())))
        if control:
            details["accuracy_control"] = control
        return PassOutcome(Artifact("tflite", signature, path=output), details)


class TfliteInt8(Int8Format):
    """The TFLite converter's full-integer quantization, with layers kept in float through the
    QuantizationDebugger's deny-list (TFLite's documented selective quantization).

    The debugger calibrates once and re-quantizes from that calibration for each deny-list. Ranking runs no model
    per layer (a conversion each would take minutes on a real network): it uses the debugger's own per-layer
    statistics, the root-mean-square error of each quantized op's output against its float output divided by
    the output's quantization scale, the measure TensorFlow's guide ranks layers by."""

    target = "litert"
    measure = (
        "RMSE of the layer's int8 output against float, in units of its quantization scale (TFLite "
        "QuantizationDebugger, on the calibration split)"
    )

    def __init__(
        self,
        folder: Path,
        calibration: dict[str, np.ndarray],
        config: TfliteConversionConfig,
        names: dict[str, str],
        nchw_inputs: list[str],
    ) -> None:
        self.folder = folder
        self.calibration = calibration
        self.config = config
        self.names = names
        self.nchw_inputs = nchw_inputs
        # The source ONNX and one sample (the model's names and layout) to tell the file's outputs by (file_io).
        self.reference: tuple[Path, dict[str, np.ndarray]] | None = None
        self._file_io: tuple[dict[str, str], list[str]] | None = None
        self._debugger: Any = None
        self._rows: list[dict[str, str]] | None = None

    def write_note(self, path: Path) -> None:
        """The io note beside the file at ``path``. Its names and channels-last outputs are found on the first
        file written (``file_io``) and reused: every quantization of one SavedModel has the same signature."""
        if self._file_io is None:
            self._file_io = (
                file_io(path, self.names, self.nchw_inputs, *self.reference) if self.reference else (self.names, [])
            )
        names, channels_last = self._file_io
        write_io_note(path, names, self.nchw_inputs, channels_last)

    def converter(self) -> Any:
        """TensorFlow's converter for the SavedModel with the pass's quantization."""
        import tensorflow as tf

        config = self.config
        converter = tf.lite.TFLiteConverter.from_saved_model(str(self.folder))
        if config.quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if config.quantization == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if config.quantization == "int8":
            converter.representative_dataset = self._samples
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if config.int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        return converter

    def _samples(self) -> Any:
        count = len(next(iter(self.calibration.values())))
        return ({name: array[i : i + 1] for name, array in self.calibration.items()} for i in range(count))

    def _debugger_for(self) -> Any:
        """The debugger, calibrated once; float ops allowed, so that deny-listed layers can stay float."""
        import tensorflow as tf

        if self._debugger is None:
            converter = self.converter()
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            order = [
                detail["name"]
                for detail in tf.lite.Interpreter(
                    model_content=tf.lite.TFLiteConverter.from_saved_model(str(self.folder)).convert()
                ).get_input_details()
            ]
            plain = [next(name for name in self.calibration if name in detail) for detail in order]
            # The debugger feeds inputs as a list in the interpreter's order, not by name.
            self._debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=lambda: ([sample[name] for name in plain] for sample in self._samples()),
            )
        return self._debugger

    def quantize(self, float_layers: list[str], out_dir: Path) -> Path:
        import tensorflow as tf

        debugger = self._debugger_for()
        # The options are set on the private attribute that get_nondebug_quantized_model reads: the public setter
        # also rebuilds and loads an instrumented debug model (a second conversion per trial, never used here),
        # and raises when every op is deny-listed.
        debugger._debug_options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=float_layers or None)
        out_dir.mkdir(parents=True, exist_ok=True)
        output = out_dir / "model.tflite"
        output.write_bytes(debugger.get_nondebug_quantized_model())
        self.write_note(output)
        return output

    def layers(self, quantized: Path) -> list[Layer]:
        return [Layer(row["tensor_name"], row["op_name"]) for row in self._statistics()]

    def quantized_ops(self, path: Path) -> list[str]:
        """The ops of the file at ``path`` that read an int8 tensor (the debugger's layer list is the all-int8
        model's, whatever file is asked about)."""
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        dtypes = {detail["index"]: detail["dtype"] for detail in interpreter.get_tensor_details()}
        return [
            f"{op['op_name']} #{op['index']}"
            for op in interpreter._get_ops_details()
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
            and any(dtypes.get(index) in (np.int8, np.uint8) for index in op["inputs"] if index >= 0)
        ]

    def rank(
        self,
        quantized: Path,
        layers: list[Layer],
        judge: Callable[[Path], Judgement],
        work_dir: Path,
        progress: Callable[[int], None],
    ) -> dict[str, LayerScore]:
        scores = {}
        for row in self._statistics():
            scale = float(row["scale"])
            rmse = float(np.sqrt(float(row["mean_squared_error"])))
            scores[row["tensor_name"]] = LayerScore(rmse / scale if scale else 0.0)
        progress(len(layers))
        return {layer.name: scores[layer.name] for layer in layers}

    def _statistics(self) -> list[dict[str, str]]:
        """The debugger's per-layer statistics (one row per quantized op, in graph order), run once."""
        import tensorflow as tf

        if self._rows is None:
            debugger = self._debugger_for()
            debugger.options = tf.lite.experimental.QuantizationDebugOptions()
            debugger.run()
            text = io.StringIO()
            debugger.layer_statistics_dump(text)
            text.seek(0)
            self._rows = list(csv.DictReader(text))
        return self._rows


def file_io(
    path: Path, names: dict[str, str], nchw_inputs: list[str], reference: Path, sample: dict[str, np.ndarray]
) -> tuple[dict[str, str], list[str]]:
    """The note's names for the .tflite at ``path`` (file signature name → model name) and the model's outputs
    that the file gives channels-last, found against the ONNX model ``reference`` run on ``sample``.

    Names: onnx2tf names the signature's outputs after the graph's (``out_0``, ...) when ``tf.saved_model.save``
    writes its SavedModel; where that raises (PP-OCRv4 rec), onnx2tf falls back to Keras' ``ExportArchive``
    ("Saved artifact at ... The following endpoints are available" in its log), whose endpoint returns the
    outputs as a list, and the signature names them ``output_0``, ``output_1``, ... in the graph's output order:
    those are mapped back by that position.

    Layout: onnx2tf computes in channels-last and leaves some outputs so (PP-OCRv4 det's [N, 1, H, W] map came
    back [1, H, W, 1]) and not others, by how each was produced. ONNX Runtime gives the model's output shapes on
    ``sample``; an output whose file shape fits the model's with axis 1 moved last, and not the model's own, is
    channels-last; where both fit (e.g. C == H == W), the file runs on the sample and the closer order is taken."""
    import onnxruntime

    from edgecraft.targets import registry
    from edgecraft.targets.base import NoOptions

    target = registry.get("litert")
    write_io_note(path, names, nchw_inputs)
    outputs = sorted((int(plain[4:]), real) for plain, real in names.items() if plain.startswith("out_"))
    reals = [real for _, real in outputs]
    have = [spec.name for spec in target.signature(path).outputs]
    if not set(reals) <= set(have) and sorted(have) == sorted(f"output_{index}" for index, _ in outputs):
        names = {plain: real for plain, real in names.items() if not plain.startswith("out_")}
        names.update({f"output_{index}": real for index, real in outputs})
        write_io_note(path, names, nchw_inputs)
    session = onnxruntime.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    wanted = {value.name for value in session.get_inputs()}
    expected = dict(
        zip(
            [value.name for value in session.get_outputs()],
            session.run(None, {name: array for name, array in sample.items() if name in wanted}),
        )
    )
    channels_last, ambiguous = [], []
    for spec in target.signature(path).outputs:
        model = expected.get(spec.name)
        if model is None or spec.shape is None or model.ndim < 3:
            continue
        moved = [model.shape[0], *model.shape[2:], model.shape[1]]
        same, last = _fits(spec.shape, list(model.shape)), _fits(spec.shape, moved)
        if last and not same:
            channels_last.append(spec.name)
        elif last and same:
            ambiguous.append(spec.name)
    if ambiguous:
        results = target.run(target.load(path, "cpu", 1, NoOptions()), sample)
        for name in ambiguous:
            if _distance(np.moveaxis(results[name], -1, 1), expected[name]) < _distance(results[name], expected[name]):
                channels_last.append(name)
    return names, channels_last


def _distance(have: np.ndarray, want: np.ndarray) -> float:
    """The largest absolute difference of two arrays; infinite when their shapes differ."""
    return float(np.abs(have - want).max()) if have.shape == want.shape and have.size else float("inf")


def _fits(dims: list[int | str | None], shape: list[int]) -> bool:
    """Whether a signature's dimensions (an int fixed, a name or None free) admit a concrete shape."""
    return len(dims) == len(shape) and all(not isinstance(d, int) or d == n for d, n in zip(dims, shape))


def check_outputs(path: Path, signature: Signature) -> None:
    """The converted file must return every output of the model, by name, with its per-sample shape."""
    from edgecraft.targets import registry

    converted = {spec.name: spec for spec in registry.get("litert").signature(path).outputs}
    missing = [name for name in signature.output_names if name not in converted]
    if missing:
        raise RuntimeError(f"the TFLite file lacks output(s) {missing}; it has {sorted(converted)}")
    for spec in signature.outputs:
        want, have = spec.shape, converted[spec.name].shape
        if (
            want
            and have
            and len(want) == len(have)
            and any(isinstance(w, int) and isinstance(h, int) and w != h for w, h in zip(want[1:], have[1:]))
        ):
            raise RuntimeError(f"the TFLite file's output {spec.name!r} has shape {have}, the model's {want}")
