"""OpenVINO and LiteRT: the conversion passes, and each target's export, load, run, layout and availability."""

from __future__ import annotations

import importlib.util
import platform

import numpy as np
import pytest

from edgecraft.compress import registry as passes
from edgecraft.compress.base import PassContext
from edgecraft.core.cpu import cpu_info
from edgecraft.targets import registry
from tests.conftest import accuracy, images, labels, torch_logits


@pytest.fixture(scope="module")
def convert(digits_cnn: dict, tmp_path_factory: pytest.TempPathFactory):
    """Apply one pass to the digits-cnn fp32 ONNX; onnx2tf's SavedModel is shared through one cache folder."""
    cache = tmp_path_factory.mktemp("conversion-cache")

    def apply(name: str, **options):
        work = tmp_path_factory.mktemp(name.replace(".", "-"))
        context = PassContext(**{**vars(digits_cnn["context"]), "work_dir": work, "cache_dir": cache})
        pass_ = passes.get(name)
        return pass_.apply(digits_cnn["onnx"], pass_.config_model(type=name, **options), context)

    return apply


def outputs_on(runtime: str, path, x: np.ndarray, tmp_path, source_format: str, **options) -> tuple[np.ndarray, dict]:
    target = registry.get(runtime)
    runnable = target.export(path, source_format, tmp_path)
    session = target.load(runnable, "cpu", 1, target.options_model(**options))
    return target.run(session, {"input": x})["logits"], target.describe(session)


# ---- OpenVINO ----------------------------------------------------------------------------------------------


def test_openvino_fp32_ir_matches_pytorch_in_true_f32(digits_cnn: dict, convert, tmp_path) -> None:
    ir = convert("convert.openvino").artifact
    assert ir.format == "openvino" and ir.path.with_suffix(".bin").exists()
    x = images(digits_cnn["splits"], 50)
    outputs, info = outputs_on("openvino", ir.path, x, tmp_path, "openvino")
    assert np.abs(outputs - torch_logits(digits_cnn["model"], x)).max() <= 1e-4
    assert info["inference_precision"] == "f32" and info["threads"] == 1
    assert {p.name for p in tmp_path.iterdir()} == {"model.xml", "model.bin"}


def test_openvino_runs_onnx_by_converting_it_on_export(digits_cnn: dict, tmp_path) -> None:
    x = images(digits_cnn["splits"], 8)
    outputs, _ = outputs_on("openvino", digits_cnn["onnx"].path, x, tmp_path, "onnx")
    assert (tmp_path / "model.xml").exists()
    assert np.abs(outputs - torch_logits(digits_cnn["model"], x)).max() <= 1e-4


def test_openvino_records_the_precision_the_plugin_chose(digits_cnn: dict, tmp_path) -> None:
    x = images(digits_cnn["splits"], 4)
    _, info = outputs_on("openvino", digits_cnn["onnx"].path, x, tmp_path, "onnx", inference_precision="plugin-default")
    # OpenVINO's CPU plugin defaults to bf16 where the CPU computes it natively (AMX or AVX-512 BF16), to f16 on
    # ARM, and to f32 elsewhere: the expectation comes from the CPU, never from the value measured.
    flags = set(cpu_info().get("flags", []))
    if platform.machine().lower() in ("aarch64", "arm64"):
        expected = "f16"
    else:
        expected = "bf16" if flags & {"amx_bf16", "avx512_bf16"} else "f32"
    assert info["inference_precision"] == expected


def test_fp16_ir_is_half_the_size_and_close(digits_cnn: dict, convert, tmp_path) -> None:
    fp32, fp16 = convert("convert.openvino").artifact, convert("convert.openvino", compress_to_fp16=True).artifact
    assert fp16.path.with_suffix(".bin").stat().st_size < 0.6 * fp32.path.with_suffix(".bin").stat().st_size
    x = images(digits_cnn["splits"], 50)
    outputs, _ = outputs_on("openvino", fp16.path, x, tmp_path, "openvino")
    assert np.abs(outputs - torch_logits(digits_cnn["model"], x)).max() < 0.05


def test_nncf_int8_is_smaller_and_within_one_point(digits_cnn: dict, convert, tmp_path) -> None:
    outcome = convert("quantize.nncf")
    ir = outcome.artifact
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    outputs, _ = outputs_on("openvino", ir.path, x, tmp_path, "openvino")
    assert accuracy(outputs, y) >= accuracy(torch_logits(digits_cnn["model"], x), y) - 0.01
    assert digits_cnn["onnx"].path.stat().st_size / ir.path.with_suffix(".bin").stat().st_size >= 3
    assert outcome.details["calibration_samples"] == len(digits_cnn["splits"].calibration.head(300))


def test_openvino_devices_without_hardware_are_skipped_with_a_reason() -> None:
    import openvino

    target = registry.get("openvino")
    assert target.unavailable_reason("cpu") is None
    if not any(name.startswith("GPU") for name in openvino.Core().available_devices):
        assert "no GPU plugin device here" in target.unavailable_reason("gpu")


