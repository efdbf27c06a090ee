"""MLPerf's four inference scenarios, driven by MLPerf's own load generator (``mlperf_loadgen``) on any target.

LoadGen generates the traffic (one query after another for SingleStream and MultiStream, a Poisson stream for
Server, one query of everything for Offline), applies MLPerf's validity rules (minimum duration and query count,
early stopping for tail latencies, the Server latency bound) and writes the summary and detail logs that MLPerf
results are judged on. What is ours is only the system under test: the row's session, run inline for the
one-query-at-a-time scenarios, and the target's requests in flight side by side for Server and Offline (its runtime's
own asynchronous API where it has one, else sessions on threads), taking samples from the ring the worker already
holds in memory (LoadGen's query sample library). The Server's highest VALID rate is found by a bisection over
LoadGen runs (LoadGen's own peak search, ``find_peak_performance`` mode, needs a submission-length run per step).

Runs inside the benchmark worker's fresh process, after its timed phases; imports no ML framework.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgecraft.targets.base import Requests
from edgecraft.targets.feeds import Feeds

SCENARIOS = ("single_stream", "multi_stream", "offline", "server")
_LOADGEN_NAMES = {
    "single_stream": "SingleStream",
    "multi_stream": "MultiStream",
    "offline": "Offline",
    "server": "Server",
}
# Queries LoadGen's early stopping needs before it can state a tail-latency estimate with no query over the
# bound (its own minimums, read from its logs: "Processed at least 64 queries" at the 90th percentile, 662 at the
# 99th; a Server run of fewer is INVALID whatever its latencies).
EARLY_STOPPING_QUERIES = {"single_stream": 64, "multi_stream": 662, "server": 662, "offline": 1}
# Offline issues one query of expected QPS × minimum duration samples: a run faster than expected ends before the
# minimum duration and is INVALID, so it is told twice the throughput pass's best rate.
OFFLINE_HEADROOM = 2.0

# A scenario's logs that travel with a device's results (its job folder, and they with it, is deleted once the
# client has them): small text files. The accuracy run's logged outputs (megabytes) do not.
LOG_FILES = ("mlperf_log_summary.txt", "mlperf_log_detail.txt")

# ``feed(indices)``: those ring samples as one batch in the model's own layout; ``infer(feeds)``: run it inline.
Feed = Callable[[list[int]], Feeds]
Infer = Callable[[Feeds], object]


class ScenarioFailed(RuntimeError):
    """A scenario's inference raised: the row fails with this reason (its other figures are not kept)."""


def loadgen_missing() -> str | None:
    """Why LoadGen cannot run here (a row's "not measured" reason), or None."""
    try:
        import mlperf_loadgen  # noqa: F401
    except ImportError:
        return "LoadGen not installed (pip install mlcommons-loadgen; edgecraft[loadgen])"
    return None


class _Queries:
    """Completes LoadGen's queries whatever happens: LoadGen waits for every query it issued, so a query whose
    inference raised is still completed (the test ends), and the first error fails the scenario afterwards. Once
    one has failed, later queries are completed without running."""

    def __init__(self) -> None:
        self.first: BaseException | None = None

    @staticmethod
    def complete(samples: list[Any]) -> None:
        import mlperf_loadgen as lg

        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample.id, 0, 0) for sample in samples])

    def ended(self, samples: list[Any], error: BaseException | None) -> None:
        if error is not None and self.first is None:
            self.first = error
        self.complete(samples)

    def run(self, call: Callable[[], object], samples: list[Any]) -> None:
        """Run ``call`` here and complete ``samples``."""
        error = None
        if self.first is None:
            try:
                call()
            except Exception as exc:  # noqa: BLE001 - re-raised after LoadGen's test ends (see ``LoadGenRun._start``)
                error = exc
        self.ended(samples, error)

    def start(self, requests: Requests, feed: Feed, samples: list[Any]) -> None:
        """Start ``samples`` (as ``feed`` makes them a batch) on ``requests``; they are completed when it ends."""
        if self.first is not None:
            self.complete(samples)
            return
        try:
            requests.start(feed([sample.index for sample in samples]), lambda error: self.ended(samples, error))
        except Exception as exc:  # noqa: BLE001 - as in ``run``
            self.ended(samples, exc)


