"""MLPerf's scenarios through LoadGen (``bench.scenarios``), from the command line, judged by LoadGen's own logs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edgecraft.bench.scenarios import read_detail_log
from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft, images, labels

pytest.importorskip("mlperf_loadgen")

SCENARIOS = ["single_stream", "multi_stream", "offline", "server"]


def test_every_scenario_runs_through_loadgen_on_two_runtimes_with_its_logs(digits_cnn: dict, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, inputs=images(digits_cnn["splits"])[:64], labels=labels(digits_cnn["splits"])[:64])
    args = [f"--scenario={name}" for name in SCENARIOS]
    completed = edgecraft(
        "bench",
        digits_cnn["onnx"].path,
        "--inputs",
        data,
        "--target",
        "onnxruntime:cpu",
        "--target",
        "openvino:cpu",
        *args,
        "--price-per-hour",
        "3.6",
        "--quick",
        "--output-dir",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip()).parent
    results = load_results(run_dir)
    assert results.benchmark["scenarios"] == SCENARIOS
    for row in results.rows:
        assert row.status == "ok", row.reason
        by_name = {result.scenario: result for result in row.measurement.scenarios}
        assert sorted(by_name) == sorted([*SCENARIOS, "accuracy"])
        # LoadGen's accuracy run over every sample, its logged outputs scored by the row's evaluator, agrees with
        # the harness's accuracy pass on the same data.
        accuracy = by_name.pop("accuracy")
        assert (Path(accuracy.log_dir) / "mlperf_log_accuracy.json").stat().st_size > 0 and accuracy.queries == 64
        assert accuracy.headline == "top-1 accuracy" and accuracy.harness_value == row.measurement.accuracy
        assert accuracy.value == pytest.approx(row.measurement.accuracy, abs=1 / 64)
        for name, result in by_name.items():
            # What the row says is what LoadGen wrote: VALID, the headline, the query count, in its own log.
            log = read_detail_log(Path(result.log_dir) / "mlperf_log_detail.txt")
            assert result.valid and log["result_validity"] == "VALID", (name, result.invalid_reason)
            assert result.value and result.value > 0 and result.queries == log["result_query_count"]
            assert (Path(result.log_dir) / "mlperf_log_summary.txt").exists()
        # MultiStream's queries hold 8 samples; early stopping needs LoadGen's 662 queries at the 99th percentile.
        assert by_name["multi_stream"].queries >= 662 and by_name["multi_stream"].headline.startswith("p99")
        assert by_name["single_stream"].headline.startswith("p90")
        assert log_setting(by_name["multi_stream"].log_dir, "effective_samples_per_query") == 8
        # Server: the highest VALID rate the bisection tried, at or below the requests' capacity.
        server = by_name["server"]
        assert server.probes and server.target_qps == max(probe.target_qps for probe in server.probes if probe.valid)
        assert log_setting(server.log_dir, "effective_target_latency_ns") == 15_000_000
        assert server.percentiles_ms["p99"] <= 15
    html = (run_dir / "report.html").read_text()
    assert 'id="scenarios-table"' in html and "VALID" in html and 'id="chart-server"' in html
    # A service is priced at the rate it sustains within its latency bound: the Server QPS, not 1 / latency.
    with open(run_dir / "results.csv") as handle:
        costs = {row["target"]: float(row["cost_per_1m_predictions"]) for row in csv.DictReader(handle)}
    for row in results.rows:
        server = next(result for result in row.measurement.scenarios if result.scenario == "server")
        assert costs[row.target] == pytest.approx(3.6 / 3600 / server.value * 1e6, rel=1e-3)


def log_setting(log_dir: str | None, key: str) -> object:
    assert log_dir is not None
    return read_detail_log(Path(log_dir) / "mlperf_log_detail.txt")[key]


def test_a_stateful_model_says_why_loadgen_does_not_run_it(tmp_path: Path) -> None:
    """LoadGen's queries are independent samples; a model that feeds its state from one call to the next is not."""
    from edgecraft.bench.worker import _scenarios
    from edgecraft.targets import feeds

    layout = feeds.Layout(state_from={"state": "next_state"})
    results = _scenarios({"scenarios": ["server"]}, None, [], lambda: None, layout, 1.0, [])
    assert results == [
        {
            "scenario": "server",
            "not_measured": "not measured (a stateful model runs one stream in order, and LoadGen's queries are "
            "independent samples)",
        }
    ]


INVALID_RECIPE = """\
name: invalid-server
models:
  - builtin: digits-cnn
variants:
  - name: fp32
targets: [onnxruntime:cpu]
benchmark:
  operator_profile: false
  batch_sizes: [1]
  scenarios: [server]
  server: {target_latency_ms: 0.001, search_runs: 2}   # 1 µs at the 99th percentile: no model meets it
"""


