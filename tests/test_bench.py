"""The harness: statistics from known samples, and measurements in a fresh process that fail cleanly."""

from __future__ import annotations

import numpy as np
import pytest

from bench.harness import BenchSettings, MeasurementFailed, fidelity, measure
from bench.stats import latency_stats, median_ci
from tests.conftest import onnx_logits

QUICK = BenchSettings(warmup_runs=2, runs=25, timeout_s=120)


def test_percentiles_of_known_samples() -> None:
    stats = latency_stats(np.arange(1, 101, dtype=float))  # 1..100 ms
    assert stats.runs == 100 and stats.min == 1 and stats.max == 100 and stats.mean == 50.5
    # numpy's linear interpolation: rank (n-1)·q → 1 + 99·q
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p95 == pytest.approx(95.05)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.std == pytest.approx(np.std(np.arange(1, 101), ddof=1))


def test_median_ci_brackets_the_median_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.normal(10, 1, 50), rng.normal(10, 1, 5000)
    low, high = median_ci(small)
    assert low <= np.median(small) <= high
    large_low, large_high = median_ci(large)
    assert large_high - large_low < high - low
    assert large_low < 10 < large_high
    assert median_ci(small) == median_ci(small)  # seeded: reports are reproducible


def test_constant_samples_have_a_zero_width_interval() -> None:
    stats = latency_stats(np.full(20, 3.0))
    assert stats.p50_ci95 == (3.0, 3.0) and stats.std == 0


def test_fidelity_of_identical_and_shifted_outputs() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    same = fidelity(a, a)
    assert same.top1_agreement == 1 and same.max_abs_diff == 0
    flipped = fidelity(a[::-1], a)
    assert flipped.top1_agreement == 0 and flipped.max_abs_diff == 1


def test_measure_in_a_fresh_process(digits_cnn: dict, tmp_path) -> None:
    x, y = digits_cnn["splits"].evaluation
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, x)
    reference = onnx_logits(digits_cnn["onnx"].path, x)
    m = measure("onnxruntime", "cpu", {}, digits_cnn["onnx"].path, inputs, y, reference, QUICK, tmp_path / "bench")
    assert m.latency_ms.runs == 25
    assert 0 < m.latency_ms.min <= m.latency_ms.p50 <= m.latency_ms.p99 <= m.latency_ms.max
    assert m.load_s > 0 and m.first_inference_ms > 0 and m.import_s > 0
    # Memory of the child alone (not the parent's torch): positive, monotone over phases, well under torch's size.
    assert 0 < m.rss_after_import_mb <= m.rss_after_load_mb <= m.peak_rss_mb < 400
    assert m.accuracy == pytest.approx(float((reference.argmax(1) == y).mean()))
    assert m.fidelity.top1_agreement == 1 and m.fidelity.max_abs_diff < 1e-4
    assert m.runtime_info["providers"] == ["CPUExecutionProvider"]


def test_a_crashing_runtime_becomes_a_reason(digits_cnn: dict, tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a model")
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, digits_cnn["splits"].evaluation[0][:4])
    with pytest.raises(MeasurementFailed, match="exited with code 1: .*(INVALID_PROTOBUF|Protobuf|protobuf)"):
        measure("onnxruntime", "cpu", {}, broken, inputs, np.zeros(4), np.zeros((4, 10)), QUICK, tmp_path / "b")


def test_a_hanging_measurement_times_out(digits_cnn: dict, tmp_path) -> None:
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, digits_cnn["splits"].evaluation[0])
    slow = BenchSettings(warmup_runs=0, runs=10_000_000, timeout_s=3)
    with pytest.raises(MeasurementFailed, match="timed out after 3 s"):
        measure("onnxruntime", "cpu", {}, digits_cnn["onnx"].path, inputs, np.zeros(1), np.zeros((1, 10)), slow, tmp_path / "b")
