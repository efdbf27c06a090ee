"""Per-operator profiling: each runtime's profile parsed from real runs, the harness phase and its setting, and the
report's operator and sensitivity panels (no wall-clock assertion anywhere: the slow MobileNetV3 run is in
tests/test_profiling_slow.py)."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from edgecraft.bench import evaluators
from edgecraft.bench.harness import MeasureJob, _operator_profile, measure
from edgecraft.bench.settings import profile_settings
from edgecraft.compress import registry as passes
from edgecraft.compress.base import Dataset, PassContext
from edgecraft.core.results import OperatorProfile
from edgecraft.reports.analysis import BARELY_FASTER, analyse
from edgecraft.reports.csv_table import results_csv
from edgecraft.reports.html import render_html, render_summary
from edgecraft.reports.results_file import check_results, load_results
from edgecraft.reports.settings import report_settings
from edgecraft.targets import feeds, registry
from edgecraft.targets.runtimes.onnxruntime import parse_profile
from edgecraft.targets.runtimes.openvino import exec_precision
from tests import profile_results as pr
from tests import results_factory as factory
from tests.conftest import images, onnx_logits

QUICK = profile_settings("quick", batch_sizes=[1], throughput_s=0.05, operator_profile_runs=3)


def quantize_static(onnx_path: Path, inputs: dict[str, np.ndarray], work: Path, samples: int) -> Path:
    """``quantize.static`` (the recipe pass, its defaults) on an fp32 ONNX file, calibrated on ``inputs``."""
    from edgecraft.compress.base import Artifact
    from edgecraft.targets.registry import get

    work.mkdir(parents=True, exist_ok=True)
    signature = get("onnxruntime").signature(onnx_path)
    data = Dataset(inputs)
    context = PassContext(train=data, calibration=data, evaluation=data, work_dir=work)
    pass_ = passes.get("quantize.static")
    config = pass_.config_model(type="quantize.static", calibration_samples=samples)
    return pass_.apply(Artifact("onnx", signature, path=onnx_path), config, context).artifact.path


def feeds_of(array: np.ndarray, name: str, count: int = 4) -> list[dict[str, np.ndarray]]:
    return [{name: array[i : i + 1]} for i in range(count)]


def shares_sum_to_one(p: OperatorProfile) -> None:
    assert p.timed and p.runs > 0 and p.ops
    assert sum(op.share for op in p.ops) == pytest.approx(1.0, abs=1e-6)
    assert sum(op.ms for op in p.ops) == pytest.approx(p.total_ms, rel=1e-6)
    assert [op.ms for op in p.ops] == sorted((op.ms for op in p.ops), reverse=True)


@pytest.fixture(scope="module")
def digits_int8(digits_cnn: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    calibration = {"input": images(digits_cnn["splits"], 64, "calibration")}
    return quantize_static(digits_cnn["onnx"].path, calibration, tmp_path_factory.mktemp("digits-int8"), 64)


# ---- each runtime's profile, from real runs -------------------------------------------------------------------


def test_onnxruntime_profile_of_digits_fp32_and_int8(digits_cnn: dict, digits_int8: Path) -> None:
    target = registry.get("onnxruntime")
    x = feeds_of(images(digits_cnn["splits"], 4), "input")
    fp32 = OperatorProfile.model_validate(
        target.profile(digits_cnn["onnx"].path, "cpu", 1, target.options_model(), x, 5)
    )
    int8 = OperatorProfile.model_validate(target.profile(digits_int8, "cpu", 1, target.options_model(), x, 5))
    for p in (fp32, int8):
        shares_sum_to_one(p)
        assert p.source == "onnxruntime profiler" and p.runs == 5
    assert not fp32.quantized and fp32.qdq_nodes == {} and fp32.float_ops == {}
    assert {"Conv", "FusedConv"} & {op.op_type for op in fp32.ops}
    assert (
        int8.quantized and int8.qdq_nodes.get("QuantizeLinear", 0) > 0 and int8.qdq_nodes.get("DequantizeLinear", 0) > 0
    )
    assert "QLinearConv" in {op.op_type for op in int8.ops}  # QDQ groups fused into integer kernels
    assert "QuantizeLinear" not in int8.float_ops and "QLinearConv" not in int8.float_ops


def test_onnxruntime_trace_keeps_only_the_last_runs() -> None:
    """Warm-up runs are cut off by their model_run windows; node counts are per inference; a node fed int8 is
    not a float op, one fed float in a model with Q/DQ is."""

    def run(start: int, conv_us: int) -> list[dict]:
        return [
            {"cat": "Session", "name": "model_run", "ts": start, "dur": 100},
            {
                "cat": "Node",
                "name": "q_kernel_time",
                "ts": start + 1,
                "dur": 10,
                "args": {"op_name": "QuantizeLinear", "input_type_shape": [{"float": [1]}, {"float": []}]},
            },
            {"cat": "Node", "name": "q_fence_before", "ts": start + 1, "dur": 0, "args": {"op_name": "QuantizeLinear"}},
            {
                "cat": "Node",
                "name": "qconv_kernel_time",
                "ts": start + 20,
                "dur": 30,
                "args": {"op_name": "QLinearConv", "input_type_shape": [{"int8": [1]}, {"float": []}]},
            },
            {
                "cat": "Node",
                "name": "conv_kernel_time",
                "ts": start + 50,
                "dur": conv_us,
                "args": {"op_name": "Conv", "input_type_shape": [{"float": [1]}, {"float": [1]}]},
            },
        ]

    trace = [
        {"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 5},
        *run(10, 5000),
        *run(200, 60),
        *run(400, 60),
    ]
    p = OperatorProfile.model_validate(parse_profile(trace, runs=2))
    assert p.runs == 2 and p.total_ms == pytest.approx(0.1)  # the 5 ms warm-up Conv is not counted
    assert {op.op_type: (op.nodes, op.ms) for op in p.ops} == {
        "Conv": (1, pytest.approx(0.06)),
        "QLinearConv": (1, pytest.approx(0.03)),
        "QuantizeLinear": (1, pytest.approx(0.01)),
    }
    assert p.quantized and p.qdq_nodes == {"QuantizeLinear": 1} and p.float_ops == {"Conv": 1}


def test_openvino_performance_counters_of_digits_fp32_and_int8(
    digits_cnn: dict, digits_int8: Path, tmp_path: Path
) -> None:
    target = registry.get("openvino")
    x = feeds_of(images(digits_cnn["splits"], 4), "input")
    fp32_ir = target.export(digits_cnn["onnx"].path, "onnx", tmp_path)
    fp32 = OperatorProfile.model_validate(target.profile(fp32_ir, "cpu", 1, target.options_model(), x, 4))
    int8 = OperatorProfile.model_validate(target.profile(digits_int8, "cpu", 1, target.options_model(), x, 4))
    for p in (fp32, int8):
        shares_sum_to_one(p)
        assert p.source == "openvino performance counters" and "inference precision f32" in p.notes
    assert not fp32.quantized and fp32.qdq_nodes == {} and fp32.float_ops == {}
    assert int8.quantized and int8.qdq_nodes["FakeQuantize"] > 0
    assert "FakeQuantize" not in int8.float_ops


def test_openvino_exec_type_precisions() -> None:
    assert exec_precision("brgconv_avx512_amx_1x1_I8") == "i8" and exec_precision("jit_avx2_f32") == "f32"
    assert exec_precision("ref_any_bf16") == "bf16" and exec_precision("jit_uni_u8") == "u8"
    assert exec_precision("undef") is None and exec_precision("unknown_FP32") == "fp32"


def test_litert_op_list_says_per_op_time_is_not_measured(tmp_path: Path) -> None:
    from tests.fixtures_models import NATIVE_TFLITE_SHAPE, write_native_tflite

    target = registry.get("litert")
    x = feeds_of(np.random.default_rng(0).random((4, *NATIVE_TFLITE_SHAPE), dtype=np.float32), "image")
    fp32_file = write_native_tflite(tmp_path / "fp32.tflite")
    int8_file = write_native_tflite(tmp_path / "int8.tflite", int8=True)
    fp32 = OperatorProfile.model_validate(target.profile(fp32_file, "cpu", 1, target.options_model(), x, 3))
    int8 = OperatorProfile.model_validate(target.profile(int8_file, "cpu", 1, target.options_model(), x, 3))
    for p in (fp32, int8):
        assert p.source == "litert op list" and not p.timed and p.runs == 0 and p.total_ms > 0
        assert p.not_measured.startswith("per-op time not measured") and "op profiler" in p.not_measured
        assert {op.op_type: op.nodes for op in p.ops} == {
            "CONV_2D": 2,
            "FULLY_CONNECTED": 2,
            "LOGISTIC": 2,
            "MEAN": 1,
            "RESHAPE": 1,
        }
        assert all(op.ms is None and op.share is None for op in p.ops)
        assert any("XNNPACK" in note for note in p.notes)
    assert not fp32.quantized and fp32.float_ops == {}
    assert int8.quantized and int8.float_ops == {}  # full-integer: nothing ran in float


# ---- the harness phase and its setting ------------------------------------------------------------------------


def _job(digits_cnn: dict, path: Path, work: Path) -> MeasureJob:
    x = images(digits_cnn["splits"], 16)
    reference = {"logits": onnx_logits(digits_cnn["onnx"].path, x)}
    inputs = feeds.save({"input": x}, work / "inputs")
    return MeasureJob(
        "onnxruntime",
        "cpu",
        {},
        path,
        inputs,
        reference,
        lambda outputs: evaluators.not_measured(None, "not scored"),
        work / "bench",
    )


def test_the_harness_profiles_each_row_once_after_its_timed_phases(
    digits_cnn: dict, digits_int8: Path, tmp_path: Path
) -> None:
    settings = QUICK.model_copy(update={"repetitions": 2})
    m = measure(_job(digits_cnn, digits_int8, tmp_path / "on"), settings)
    p = m.operator_profile
    assert p is not None and p.runs == settings.operator_profile_runs and p.quantized
    shares_sum_to_one(p)
    assert len(m.repetitions) == 2 and m.latency_ms.runs >= 2 * settings.runs  # the timed phases as before
    row = factory.ok("int8", 1.0, 0.98, 1000).model_copy(update={"measurement": m})
    check_results(factory.run([factory.ok("fp32", 1.0, 0.98, 4000), row]), "profiled run")  # the schema holds
    off = measure(_job(digits_cnn, digits_int8, tmp_path / "off"), QUICK.model_copy(update={"operator_profile": False}))
    assert off.operator_profile is None
    assert QUICK.model_dump()["operator_profile"] is True  # recorded with the protocol; on by default
    assert (
        profile_settings("default").operator_profile
        and not profile_settings("quick", operator_profile=False).operator_profile
    )


def test_a_profile_the_worker_got_wrong_does_not_fail_the_row() -> None:
    assert _operator_profile([{"operator_profile": None}]) is None
    broken = _operator_profile([{"operator_profile": {"source": "onnxruntime profiler", "runs": -1}}])
    assert broken.source == "onnxruntime profiler" and broken.not_measured.startswith("the profile could not be read")
    failed = {"source": "openvino", "not_measured": "profiling failed: RuntimeError: PERF_COUNT"}
    assert _operator_profile([{"operator_profile": failed}]).not_measured == failed["not_measured"]


# ---- the MobileNetV3-Small-style net at 224×224 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_v3(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The net exported to ONNX (TorchScript exporter: seconds, where the dynamo exporter takes half a minute on
    two loaded cores; the recipe path in the slow test uses the dynamo one) and ``quantize.static`` of it."""
    import torch

    from tests.fixtures_models import mobilenet_v3_dataset, mobilenet_v3_small_like

    folder = tmp_path_factory.mktemp("mobilenet-v3")
    inputs, _ = mobilenet_v3_dataset(20)
    fp32 = folder / "fp32.onnx"
    torch.onnx.export(
        mobilenet_v3_small_like(),
        (torch.from_numpy(inputs["image"][:1]),),
        str(fp32),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}},
        opset_version=17,
    )
    int8 = quantize_static(fp32, {"image": inputs["image"][:16]}, folder / "int8", 16)
    return {"fp32": fp32, "int8": int8, "feeds": feeds_of(inputs["image"][16:], "image")}


