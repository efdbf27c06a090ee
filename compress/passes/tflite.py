"""ONNX → TFLite (LiteRT) in fp32, fp16, dynamic-range int8 or full-integer int8.

onnx2tf turns the NCHW ONNX graph into an NHWC TensorFlow SavedModel (transposes folded away rather than
inserted around every op); TensorFlow's own TFLiteConverter then applies the quantization, calibrated on the
recipe's calibration split. TensorFlow is used here, to convert, and never to run. Only inputs declared as NCHW
images become NHWC; token ids, masks and other inputs keep their layout. A note beside the .tflite records the
model's own input and output names and which inputs were transposed, for the LiteRT target.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
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
    """Write ``onnx_path`` with its inputs and outputs renamed ``in_0``, ``out_0``, ...; return {plain: real}.

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
    onnx.save(model, str(out_path))
    return {plain: real for real, plain in renames.items()}


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


def saved_model(onnx_path: Path, calibration: dict[str, np.ndarray], cache_dir: Path) -> Path:
    """onnx2tf's SavedModel for ``onnx_path`` (inputs named in_0, ...: see ``_with_plain_names``), converted once
    per ONNX content and reused by every precision. ``calibration`` holds file-layout samples per plain name."""
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
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
        folder = saved_model(converted, calibration, context.cache_dir or context.work_dir)
        fmt = TfliteInt8(folder, calibration, config, names, _nchw_inputs(signature))
        output = context.work_dir / "model.tflite"
        control = None
        if config.quantization == "int8" and config.accuracy_aware():
            path, control = search(fmt, context.validation, config, context.work_dir, context.progress)
            shutil.copyfile(path, output)
        else:
            output.write_bytes(fmt.converter().convert())
        write_io_note(output, names, _nchw_inputs(signature))
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
        self._debugger: Any = None
        self._rows: list[dict[str, str]] | None = None

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
        write_io_note(output, self.names, self.nchw_inputs)
        return output

    def layers(self, quantized: Path) -> list[Layer]:
        return [Layer(row["tensor_name"], row["op_name"]) for row in self._statistics()]

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
