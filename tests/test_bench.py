"""The harness: statistics from known samples, the phase and round logic with a fake clock and a fake worker, and
measurements in fresh processes that fail cleanly, one job at a time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import edgecraft.bench.harness as harness
from edgecraft.bench import evaluators
from edgecraft.bench.environment import machine_warnings
from edgecraft.bench.evaluators import EvaluatorSpec, evaluate
from edgecraft.bench.harness import (
    MeasureJob,
    MeasurementFailed,
    RemoteMeasure,
    fidelity,
    measure,
    measure_all,
    noise_warnings,
    remote_devices,
    round_orders,
)
from edgecraft.bench.settings import BenchmarkSpec, parse_cpus, profile_settings, resolve
from edgecraft.bench.stats import coefficient_of_variation, latency_stats, median_ci
from edgecraft.bench.worker import run_phase
from edgecraft.core.results import Throughput
from edgecraft.reports.analysis import analyse
from edgecraft.reports.settings import ReportSettings
from edgecraft.targets import feeds
from tests.conftest import REPO, images, labels, onnx_logits
from tests.results_factory import ok, run, worker_raw

THIS_CPU = sorted(os.sched_getaffinity(0))[:1]
QUICK = profile_settings("quick", batch_sizes=[1, 4], timeout_s=120)


# --- statistics -----------------------------------------------------------------------------------------------------


def test_percentiles_of_known_samples() -> None:
    stats = latency_stats(np.arange(1, 101, dtype=float))  # 1..100 ms
    assert stats.runs == 100 and stats.min == 1 and stats.max == 100 and stats.mean == 50.5
    # numpy's linear interpolation (Hyndman & Fan type 7): rank (n-1)·q → 1 + 99·q
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p95 == pytest.approx(95.05)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.iqr == pytest.approx(75.25 - 25.75)
    assert stats.std == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    assert stats.repetition_p50 == [50.5] and stats.cv_across_repetitions is None


def test_median_ci_brackets_the_median_and_narrows_with_more_samples() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.normal(10, 1, 50), rng.normal(10, 1, 5000)
    low, high = median_ci(small)
    assert low <= np.median(small) <= high
    large_low, large_high = median_ci(large)
    assert large_high - large_low < high - low
    assert large_low < 10 < large_high
    assert median_ci(small) == median_ci(small)  # seeded: reports are reproducible


def test_median_ci_matches_the_asymptotic_width() -> None:
    """For n normal samples the median's standard error is sqrt(pi/2)·sigma/sqrt(n): the 95 % CI is ±1.96 of it."""
    samples = np.random.default_rng(2).normal(5, 1, 10_000)
    low, high = median_ci(samples)
    expected = 1.96 * np.sqrt(np.pi / 2) / np.sqrt(samples.size)
    assert (high - low) / 2 == pytest.approx(expected, rel=0.15)


def test_constant_samples_have_a_zero_width_interval() -> None:
    stats = latency_stats(np.full(20, 3.0))
    assert stats.p50_ci95 == (3.0, 3.0) and stats.std == 0 and stats.iqr == 0


def test_repetitions_headline_is_the_median_of_medians_with_a_ci_over_processes() -> None:
    rng = np.random.default_rng(3)
    groups = [rng.normal(centre, 0.05, 400) for centre in (10.0, 11.0, 14.0)]
    stats = latency_stats(groups)
    assert stats.runs == 1200
    assert stats.repetition_p50 == pytest.approx([10, 11, 14], abs=0.02)
    assert stats.p50 == pytest.approx(11, abs=0.02)  # not the pooled median, which the 14 ms process would pull up
    assert stats.cv_across_repetitions == pytest.approx(np.std([10, 11, 14], ddof=1) / np.mean([10, 11, 14]), rel=0.01)
    # Resampling processes: the CI spans the processes' medians, far wider than the within-process one.
    assert stats.p50_ci95[0] < 10.1 and stats.p50_ci95[1] > 13.9
    pooled_low, pooled_high = median_ci(np.concatenate(groups))
    assert pooled_high - pooled_low < 0.2


def test_coefficient_of_variation() -> None:
    assert coefficient_of_variation([1.0, 2.0, 3.0]) == pytest.approx(0.5)
    assert coefficient_of_variation([4.0]) is None