def test_mobilenet_v3_int8_panel_names_the_op_types_that_grew_with_their_share(mobilenet_v3: dict) -> None:
    """Real ONNX Runtime profiles of the net's fp32 and ``quantize.static`` int8 files. Whether int8 is slower is
    the machine's business (0.73× on the issue's machine, slower here too; see the slow test): the rows are given
    latencies that put int8 below 1.2× fp32, and the panel must then name exactly the op types whose profiled
    time grew, each with its share of the int8 row's op time, as computed here from the profiles themselves."""
    target = registry.get("onnxruntime")
    fp32, int8 = (
        OperatorProfile.model_validate(
            target.profile(mobilenet_v3[name], "cpu", 1, target.options_model(), mobilenet_v3["feeds"], 5)
        )
        for name in ("fp32", "int8")
    )
    shares_sum_to_one(fp32)
    shares_sum_to_one(int8)
    assert sum(fp32.qdq_nodes.values()) == 0 and not fp32.quantized
    assert int8.qdq_nodes["QuantizeLinear"] > 0 and int8.qdq_nodes["DequantizeLinear"] > 0 and int8.quantized
    # Hard-swish (exported as x · HardSigmoid(x)) has no integer kernel in ONNX Runtime: float between Q/DQ pairs.
    assert "HardSigmoid" in int8.float_ops

    fp32_ms = {op.op_type: op.ms for op in fp32.ops}
    grew = {op.op_type: op for op in int8.ops if op.ms > fp32_ms.get(op.op_type, 0.0)}
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(grew)  # they exist only in the int8 graph

    for speedup in (1 / 1.4, 1.1):  # slower, and barely faster
        rows = [
            pr.with_profile(factory.ok("fp32", 1.0, 0.98, 600_000, target="onnxruntime:cpu"), fp32),
            pr.with_profile(factory.ok("int8", 1.0 / speedup, 0.98, 200_000, target="onnxruntime:cpu"), int8),
        ]
        analysis = analyse(factory.run(rows), report_settings({}))
        (gap,) = analysis.operator_gaps
        assert gap.not_measured is None and {c.op_type for c in gap.grown} == set(grew)
        assert gap.delta_ms == pytest.approx(int8.total_ms - fp32.total_ms)
        page = render_html(analysis)
        panel = html.unescape(page[page.index('id="operator-gap-1"') : page.index('id="operators-table"')])
        for name, op in grew.items():
            line = re.search(rf"<code>{re.escape(name)}</code>.*?</tr>", panel, re.S)
            assert line, name
            assert f"{100 * op.share:.1f} %" in line.group(0), (name, line.group(0))
        assert ("slower than" if speedup < 1 else "only 1.10× faster than") in panel
        summary = render_summary(analysis)
        biggest = max(grew.values(), key=lambda op: op.ms - fp32_ms.get(op.op_type, 0.0))
        assert f"{biggest.op_type} (" in summary and f"{100 * biggest.share:.0f} % of int8 time" in summary