def _run_test(issue: Callable[[list[Any]], None], total: int, performance: int, settings: Any, folder: Path) -> None:
    """One LoadGen test of a system under test whose queries ``issue`` handles, over ``total`` samples
    (``performance`` of them in a performance run), its logs in ``folder`` (no trace, nothing on stdout)."""
    import mlperf_loadgen as lg

    folder.mkdir(parents=True, exist_ok=True)
    output = lg.LogOutputSettings()
    output.outdir = str(folder)
    output.copy_summary_to_stdout = False
    logging = lg.LogSettings()
    logging.log_output = output
    logging.enable_trace = False
    sut = lg.ConstructSUT(issue, lambda: None)
    # The samples are already in the worker's memory (or mapped): nothing to load or unload per sample.
    qsl = lg.ConstructQSL(total, performance, lambda indices: None, lambda indices: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, logging)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)


def read_logs(log_dir: str | None, within: Path) -> dict[str, str]:
    """The ``LOG_FILES`` of one scenario's ``log_dir`` by name, if that folder is inside ``within``."""
    if not log_dir or not Path(log_dir).resolve().is_relative_to(within.resolve()):
        return {}
    folder = Path(log_dir)
    return {name: (folder / name).read_text(errors="replace") for name in LOG_FILES if (folder / name).is_file()}


def read_detail_log(path: Path) -> dict[str, Any]:
    """LoadGen's detail log (``:::MLLOG {json}`` lines) as key → value, the last value of a key winning."""
    values: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        if line.startswith(":::MLLOG "):
            entry = json.loads(line[len(":::MLLOG ") :])
            values[entry["key"]] = entry["value"]
    return values


def _headline(scenario: str, log: dict[str, Any], percentile: float) -> tuple[str, float | None, str]:
    """(name, value, unit) of the scenario's MLPerf headline."""
    if scenario == "single_stream":
        value = log.get(f"result_{percentile:.2f}_percentile_latency_ns")
        return f"p{percentile:g} latency", value / 1e6 if value else None, "ms"
    if scenario == "multi_stream":
        value = log.get(f"result_{percentile:.2f}_percentile_per_query_latency_ns")
        return f"p{percentile:g} per-query latency", value / 1e6 if value else None, "ms"
    if scenario == "offline":
        return "samples/s", log.get("result_samples_per_second"), "samples/s"
    return "scheduled QPS", log.get("result_scheduled_samples_per_sec"), "queries/s"


def _percentiles_ms(log: dict[str, Any]) -> dict[str, float]:
    per_query = any("per_query_latency" in key for key in log)
    found = {}
    for key, value in log.items():
        if key.startswith("result_") and key.endswith(
            "_percentile_per_query_latency_ns" if per_query else "_percentile_latency_ns"
        ):
            found[f"p{float(key.split('_')[1]):g}"] = value / 1e6
    return found