def test_fidelity_of_identical_and_shifted_outputs() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    same = fidelity({"logits": a}, {"logits": a})
    assert same.top1_agreement == 1 and same.max_abs_diff == 0 and same.outputs["logits"].snr_db is None
    flipped = fidelity({"logits": a[::-1]}, {"logits": a})
    assert flipped.top1_agreement == 0 and flipped.max_abs_diff == 1


def test_outputs_that_are_not_finite_fail_the_row_and_a_zero_reference_has_no_snr() -> None:
    """``nan > tolerance`` is false: a NaN output must fail the row rather than pass every drift check."""
    reference = {"logits": np.ones((4, 3), np.float32)}
    broken = reference["logits"].copy()
    broken[1, 2] = np.nan
    with pytest.raises(MeasurementFailed, match="'logits' holds 1 NaN or infinite value"):
        fidelity({"logits": broken}, reference)
    zeros = {"logits": np.zeros((4, 3), np.float32)}
    assert fidelity({"logits": np.full((4, 3), 0.5, np.float32)}, zeros).outputs["logits"].snr_db is None


def test_fidelity_covers_every_output_by_name() -> None:
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    scores = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]], np.float32)
    reference = {"scores": scores, "boxes": boxes}
    outputs = {"boxes": boxes + 0.5, "scores": scores}  # another order: matched by name, not position
    result = fidelity(outputs, reference)
    assert result.top1_agreement == 1  # from the first reference output, the scores
    assert result.outputs["scores"].max_abs_diff == 0 and result.outputs["boxes"].max_abs_diff == 0.5
    assert result.max_abs_diff == 0.5 and result.mean_abs_diff == pytest.approx(0.5 * 12 / 18)
    assert result.outputs["boxes"].snr_db == pytest.approx(10 * np.log10((boxes**2).sum() / (0.25 * 12)))
    with pytest.raises(MeasurementFailed, match=r"no output\(s\) \['scores'\]"):
        fidelity({"boxes": boxes}, reference)
    with pytest.raises(MeasurementFailed, match="output 'boxes' has shape"):
        fidelity({"boxes": boxes[:2], "scores": scores}, reference)


# --- settings -------------------------------------------------------------------------------------------------------


def test_profiles_recipe_overrides_and_command_line_profile() -> None:
    spec = BenchmarkSpec(profile="rigorous", runs=5000, threads=2, pin_cpus=[0])
    settings = resolve(spec)
    assert (settings.profile, settings.runs, settings.repetitions, settings.threads) == ("rigorous", 5000, 5, 2)
    quick = resolve(spec, "quick")  # --quick is quick even when the recipe set phase lengths; threads and pins stay
    assert (quick.profile, quick.runs, quick.repetitions, quick.threads, quick.pin_cpus) == ("quick", 20, 1, 2, [0])
    assert resolve(BenchmarkSpec(), pin_cpus=[1]).pin_cpus == [1]
    # The command line passes None for options it was not given: the recipe's threads and pins must stay.
    unset = resolve(spec, None, pin_cpus=None, threads=None)
    assert (unset.threads, unset.pin_cpus) == (2, [0])


def test_inconsistent_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_runs"):
        profile_settings("quick", runs=50_000)
    with pytest.raises(ValueError, match="batch_sizes"):
        profile_settings("quick", batch_sizes=[0])


def test_cpu_lists() -> None:
    assert parse_cpus("1") == [1] and parse_cpus("0,2") == [0, 2] and parse_cpus("2-4,0") == [0, 2, 3, 4]
    with pytest.raises(ValueError, match="CPU numbers"):
        parse_cpus("one")


# --- phases and rounds, without a clock or a runtime ------------------------------------------------------------------


class FakeClock:
    """Each call of the measured function takes ``step_ns`` of fake time; reading the clock takes none."""

    def __init__(self, step_ns: int) -> None:
        self.now, self.step = 0, step_ns

    def __call__(self) -> int:
        return self.now

    def call(self, _index: int) -> None:
        self.now += self.step