# ---- the report panels, on synthetic profiles -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_charts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The panels are tables: skip drawing the charts (seconds each on a loaded two-core box)."""
    from edgecraft.reports import charts

    monkeypatch.setattr(charts, "draw", lambda chart, subject: charts.Chart(svg="<svg></svg>"))


def _profiled_run(int8_p50: float, int8_profile: OperatorProfile = pr.INT8, fp32_profile: OperatorProfile = pr.FP32):
    return factory.run(
        [
            pr.with_profile(factory.ok("fp32", 1.0, 0.98, 400_000), fp32_profile),
            pr.with_profile(factory.ok("int8", int8_p50, 0.975, 110_000), int8_profile),
        ]
    )


def test_the_operator_panel_appears_only_for_slow_or_barely_faster_quantized_rows() -> None:
    settings = report_settings({})
    assert [g.fact.row.variant for g in analyse(_profiled_run(1.5), settings).operator_gaps] == ["int8"]
    assert [g.fact.row.variant for g in analyse(_profiled_run(1 / 1.1), settings).operator_gaps] == ["int8"]
    assert analyse(_profiled_run(1 / (BARELY_FASTER + 0.3)), settings).operator_gaps == []
    # A float variant that is slower is no int8 trap: no operator panel (the slower-than-fp32 alert still shows).
    float_run = _profiled_run(1.5, int8_profile=pr.FP32)
    assert analyse(float_run, settings).operator_gaps == []
    page = render_html(analyse(_profiled_run(1 / (BARELY_FASTER + 0.3)), settings))
    assert 'id="operators"' in page and "operator-gap" not in page


