"""The MobileNetV3-Small-style net at 224×224 through the real command line on every runtime: where ONNX Runtime's
static int8 is slower than fp32 (or barely faster), the report names the op types that made it so; and some int8
variant of the same net is faster than its fp32 on its runtime. A performance claim, so slow-marked: the ratios
come from one run, fp32 and int8 interleaved in the same rounds. Prints the measured figures."""

from __future__ import annotations

import html
from pathlib import Path

import pytest

from edgecraft.reports.analysis import BARELY_FASTER, analyse
from edgecraft.reports.results_file import load_results
from edgecraft.reports.settings import report_settings
from tests.conftest import edgecraft

pytestmark = pytest.mark.slow

RECIPE = """name: mobilenet-v3-int8
models:
  - factory: tests.fixtures_models:mobilenet_v3_small_like
    name: mnv3
    outputs: [logits]
    evaluator: agreement
data:
  source: tests.fixtures_models:mobilenet_v3_dataset
  splits: {train: 0.0, calibration: 0.5, evaluation: 0.5}
variants:
  - name: fp32
  - name: int8
    passes: [{type: quantize.static}]
  - name: ov-int8
    passes: [{type: quantize.nncf}]
  - name: tflite
    passes: [{type: convert.tflite}]
  - name: tflite-int8
    passes: [{type: convert.tflite, quantization: int8}]
targets: [onnxruntime:cpu, openvino:cpu, litert:cpu]
benchmark: {profile: quick, repetitions: 3, runs: 100, measure_s: 0.5, batch_sizes: [1], throughput_s: 0.1}
"""


def test_mobilenet_v3_int8_on_every_runtime(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    completed = edgecraft("run", recipe, "--output-dir", tmp_path / "runs")
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = load_results(run_dir)
    analysis = analyse(results, report_settings(results.recipe))
    facts = {(f.row.variant, f.row.target): f for f in analysis.facts}
    for key, fact in sorted(facts.items()):
        m = fact.row.measurement
        assert fact.row.status == "ok", (key, fact.row.reason)
        p = m.operator_profile
        print(
            f"{key[0]:<12} {key[1]:<16} p50 {m.latency_ms.p50:.3f} ms  speed-up vs fp32 "
            f"{'baseline' if fact.speedup is None else f'{fact.speedup:.2f}x'}  top ops: "
            + ", ".join(
                f"{op.op_type} {100 * op.share:.0f}%" if op.share is not None else f"{op.op_type} x{op.nodes}"
                for op in p.top(4)
            )
            + f"  Q/DQ {sum(p.qdq_nodes.values())}  float ops {p.float_ops}"
        )
    page = html.unescape((run_dir / "report.html").read_text())

    ort_int8 = facts[("int8", "onnxruntime:cpu")]
    assert ort_int8.row.measurement.operator_profile.quantized
    if ort_int8.speedup < BARELY_FASTER:
        gap = next(g for g in analysis.operator_gaps if g.fact is ort_int8)
        assert gap.grown and gap.not_measured is None
        panel = page[page.index('id="operator-gap-') : page.index('id="operators-table"')]
        for change in gap.grown:
            assert f"<code>{change.op_type}</code>" in panel and f"{100 * change.share:.1f} %" in panel
        print(
            "ORT int8 panel, op types whose time grew: "
            + ", ".join(f"{c.op_type} {c.delta_ms:+.3f} ms ({100 * c.share:.1f} % of int8 time)" for c in gap.grown)
        )

    # Some int8 variant of the same net beats its own runtime's fp32, in the same interleaved rounds.
    int8_rows = [f for (variant, _), f in facts.items() if variant in ("int8", "ov-int8", "tflite-int8")]
    best = max(int8_rows, key=lambda f: f.speedup or 0)
    figures = f"{best.row.variant} on {best.row.target} {best.speedup:.2f}x"
    print(f"fastest int8 variant vs its fp32: {figures}")
    if best.speedup <= 1.0 and not _int8_dot_product():
        # An AVX2-only CPU (e.g. the AMD EPYC these tests were written on) has no 8-bit dot-product instruction:
        # int8 kernels cannot beat fp32 much there, and the result is recorded rather than hidden.
        pytest.xfail(f"no int8 variant beat fp32 on a CPU without VNNI / AMX / dot-product: best {figures}")
    assert best.speedup > 1.0, figures


def _int8_dot_product() -> bool:
    """Whether this CPU has an 8-bit dot-product instruction (x86 VNNI or AMX-INT8, Arm dot-product)."""
    from edgecraft.core.cpu import cpu_info

    flags = set(cpu_info().get("flags") or [])
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "dotprod"})