# ---- LiteRT ------------------------------------------------------------------------------------------------


def test_tflite_fp32_is_nhwc_and_the_target_hides_it(digits_cnn: dict, convert, tmp_path) -> None:
    tflite = convert("convert.tflite").artifact
    target = registry.get("litert")
    session = target.load(target.export(tflite.path, "tflite", tmp_path), "cpu", 1, target.options_model())
    assert list(session.interpreter.get_input_details()[0]["shape"]) == [1, 32, 32, 1]  # NHWC inside the file
    # Reported as run() takes it: NCHW, the way the data feeds it (the io note beside the file says so).
    assert [i.describe() for i in target.signature(tflite.path).inputs] == ["input: float32 [batch×1×32×32] NCHW"]
    assert target.signature(tflite.path).output_names == ["logits"]
    x = images(digits_cnn["splits"], 20)  # NCHW outside, batch 20: the target transposes and resizes
    assert np.abs(target.run(session, {"input": x})["logits"] - torch_logits(digits_cnn["model"], x)).max() <= 1e-4
    assert target.run(session, {"input": x[:1]})["logits"].shape == (1, 10)
    assert target.describe(session)["interpreter"].startswith("ai-edge-litert")
    assert target.describe(session)["num_threads"] == 1


@pytest.mark.parametrize(("quantization", "int8_io"), [("fp16", False), ("dynamic-int8", False), ("int8", True)])
def test_tflite_precisions_keep_accuracy(digits_cnn: dict, convert, tmp_path, quantization: str, int8_io: bool) -> None:
    tflite = convert("convert.tflite", quantization=quantization, int8_io=int8_io).artifact
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    outputs, info = outputs_on("litert", tflite.path, x, tmp_path, "tflite")
    assert accuracy(outputs, y) >= accuracy(torch_logits(digits_cnn["model"], x), y) - 0.01
    assert info["input_dtype"] == ("int8" if int8_io else "float32")
    assert tflite.path.stat().st_size < 0.6 * digits_cnn["onnx"].path.stat().st_size


def test_litert_falls_back_to_tflite_runtime(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ai_edge_litert" else real(name, *a)
    )
    target = registry.get("litert")
    if real("tflite_runtime"):
        assert target.python_module == "tflite_runtime"
    else:
        assert target.python_module is None
        assert "ai_edge_litert, tflite_runtime" in target.unavailable_reason("cpu")


def test_litert_gpu_and_arm_are_skipped_here_with_reasons() -> None:
    import platform

    target = registry.get("litert")
    assert "GPU delegate" in target.unavailable_reason("gpu")
    if platform.machine().lower() not in ("aarch64", "arm64"):
        assert "arm rows run on an ARM (aarch64) device" in target.unavailable_reason("arm")


# ---- a recipe across formats -------------------------------------------------------------------------------


def test_one_recipe_across_formats_isolates_a_failing_conversion(tmp_path) -> None:
    """A real converter failure (TFLite cannot express ONNX Runtime's dynamic int8 ops) fails only its rows."""
    from edgecraft.core.results import RunResults
    from edgecraft.runner import run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: formats\nmodels: [{builtin: digits-cnn}]\nvariants:\n"
        "  - {name: fp32}\n"
        "  - {name: ov-int8, passes: [{type: quantize.nncf}]}\n"
        "  - {name: tflite-int8, passes: [{type: convert.tflite, quantization: int8}]}\n"
        "  - {name: broken, passes: [{type: quantize.dynamic}, {type: convert.tflite}]}\n"
        "targets: [onnxruntime:cpu, openvino:cpu, litert:cpu, litert:gpu]\n"
    )
    run_dir = run_recipe(recipe, output_dir=tmp_path / "runs", quick=True)
    results = RunResults.model_validate_json((run_dir / "results.json").read_text())
    rows = {(r.variant, r.target): r for r in results.rows}
    assert set(rows) == {
        ("fp32", "onnxruntime:cpu"),
        ("fp32", "openvino:cpu"),  # ONNX runs on both ONNX-reading runtimes
        ("ov-int8", "openvino:cpu"),
        ("tflite-int8", "litert:cpu"),
        ("tflite-int8", "litert:gpu"),
        ("broken", "litert:cpu"),
        ("broken", "litert:gpu"),  # failed rows only where a TFLite model would run
    }
    reference = results.models[0].reference_accuracy
    for key in [
        ("fp32", "onnxruntime:cpu"),
        ("fp32", "openvino:cpu"),
        ("ov-int8", "openvino:cpu"),
        ("tflite-int8", "litert:cpu"),
    ]:
        row = rows[key]
        assert row.status == "ok", row.reason
        assert row.measurement.accuracy >= reference - 0.01
        assert not [w for w in row.warnings if w.startswith("conversion bug?")]  # noise warnings may appear
    assert rows[("fp32", "openvino:cpu")].measurement.runtime_info["inference_precision"] == "f32"
    assert rows[("fp32", "openvino:cpu")].measurement.fidelity.max_abs_diff <= 1e-4
    ov_files = rows[("ov-int8", "openvino:cpu")]
    assert ov_files.size_bytes == sum(
        (run_dir / ov_files.artifact).with_suffix(s).stat().st_size for s in (".xml", ".bin")
    )
    assert rows[("tflite-int8", "litert:gpu")].status == "skipped"
    for target in ("litert:cpu", "litert:gpu"):
        broken = rows[("broken", target)]
        assert broken.status == "failed" and broken.reason.startswith("pass failed: ConverterError")
        # The converter's whole text is kept (its first lines rarely say which op failed), capped for results.json.
        assert len(broken.reason) <= len("pass failed: ") + 4000 + len(" (100000 more characters)")