def test_the_panel_lists_grown_op_types_by_growth_with_shares() -> None:
    analysis = analyse(_profiled_run(1.5), report_settings({}))
    (gap,) = analysis.operator_gaps
    assert [(c.op_type, round(c.delta_ms, 3)) for c in gap.grown] == [
        ("QuantizeLinear", 0.8),
        ("DequantizeLinear", 0.6),
        ("Conv", 0.5),
        ("QLinearConv", 0.3),
        ("Mul", 0.15),
    ]
    assert [c.op_type for c in gap.shrunk] == ["GlobalAveragePool"]
    assert gap.grown_share == pytest.approx(1 - 0.02 / 3.82)
    page = html.unescape(render_html(analysis))
    panel = page[page.index('id="operator-gap-1"') : page.index('id="operators-table"')]
    assert "1.50× slower than fp32" in panel and "+2.330 ms" in panel
    assert (
        panel.index("<code>QuantizeLinear</code>")
        < panel.index("<code>DequantizeLinear</code>")
        < panel.index("<code>Conv</code>")
    )
    assert f"{100 * 0.8 / 3.82:.1f} %" in panel  # QuantizeLinear's share of the int8 op time
    assert "Conv ×12, Mul ×13" in panel and "DequantizeLinear ×90, QuantizeLinear ×49" in panel
    summary = render_summary(analysis)
    assert ":mag: **net · int8** on onnxruntime:cpu (0.67×" in summary and "QuantizeLinear (+0.80 ms, 21 %" in summary