class LoadGenRun:
    """One row's LoadGen tests on the ring of ``samples`` samples: ``feed`` makes a batch of them, ``infer`` runs one
    inline (SingleStream and MultiStream), ``open_requests`` gives the target's requests in flight side by side
    (Server and Offline; opened on first use, kept for every later test); the batch size multi-sample queries are
    run in, and the folder the logs go to."""

    def __init__(
        self,
        feed: Feed,
        infer: Infer,
        open_requests: Callable[[], Requests],
        samples: int,
        batch: int,
        settings: dict[str, Any],
        log_dir: Path,
    ) -> None:
        self.feed = feed
        self.infer = infer
        self.open_requests = open_requests
        self._requests: Requests | None = None
        self.samples = samples
        self.batch = batch
        self.settings = settings
        self.log_dir = log_dir

    def accuracy(self, answer: Callable[[list[int]], list[bytes]], total: int) -> dict[int, bytes]:
        """LoadGen's accuracy run (Offline, ``AccuracyOnly``) over all ``total`` samples: ``answer(indices)`` gives
        each sample's outputs as bytes, LoadGen writes them to its accuracy log, and what is returned (sample index
        → bytes) is read back from that log, so what gets scored is what LoadGen recorded."""
        import mlperf_loadgen as lg

        folder = self.log_dir / "accuracy"
        settings = self._settings("offline", 1.0, 1.0, None)
        settings.mode = lg.TestMode.AccuracyOnly
        failures: list[BaseException] = []

        def issue(samples: list[Any]) -> None:
            for start in range(0, len(samples), self.batch):
                chunk = samples[start : start + self.batch]
                try:
                    buffers = [np.frombuffer(data, np.uint8) for data in answer([sample.index for sample in chunk])]
                except Exception as exc:  # noqa: BLE001 - re-raised once LoadGen's test has ended
                    failures.append(exc)
                    buffers = [np.zeros(1, np.uint8) for _ in chunk]
                # LoadGen copies each response's bytes into its log before QuerySamplesComplete returns.
                lg.QuerySamplesComplete(
                    [
                        lg.QuerySampleResponse(sample.id, buffer.ctypes.data, buffer.nbytes)
                        for sample, buffer in zip(chunk, buffers, strict=True)
                    ]
                )

        _run_test(issue, total, min(total, self.samples), settings, folder)
        if failures:
            raise ScenarioFailed(
                f"accuracy run: the system under test failed: {type(failures[0]).__name__}: {failures[0]}"
            )
        logged = json.loads((folder / "mlperf_log_accuracy.json").read_text())
        return {int(entry["qsl_idx"]): bytes.fromhex(entry["data"]) for entry in logged}

    def run(self, scenarios: list[str], latency_ms: float, items_per_s: float) -> list[dict[str, Any]]:
        """Every scenario's result, with LoadGen's expectations set from the row's own timed phase (``latency_ms``,
        its median) and throughput pass (``items_per_s``): LoadGen pre-generates its queries from them."""
        results = []
        try:
            for scenario in scenarios:
                if scenario == "server":
                    results.append(self._server(latency_ms))
                else:
                    results.append(self._test(scenario, latency_ms, items_per_s))
        finally:
            if self._requests is not None:
                self._requests.close()
                self._requests = None
        return results

    def _settings(self, scenario: str, latency_ms: float, items_per_s: float, target_qps: float | None) -> Any:
        import mlperf_loadgen as lg

        options = self.settings
        settings = lg.TestSettings()
        settings.scenario = getattr(lg.TestScenario, _LOADGEN_NAMES[scenario])
        settings.mode = lg.TestMode.PerformanceOnly
        settings.min_duration_ms = int(options["min_duration_s"] * 1000)
        settings.min_query_count = max(options["min_queries"], EARLY_STOPPING_QUERIES[scenario])
        settings.qsl_rng_seed = settings.sample_index_rng_seed = settings.schedule_rng_seed = options["seed"]
        per_query = options["multi_stream_samples_per_query"]
        settings.single_stream_expected_latency_ns = max(1, int(latency_ms * 1e6))
        settings.multi_stream_samples_per_query = per_query
        settings.multi_stream_expected_latency_ns = max(1, int(latency_ms * 1e6 * per_query))
        settings.offline_expected_qps = max(1.0, items_per_s * OFFLINE_HEADROOM)
        settings.server_target_latency_ns = int(options["server_target_latency_ms"] * 1e6)
        settings.server_target_latency_percentile = options["server_percentile"] / 100
        if target_qps is not None:
            settings.server_target_qps = target_qps
        return settings

    def _start(self, scenario: str, settings: Any, folder: Path) -> dict[str, Any]:
        """One LoadGen test; its detail log's values."""
        queries = _Queries()
        if scenario in ("single_stream", "multi_stream"):
            # One query at a time, LoadGen waiting for it: run it here, as one batch.
            def issue(samples: list[Any]) -> None:
                queries.run(lambda: self.infer(self.feed([sample.index for sample in samples])), samples)

        else:
            if self._requests is None:
                self._requests = self.open_requests()
            requests = self._requests

            def issue(samples: list[Any]) -> None:
                for start in range(0, len(samples), self.batch):
                    chunk = samples[start : start + self.batch]
                    queries.start(requests, self.feed, chunk)

        _run_test(issue, self.samples, self.samples, settings, folder)
        if queries.first is not None:
            raise ScenarioFailed(
                f"{scenario}: the system under test failed: {type(queries.first).__name__}: {queries.first}"
            ) from queries.first
        return read_detail_log(folder / "mlperf_log_detail.txt")

    def _result(self, scenario: str, log: dict[str, Any], folder: Path) -> dict[str, Any]:
        percentile = {
            "single_stream": 90.0,
            "multi_stream": 99.0,
            "server": self.settings["server_percentile"],
            "offline": 90.0,
        }[scenario]
        name, value, unit = _headline(scenario, log, percentile)
        valid = log.get("result_validity") == "VALID"
        reasons = [
            text
            for met, text in (
                (log.get("result_min_duration_met"), "minimum duration not met"),
                (log.get("result_min_queries_met"), "minimum query count not met"),
                (log.get("early_stopping_met"), "early stopping not satisfied"),
                (log.get("result_perf_constraints_met", True), "latency bound not met"),
            )
            if met is False
        ]
        reason = (log.get("result_invalid_reason") or "").strip()
        return {
            "scenario": scenario,
            "valid": valid,
            "invalid_reason": None if valid else "; ".join(filter(None, [*reasons, reason])) or "LoadGen said INVALID",
            "headline": name,
            "value": value,
            "unit": unit,
            "queries": log.get("result_query_count"),
            "percentiles_ms": _percentiles_ms(log),
            "early_stopping": (log.get("early_stopping_result") or "").strip() or None,
            "log_dir": str(folder),
        }

    def _test(self, scenario: str, latency_ms: float, items_per_s: float) -> dict[str, Any]:
        folder = self.log_dir / scenario
        log = self._start(scenario, self._settings(scenario, latency_ms, items_per_s, None), folder)
        if (
            scenario == "offline"
            and log.get("result_min_duration_met") is False
            and log.get("result_samples_per_second")
        ):
            # Faster than the throughput pass said: once more, from the rate LoadGen itself just measured.
            rate = log["result_samples_per_second"]
            log = self._start(scenario, self._settings(scenario, latency_ms, rate, None), folder)
        return self._result(scenario, log, folder)

    def _server(self, latency_ms: float) -> dict[str, Any]:
        """The highest target QPS LoadGen finds VALID at the latency bound: the requests' capacity first, then a
        bisection between the highest VALID and the lowest INVALID rate tried, ``server_search_runs`` runs in all."""
        capacity = self.settings["sessions"] * 1000 / latency_ms
        low, high = 0.0, capacity
        probe = capacity * 0.9
        best: dict[str, Any] | None = None
        result: dict[str, Any] = {}
        probes = []
        for step in range(self.settings["server_search_runs"]):
            folder = self.log_dir / "server" / f"run-{step}"
            log = self._start("server", self._settings("server", latency_ms, 0, probe), folder)
            result = self._result("server", log, folder)
            probes.append(
                {
                    "target_qps": probe,
                    "valid": result["valid"],
                    "scheduled_qps": result["value"],
                    "percentiles_ms": result["percentiles_ms"],
                }
            )
            if result["valid"]:
                low, best = probe, result | {"target_qps": probe}
            else:
                high = probe
            probe = (low + high) / 2
        if best is None:  # nothing VALID: the last (lowest) rate tried, with its reason
            best = result | {"target_qps": probes[-1]["target_qps"]}
        best["probes"] = probes
        best["search"] = (
            f"bisection over {len(probes)} LoadGen runs from the requests' capacity ({capacity:.1f} QPS at the "
            "timed median)"
        )
        return best