def test_a_lossless_variant_that_drifts_is_flagged_as_a_conversion_bug() -> None:
    from edgecraft.recipe.schema import Recipe
    from edgecraft.rows import drift_warning
    from edgecraft.runner import lossless

    recipe = Recipe.model_validate(
        {
            "name": "t",
            "models": [{"builtin": "digits-cnn"}],
            "variants": [
                {"name": "fp32"},
                {"name": "ir", "passes": [{"type": "convert.openvino"}]},
                {"name": "int8", "passes": [{"type": "quantize.static"}]},
            ],
            "targets": ["openvino:cpu", {"target": "openvino:cpu", "options": {"inference_precision": "bf16"}}],
        }
    )
    f32, bf16 = recipe.targets
    fp32, ir, int8 = recipe.variants
    assert lossless(fp32, f32) and "conversion bug?" in drift_warning(2e-3)[0]
    assert lossless(ir, f32)  # a pure format conversion must not drift either
    assert drift_warning(5e-5) == []
    assert "conversion bug?" in drift_warning(float("nan"))[0]  # nan > tolerance is false: NaN must still be flagged
    assert not lossless(int8, f32)  # quantization is expected to drift
    assert not lossless(fp32, bf16)  # the user asked for bf16


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "litert"])
def test_a_bound_call_returns_what_run_returns_and_run_still_works_after_it(
    runtime: str, digits_cnn: dict, convert, tmp_path
) -> None:
    """The benchmark's timed loop calls ``bind``'s calls (inputs handed to the runtime once): the same outputs as
    ``run`` for each sample, whichever ran before (OpenVINO's request and LiteRT's interpreter are shared)."""
    path, source = (
        (convert("convert.tflite", quantization="int8").artifact.path, "tflite")
        if runtime == "litert"
        else (digits_cnn["onnx"].path, "onnx")
    )
    target = registry.get(runtime)
    session = target.load(target.export(path, source, tmp_path), "cpu", 1, target.options_model())
    x = images(digits_cnn["splits"], 3)
    samples = [{"input": x[i : i + 1]} for i in range(3)]
    samples[0]["input"].flags.writeable = False  # as a memory-mapped sample is
    expected = [target.run(session, sample)["logits"] for sample in samples]
    calls = [target.bind(session, sample) for sample in samples]
    for order in ([0, 1, 2], [2, 0, 1]):
        for i in order:
            np.testing.assert_array_equal(calls[i]()["logits"], expected[i])
            np.testing.assert_array_equal(target.run(session, samples[(i + 1) % 3])["logits"], expected[(i + 1) % 3])
    assert len({float(e.max()) for e in expected}) == 3  # three different samples, so a stale input would show


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino", "litert"])
def test_requests_end_every_inference_they_start_once_and_hand_a_refused_one_its_error(
    runtime: str, digits_cnn: dict, convert, tmp_path
) -> None:
    """The throughput pass's parallel requests and LoadGen's Server and Offline system under test: each started
    inference ends exactly once, an input the runtime refuses ends with its error instead of raising (LoadGen would
    wait for its query for ever), and ``close`` returns once every one has ended."""
    tflite = runtime == "litert"
    path, source = (convert("convert.tflite").artifact.path, "tflite") if tflite else (digits_cnn["onnx"].path, "onnx")
    target = registry.get(runtime)
    runnable = target.export(path, source, tmp_path)
    options = target.options_model()
    session = target.load(runnable, "cpu", 1, options)
    requests = target.requests(session, 2, lambda: target.load(runnable, "cpu", 1, options))
    x = images(digits_cnn["splits"], 1)
    ended: list[BaseException | None] = []
    for i in range(7):
        sample = {"input": x if i != 3 else np.zeros((1, 5), np.float32)}
        requests.start(sample, ended.append)
    requests.close()
    assert len(ended) == 7
    assert sum(error is not None for error in ended) == 1
