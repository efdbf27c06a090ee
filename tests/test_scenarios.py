"""MLPerf's scenarios through LoadGen (``bench.scenarios``), from the command line, judged by LoadGen's own logs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgecraft.bench.scenarios import read_detail_log
from edgecraft.reports.results_file import load_results
from tests.conftest import edgecraft, images

pytest.importorskip("mlperf_loadgen")

SCENARIOS = ["single_stream", "multi_stream", "offline", "server"]


def test_every_scenario_runs_through_loadgen_on_two_runtimes_with_its_logs(digits_cnn: dict, tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, inputs=images(digits_cnn["splits"])[:64])
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
        assert sorted(by_name) == sorted(SCENARIOS)
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
        # Server: the highest VALID rate the bisection tried, at or below the sessions' capacity.
        server = by_name["server"]
        assert server.probes and server.target_qps == max(probe.target_qps for probe in server.probes if probe.valid)
        assert log_setting(server.log_dir, "effective_target_latency_ns") == 15_000_000
        assert server.percentiles_ms["p99"] <= 15
    html = (run_dir / "report.html").read_text()
    assert 'id="scenarios-table"' in html and "VALID" in html


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
