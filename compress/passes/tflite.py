"""ONNX → TFLite (LiteRT) in fp32, fp16, dynamic-range int8 or full-integer int8.

onnx2tf turns the NCHW ONNX graph into an NHWC TensorFlow SavedModel (transposes folded away rather than
inserted around every op); TensorFlow's own TFLiteConverter then applies the quantization, calibrated on the
recipe's calibration split. TensorFlow is used here, to convert, and never to run.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from compress.base import Artifact, Pass, PassConfig, PassContext, PassOutcome
from compress.qdq import without_qdq
from compress.registry import register


def _nhwc(inputs: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(inputs, (0, 2, 3, 1))) if inputs.ndim == 4 else inputs


def saved_model(onnx_path: Path, calibration: np.ndarray, cache_dir: Path) -> Path:
    """onnx2tf's SavedModel for ``onnx_path``, converted once per ONNX content and reused by every precision."""
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    folder = cache_dir / f"onnx2tf-{digest}"
    if (folder / "saved_model.pb").exists():
        return folder
    import onnx
    import onnx2tf

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    staging = cache_dir / f"onnx2tf-{digest}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    sample = staging / "calibration.npy"
    np.save(sample, _nhwc(calibration[:20]).astype(np.float32))
    # Real calibration data is always passed: without it onnx2tf downloads sample images (no network here).
    # It also writes stray files into the working directory, hence the chdir.
    with contextlib.chdir(staging), contextlib.redirect_stdout(io.StringIO()):
        onnx2tf.convert(
            input_onnx_file_path=str(onnx_path.resolve()),
            output_folder_path=str(staging / "saved_model"),
            not_use_onnxsim=True,
            copy_onnx_input_output_names_to_tflite=True,
            custom_input_op_name_np_data_path=[[input_name, str(sample), 0.0, 1.0]],
            non_verbose=True,
        )
    (staging / "saved_model").rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


class TfliteConversionConfig(PassConfig):
    """What the TFLite file holds; every option runs on LiteRT's CPU (XNNPACK) kernels."""

    type: Literal["convert.tflite"] = "convert.tflite"
    quantization: Literal["none", "fp16", "dynamic-int8", "int8"] = Field(
        "none",
        description="'none': fp32; 'fp16': fp16 weights; 'dynamic-int8': int8 weights, float activations; "
        "'int8': full-integer, activations calibrated on the calibration split.",
    )
    int8_io: bool = Field(False, description="With 'int8': int8 model inputs and outputs (for integer-only devices).")
    calibration_samples: int = Field(200, gt=0)


@register
class TfliteConversion(Pass):
    name = "convert.tflite"
    config_model = TfliteConversionConfig
    input_formats = ("onnx",)
    output_format = "tflite"
    libraries = ("onnx2tf", "tensorflow", "tensorflow-cpu")

    def is_lossless(self, config: TfliteConversionConfig) -> bool:
        return config.quantization == "none"

    def apply(self, artifact: Artifact, config: TfliteConversionConfig, context: PassContext) -> PassOutcome:
        import tensorflow as tf

        calibration = _nhwc(context.calibration[0][: config.calibration_samples]).astype(np.float32)
        source = artifact.path
        removed = without_qdq(source, context.work_dir / "float-weights.onnx")
        if removed:
            source = context.work_dir / "float-weights.onnx"
        folder = saved_model(source, calibration, context.cache_dir or context.work_dir)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
        if config.quantization != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if config.quantization == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        if config.quantization == "int8":
            converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if config.int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        output = context.work_dir / "model.tflite"
        output.write_bytes(converter.convert())
        details = {"quantization": config.quantization, "int8_io": config.int8_io}
        if removed:
            details["qdq_nodes_removed"] = removed
            details["note"] = "QDQ input: weights kept as trained, activations re-calibrated by the TFLite converter"
        if config.quantization == "int8":
            details["calibration_samples"] = len(calibration)
        return PassOutcome(Artifact("tflite", artifact.input_shape, path=output), details)