def test_an_invalid_scenario_is_reported_with_loadgens_reason_and_fails_the_compare_gate(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(INVALID_RECIPE)
    completed = edgecraft("run", recipe, "--quick", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    (row,) = load_results(run_dir).rows
    server, accuracy = row.measurement.scenarios  # and LoadGen's accuracy run, always beside the scenarios
    assert accuracy.scenario == "accuracy" and accuracy.valid
    assert server.valid is False and len(server.probes) == 2 and not any(probe.valid for probe in server.probes)
    assert "latency bound not met" in server.invalid_reason
    assert read_detail_log(Path(server.log_dir) / "mlperf_log_detail.txt")["result_validity"] == "INVALID"
    html = (run_dir / "report.html").read_text()
    assert f"INVALID: {server.invalid_reason}" in html
    gate = edgecraft("report", "compare", run_dir, run_dir)
    said = gate.stdout + gate.stderr
    assert gate.returncode == 1 and "server: LoadGen said INVALID (" in said and "latency bound not met" in said


def reshape_to_one_sample(path: Path) -> None:
    """An ONNX file that declares a dynamic batch but reshapes to a batch of 1: it runs one sample, fails at two."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "one-sample",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_scenario_whose_system_under_test_fails_fails_its_row_not_the_run(tmp_path: Path) -> None:
    model = tmp_path / "one-sample.onnx"
    reshape_to_one_sample(model)
    data = tmp_path / "one.npz"  # one sample: the reference and the timed phases run it alone
    np.savez(data, inputs=np.ones((1, 4), np.float32))
    scenarios = ["--scenario", "single_stream", "--scenario", "multi_stream"]  # MultiStream: 8 samples per query
    completed = edgecraft("bench", model, "--inputs", data, *scenarios, "--quick", "--output-dir", tmp_path)
    assert (tmp_path / Path(completed.stdout.strip()).parent.name / "results.json").exists(), completed.stderr
    (row,) = load_results(Path(completed.stdout.strip()).parent).rows
    assert row.status == "failed"
    assert "multi_stream: the system under test failed" in row.reason and "Reshape" in row.reason


def test_a_remote_rows_scenarios_say_they_ran_on_the_device_and_bring_their_logs(tmp_path: Path) -> None:
    """The agent deletes a job's folder once its results are fetched: the summary and detail logs travel with the
    results into the row's folder; anything else an agent sends there is not written."""
    from edgecraft.bench.harness import MeasureJob, RemoteMeasure, _scenarios
    from edgecraft.bench.scenarios import loadgen_missing
    from edgecraft.core.results import Quality

    remote = RemoteMeasure("box", lambda job, settings: [])
    job = MeasureJob(
        "onnxruntime", "arm", {}, tmp_path / "m.onnx", tmp_path, {}, lambda outputs: None, tmp_path, remote
    )
    missing = {"scenario": "offline", "not_measured": "not measured (LoadGen not installed (pip install x))"}
    logs = {"mlperf_log_summary.txt": "Result is : VALID\n", "../../escape.txt": "no", "mlperf_log_detail.txt": 3}
    ran = {"scenario": "server", "valid": True, "value": 10.0, "log_dir": "/srv/jobs/1/loadgen/server/run-0"}
    offline = {"scenario": "offline", "valid": True, "value": 5.0, "log_dir": "/srv/jobs/1/loadgen/offline"}
    accuracy = {"scenario": "accuracy", "valid": True, "log_dir": "/srv/jobs/1/loadgen/accuracy"}
    quality = Quality(evaluator="classification", metric="top-1 accuracy", value=0.9)
    entries = [missing, ran | {"logs": logs}, offline | {"logs": "not a mapping"}, accuracy | {"logs": {}}]
    (not_installed, server, unlogged, scored) = _scenarios(job, entries, quality)
    assert scored.value is None
    assert scored.not_measured == "not measured (LoadGen's accuracy run on device box is not scored here)"
    assert not_installed.not_measured == "not measured (LoadGen not installed on device box (pip install x))"
    assert server.log_dir == str(tmp_path / "loadgen" / "server") and server.value == 10.0
    written = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert written == ["loadgen/server/mlperf_log_summary.txt"]
    assert (tmp_path / written[0]).read_text() == "Result is : VALID\n"
    assert unlogged.log_dir == "on device box: /srv/jobs/1/loadgen/offline"
    assert loadgen_missing() is None  # here it is installed: the message above is the agent's on a board without it