@pytest.mark.parametrize(
    ("min_runs", "min_s", "max_runs", "max_s", "expected_runs", "stopped_by"),
    [
        (10, 0.05, 10_000, 10.0, 50, "minimums"),  # the duration binds: 50 × 1 ms
        (100, 0.01, 10_000, 10.0, 100, "minimums"),  # the count binds
        (100, 0.0, 30, 10.0, 30, "max_runs"),  # capped below the minimum count
        (100, 0.0, 10_000, 0.02, 20, "max_s"),  # capped by time below the minimum count
        (0, 0.0, 10, 1.0, 0, "minimums"),  # no warm-up at all
    ],
)
def test_a_phase_runs_until_both_minimums_or_a_cap(min_runs, min_s, max_runs, max_s, expected_runs, stopped_by) -> None:
    clock = FakeClock(1_000_000)
    samples, elapsed, why = run_phase(clock.call, min_runs, min_s, max_runs, max_s, clock=clock)
    assert (len(samples), why) == (expected_runs, stopped_by)
    assert samples == [1_000_000] * expected_runs and elapsed == expected_runs * 1_000_000


def test_rounds_are_seeded_shuffles() -> None:
    orders = round_orders(6, 4, seed=7)
    assert orders == round_orders(6, 4, seed=7)
    assert all(sorted(order) == list(range(6)) for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # not the same order every round
    assert orders != round_orders(6, 4, seed=8)


def fake_job(tmp_path: Path, name: str) -> MeasureJob:
    work_dir = tmp_path / name
    work_dir.mkdir()
    np.savez(work_dir / "outputs.npz", logits=np.eye(4, dtype=np.float32))
    spec = EvaluatorSpec(type="classification")
    reference = {"logits": np.eye(4, dtype=np.float32)}
    return MeasureJob(
        "fake",
        "cpu",
        {},
        Path(name),
        Path("inputs"),
        reference,
        lambda outputs: evaluate(spec, outputs, reference, np.arange(4)),
        work_dir,
    )


def test_rounds_interleave_jobs_and_a_failed_job_is_not_retried(tmp_path: Path, monkeypatch) -> None:
    jobs = [fake_job(tmp_path, name) for name in ("a", "crash", "c")]
    calls = []

    def fake_process(job: MeasureJob, settings, repetition: int) -> dict:
        calls.append((job.model.name, repetition))
        if job.model.name == "crash":
            raise MeasurementFailed("benchmark process exited with code 1: boom")
        return worker_raw({"a": 1.0, "c": 2.0}[job.model.name] + repetition)

    monkeypatch.setattr(harness, "run_process", fake_process)
    settings = profile_settings("default", repetitions=3, seed=5)
    outcomes = measure_all(jobs, settings)

    names = [job.model.name for job in jobs]
    expected = [(names[i], r) for r, order in enumerate(round_orders(3, 3, 5)) for i in order]
    crash_round = next(r for name, r in expected if name == "crash")
    assert calls == [(name, r) for name, r in expected if name != "crash" or r == crash_round]
    assert isinstance(outcomes[1], MeasurementFailed)
    assert str(outcomes[1]) == f"repetition {crash_round + 1} of 3: benchmark process exited with code 1: boom"

    a = outcomes[0]
    assert a.latency_ms.repetition_p50 == [1.0, 2.0, 3.0] and a.latency_ms.p50 == 2.0
    assert [r.index for r in a.repetitions] == [0, 1, 2]
    assert [r.order for r in a.repetitions] == [order.index(0) for order in round_orders(3, 3, 5)]
    assert len(a.samples_ms) == 63 and a.accuracy == 1.0 and a.fidelity.max_abs_diff == 0
    assert [s.peak_over_import_mb for s in a.memory] == [-20, 0, 10, 10.5, 11, 12]
    assert (a.model_memory_mb, a.runtime_import_mb, a.process_peak_mb) == (12, 20, 72)
    assert a.throughput[0].items_per_s == pytest.approx(np.median([1000 / 1, 1000 / 2, 1000 / 3]))
    assert a.throughput[1].items_per_s is None and a.throughput[1].error == "RuntimeError: fixed batch"


def test_remote_devices_are_measured_side_by_side_each_one_job_at_a_time(tmp_path: Path) -> None:
    """The first jobs of two devices meet at a barrier (measured one after the other, they would wait there until it
    breaks); the two jobs of one device never overlap; a device link that raises fails its own row alone."""
    meeting = threading.Barrier(2, timeout=30)
    running = {"pi": 0, "jetson": 0}

    def device(name: str) -> RemoteMeasure:
        def measure(job: MeasureJob, settings) -> list[dict]:
            running[name] += 1
            try:
                assert running[name] == 1, f"two jobs at once on {name}"
                if job.model.name.endswith("-1"):
                    meeting.wait()
                return [worker_raw(1.0) | {"index": 0, "order": 0}]
            finally:
                running[name] -= 1

        return RemoteMeasure(name, measure)

    def broken(job: MeasureJob, settings) -> list[dict]:
        raise ZeroDivisionError("division by zero")

    remotes = {
        "pi-1": device("pi"),
        "jetson-1": device("jetson"),
        "pi-2": device("pi"),
        "x": RemoteMeasure("x", broken),
    }
    jobs = [dataclasses.replace(fake_job(tmp_path, name), remote=remote) for name, remote in remotes.items()]
    assert remote_devices(jobs) == {"pi": [0, 2], "jetson": [1], "x": [3]}
    *measured, failed = measure_all(jobs, profile_settings("default", repetitions=3))
    assert all(m.latency_ms.runs == 21 for m in measured), measured
    assert str(failed) == "device x: ZeroDivisionError: division by zero"


def test_memory_is_the_median_over_repetitions_per_phase(tmp_path: Path, monkeypatch) -> None:
    memories = iter([(40, 60, 70, 75, 80, 90), (41, 62, 75, 75, 76, 77), (39, 61, 71, 72, 79, 95)])
    monkeypatch.setattr(harness, "run_process", lambda job, settings, repetition: worker_raw(1.0, next(memories)))
    m = measure_all([fake_job(tmp_path, "a")], profile_settings("default", repetitions=3))[0]
    assert [s.peak_mb for s in m.memory] == [40, 61, 71, 75, 79, 90]


def test_noise_warnings(tmp_path: Path, monkeypatch) -> None:
    steady = iter([1.0, 1.01, 0.99])
    monkeypatch.setattr(harness, "run_process", lambda job, settings, repetition: worker_raw(next(steady)))
    settings = profile_settings("default", repetitions=3)
    quiet = measure_all([fake_job(tmp_path, "a")], settings)[0]
    assert noise_warnings(quiet, settings) == []

    wild = iter([1.0, 1.5, 0.7])

    def noisy(job, settings, repetition):
        raw = worker_raw(next(wild))
        return raw | {"stopped_by": "max_s", "steal_fraction": 0.1} if repetition == 2 else raw

    monkeypatch.setattr(harness, "run_process", noisy)
    warnings = " | ".join(noise_warnings(measure_all([fake_job(tmp_path, "b")], settings)[0], settings))
    assert "CI of the median" in warnings and "repetitions' medians vary" in warnings
    assert "max_s cap" in warnings and "stole up to 10.0 %" in warnings


def test_cost_per_million_for_every_throughput_configuration() -> None:
    row = ok("fp32", 1.0, 0.98, 1000)
    row.measurement.throughput = [
        Throughput(batch_size=8, parallel=2, items_per_s=4000.0, batch_latency_ms=4.0),
        Throughput(batch_size=32, parallel=1, error="fixed batch"),
    ]
    facts = analyse(run([row]), ReportSettings(price_per_hour=3.6)).facts[0]
    assert facts.throughput[0].cost_per_million == pytest.approx(3.6 / 3600 / 4000 * 1e6)  # 0.25 per 1M
    assert facts.throughput[1].cost_per_million is None
    assert analyse(run([row]), ReportSettings()).facts[0].throughput[0].cost_per_million is None


# --- real processes ---------------------------------------------------------------------------------------------------


@pytest.fixture
def digits_job(digits_cnn: dict, tmp_path: Path):
    x, y = images(digits_cnn["splits"]), labels(digits_cnn["splits"])
    inputs = feeds.save({"input": x}, tmp_path / "inputs")
    reference = {"logits": onnx_logits(digits_cnn["onnx"].path, x)}
    spec = EvaluatorSpec(type="classification")

    def job(model: Path = digits_cnn["onnx"].path, name: str = "bench") -> MeasureJob:
        return MeasureJob(
            "onnxruntime",
            "cpu",
            {},
            model,
            inputs,
            reference,
            lambda outputs: evaluate(spec, outputs, reference, y),
            tmp_path / name,
        )

    job.labels = y
    return job


def test_measure_in_fresh_processes(digits_job) -> None:
    settings = QUICK.model_copy(update={"repetitions": 2, "pin_cpus": THIS_CPU, "parallel_requests": [1, 2]})
    m = measure(digits_job(), settings)
    assert len(m.repetitions) == 2 and len(m.latency_ms.repetition_p50) == 2
    for repetition in m.repetitions:
        assert repetition.stopped_by == "minimums"
        assert repetition.runs >= settings.runs and repetition.measure_s >= settings.measure_s
        assert repetition.warmup_runs >= settings.warmup_runs and repetition.warmup_s >= settings.warmup_s
        assert repetition.cpus == THIS_CPU  # pinned, and recorded from the child's own affinity
    assert m.latency_ms.runs == len(m.samples_ms) == sum(r.runs for r in m.repetitions)
    assert 0 < m.latency_ms.min <= m.latency_ms.p50 <= m.latency_ms.p99 <= m.latency_ms.max
    assert m.load_s > 0 and m.first_inference_ms > 0 and m.import_s > 0
    assert m.accuracy == pytest.approx(
        float((digits_job().reference_outputs["logits"].argmax(1) == digits_job.labels).mean())
    )
    assert m.quality.evaluator == "classification" and m.quality.metric == "top-1 accuracy"
    assert m.fidelity.top1_agreement == 1 and m.fidelity.max_abs_diff < 1e-4
    assert m.runtime_info["providers"] == ["CPUExecutionProvider"] and m.runtime_info["intra_op_threads"] == 1
    assert [(t.batch_size, t.parallel) for t in m.throughput] == [(1, 1), (4, 1), (1, 2), (4, 2)]
    assert all(t.error is None and t.items_per_s > 0 and t.batch_latency_ms > 0 for t in m.throughput)


def test_memory_of_the_child_is_positive_and_monotone_over_phases(digits_job) -> None:
    m = measure(digits_job(), QUICK)
    assert [s.phase for s in m.memory] == ["start", "import", "load", "first_inference", "warmup", "end"]
    peaks = [s.peak_mb for s in m.memory]
    assert all(peak > 0 for peak in peaks) and peaks == sorted(peaks)  # a high-water mark never falls
    assert m.memory[1].peak_mb > m.memory[0].peak_mb  # importing the runtime costs memory
    assert [s.peak_over_import_mb >= 0 for s in m.memory] == [False, True, True, True, True, True]
    for snapshot in m.memory:  # Linux splits resident memory into anonymous and file-backed
        assert snapshot.anon_mb > 0 and snapshot.file_mb > 0
        assert snapshot.anon_mb + snapshot.file_mb <= snapshot.rss_mb + 1  # + shared memory, rounding
    # The child alone (not the parent's torch): well under torch's size.
    assert 0 < m.runtime_import_mb and 0 < m.model_memory_mb < m.process_peak_mb < 400
    assert m.model_memory_mb == m.memory[-1].peak_over_import_mb


def test_samples_read_from_the_file_equal_the_saved_arrays(tmp_path: Path) -> None:
    arrays = {"pixels": np.arange(120, dtype=np.float32).reshape(5, 2, 3, 4), "ids": np.arange(10).reshape(5, 2)}
    folder = feeds.save(arrays, tmp_path / "inputs")
    for start, stop in ((0, 1), (1, 3), (4, 9)):
        read = feeds.read(folder, start, stop)
        assert all(np.array_equal(read[name], array[start:stop]) for name, array in arrays.items())
        assert not any(isinstance(array, np.memmap) for array in read.values())  # fresh arrays, no mapped pages
    assert feeds.sample_bytes(feeds.load(folder)) == 2 * 3 * 4 * 4 + 2 * 8


def test_model_memory_does_not_grow_with_the_evaluation_set(digits_cnn: dict, tmp_path: Path) -> None:
    """The worker maps the evaluation inputs and reads a ring of samples, and its throughput and accuracy passes
    come after the last memory reading: 50 or 500 evaluation samples, the model memory is the same."""
    x = images(digits_cnn["splits"])
    figures = {}
    for count in (50, 500):
        chosen = np.resize(x, (count, *x.shape[1:]))
        reference = {"logits": onnx_logits(digits_cnn["onnx"].path, chosen)}
        inputs = feeds.save({"input": chosen}, tmp_path / f"inputs-{count}")
        job = MeasureJob(
            "onnxruntime",
            "cpu",
            {},
            digits_cnn["onnx"].path,
            inputs,
            reference,
            lambda outputs: evaluators.not_measured(None, "not scored"),
            tmp_path / f"bench-{count}",
        )
        figures[count] = measure(job, QUICK).model_memory_mb
    assert abs(figures[500] - figures[50]) <= 2.0, figures


def test_the_worker_imports_neither_torch_nor_tensorflow() -> None:
    """What ``bench.worker`` imports before and while it runs ONNX Runtime, in a fresh interpreter: of edgecraft
    only the core, the targets and the harness (the package's own ``__init__`` is import-free)."""
    code = (
        "import sys, importlib, edgecraft.bench.worker; from edgecraft.targets import registry; "
        "importlib.import_module(registry.get('onnxruntime').python_module); registry.runtimes(); "
        "print(sorted(m for m in sys.modules if m in ('torch', 'tensorflow') or m.startswith('edgecraft.') "
        "and m.split('.')[1] not in ('core', 'targets', 'bench')))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_a_crashing_runtime_becomes_a_reason(digits_job, tmp_path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a model")
    with pytest.raises(MeasurementFailed, match=r"exited with code 1: .*(INVALID_PROTOBUF|Protobuf|protobuf)"):
        measure(digits_job(broken), QUICK)


def test_crashing_and_hanging_jobs_fail_alone(digits_job, tmp_path) -> None:
    """A model that crashes the runtime and one that hangs it (loading from a pipe nobody writes to) each give a
    failure with the reason; the good job between them is measured in every round."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a model")
    hanging = tmp_path / "hanging.onnx"
    os.mkfifo(hanging)
    # The limit also covers the good job's whole process (interpreter start, imports) on a loaded 2-core box:
    # generous enough for that, short enough that the hang costs little.
    settings = QUICK.model_copy(update={"repetitions": 2, "timeout_s": 20})
    jobs = [digits_job(broken, "broken"), digits_job(name="good"), digits_job(hanging, "hanging")]
    crashed, good, hung = measure_all(jobs, settings)
    assert isinstance(crashed, MeasurementFailed) and "exited with code 1" in str(crashed)
    assert isinstance(hung, MeasurementFailed) and "timed out after 20 s" in str(hung)
    assert len(good.repetitions) == 2 and good.latency_ms.runs >= 2 * settings.runs


def test_machine_warnings() -> None:
    quiet = {"logical_cores": 2, "usable_cores": 1, "load_average": [1.6, 1.0, 1.0], "governor": "performance"}
    assert machine_warnings(quiet) == []  # one busy core of two, while this process may use only one: fine
    busy = machine_warnings({"logical_cores": 2, "load_average": [3.5, 2.0, 1.0], "governor": "powersave"})
    assert "governor is 'powersave'" in busy[0] and "load average 3.5 exceeds the 2 cores" in busy[1]
    assert machine_warnings({"logical_cores": 2}) == []  # nothing readable, nothing claimed


def test_a_garbage_result_file_fails_only_its_own_job(digits_job, monkeypatch) -> None:
    """A worker that exits 0 but leaves a truncated or nonsensical result file fails its own row alone."""
    import edgecraft.bench.harness as harness

    real_run = harness.subprocess.run

    def garbage_for_one_job(command, **kwargs):
        completed = real_run(command, **kwargs)
        job = json.loads(Path(command[-1]).read_text())
        name = Path(job["result"]).parts[-3]  # WORK_DIR/repetition-N/result.json
        if name == "garbage":
            Path(job["result"]).write_text('{"samples_ms": [1.0, ')
        elif name == "nonsense":
            Path(job["result"]).write_text(
                json.dumps({**json.loads(Path(job["result"]).read_text()), "samples_ms": [0.0, float("nan")]})
            )
        return completed

    monkeypatch.setattr(harness.subprocess, "run", garbage_for_one_job)
    garbage, good, nonsense = measure_all(
        [digits_job(name="garbage"), digits_job(name="good"), digits_job(name="nonsense")], QUICK
    )
    assert isinstance(garbage, MeasurementFailed) and "unreadable result file result.json" in str(garbage)
    assert str(nonsense) == (
        "the benchmark process's result file result.json: samples_ms.0: Input should be greater than 0; "
        "samples_ms.1: Input should be a finite number"
    )
    assert good.latency_ms.runs >= QUICK.runs