def test_a_runtime_without_per_op_time_says_so_in_the_panel() -> None:
    rows = [
        pr.with_profile(
            factory.ok("fp32", 1.0, 0.98, 400_000, target="litert:cpu"), pr.untimed({"CONV_2D": 12}, quantized=False)
        ),
        pr.with_profile(
            factory.ok("int8", 1.3, 0.97, 110_000, target="litert:cpu"),
            pr.untimed({"CONV_2D": 12, "QUANTIZE": 1}, quantized=True),
        ),
    ]
    analysis = analyse(factory.run(rows), report_settings({}))
    (gap,) = analysis.operator_gaps
    assert gap.grown == [] and gap.not_measured.startswith("per-op time not measured")
    page = html.unescape(render_html(analysis))
    assert "no per-op comparison — per-op time not measured" in page
    assert "CONV_2D ×12 · QUANTIZE ×1" in page  # op counts where there is no time


def test_every_profiled_row_shows_its_top_op_types_and_the_csv_has_them(tmp_path: Path) -> None:
    results = factory.run([*_profiled_run(1.5).rows, factory.not_measured("dyn", "failed", "boom")])
    page = html.unescape(render_html(analyse(results, report_settings({}))))
    table = page[page.index('id="operators-table"') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 3  # header + two profiled rows; the failed row has none
    assert "Conv 94 % · Mul 3 % · GlobalAveragePool 3 %" in table
    assert "Conv 50 % · QuantizeLinear 21 % · DequantizeLinear 16 % · QLinearConv 8 %" in table
    assert "(float model)" in table and "Conv ×12, Mul ×13" in table
    csv = results_csv(analyse(results, report_settings({}))).splitlines()
    header = csv[0].split(",")
    int8 = dict(zip(header, csv[2].split(",")))
    assert int8["qdq_nodes"] == "139" and int8["float_ops_in_quantized_model"] == "Conv:12;Mul:13"
    assert int8["top_op_types"].startswith("Conv:0.4974;QuantizeLinear:0.2094")
    # Rows with profiles pass the schema and survive a save and load.
    check_results(results, "synthetic")
    loaded = load_results(factory.save(results, tmp_path / "run"))
    assert loaded.rows[1].measurement.operator_profile == pr.INT8


def test_older_runs_without_profiles_still_render() -> None:
    page = render_html(analyse(factory.mixed_run(), report_settings({})))
    assert "No operator profiles in this run" in page and "operator-gap" not in page


# ---- the sensitivity panel and the pass history ------------------------------------------------------------------


def test_the_sensitivity_panel_lists_the_most_sensitive_layers_and_what_stayed_float() -> None:
    results = factory.run([factory.ok("fp32", 1.0, 0.98, 400_000), factory.ok("int8", 0.6, 0.975, 110_000)])
    results = results.model_copy(update={"passes": [pr.controlled_pass(pr.accuracy_control(layers=14, kept=2))]})
    page = html.unescape(render_html(analyse(results, report_settings({}))))
    panel = page[page.index('id="sensitivity-1"') : page.index("<h3>Models</h3>")]
    assert "top-1 accuracy: fp32 97.00 % · all-int8 90.00 % · final 96.50 % against a budget of 1 pt" in panel
    assert "(floor 96.00 %)" in panel and '<span class="badge pick">met</span>' in panel
    assert "2 of 14 layers kept in float (Conv ×1, Gemm ×1)" in panel and "speed cost 1.15×" in panel
    assert panel.count('<tr><td class="num">') == 10  # the ten most sensitive, in rank order
    assert panel.index("/features/conv-0<") < panel.index("/features/conv-9<") and "/features/conv-10<" not in panel
    assert "4 less sensitive layer(s) not shown" in panel
    assert "Kept in float (f32): <code>/features/conv-0</code>, <code>/features/conv-1</code>" in panel
    assert "0 in float → 90.00 % · 2 in float → 96.50 %" in panel
    history = page[page.index('id="passes"') : page.index('id="sensitivity"')]
    assert "2 of 14 in f32 (Conv ×1, Gemm ×1)" in history and "speed cost 1.15× the all-int8 latency" in history
    check_results(results, "controlled")


def test_a_missed_budget_is_marked_in_both_places() -> None:
    results = factory.run([factory.ok("fp32", 1.0, 0.98, 400_000)])
    results = results.model_copy(update={"passes": [pr.controlled_pass(pr.accuracy_control(kept=3, met=False))]})
    page = html.unescape(render_html(analyse(results, report_settings({}))))
    assert '<span class="badge trap">not met</span>' in page and "budget missed" in page
