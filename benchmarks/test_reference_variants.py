"""Latency of every reference variant on its runtime, one thread, one input at a time, cycling through real
evaluation inputs. pytest-benchmark times the same ``Target.run`` the harness times, so a slower runtime or
target wrapper shows here, and ``--benchmark-compare-fail`` turns it into a failing CI job."""

from __future__ import annotations

import pytest

from benchmarks.reference import VARIANTS
from edgecraft.targets import registry


@pytest.mark.benchmark(warmup=True, warmup_iterations=200, min_rounds=200, max_time=2.0, disable_gc=True)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_single_input_latency(benchmark, references: dict, variant: str) -> None:
    reference = references[variant]
    target = registry.get(reference.runtime)
    if target.unavailable_reason("cpu"):
        pytest.skip(target.unavailable_reason("cpu"))
    session = target.load(reference.path, "cpu", 1, target.options_model())
    singles = reference.feeds()
    position = iter(range(10**12))

    def infer() -> None:
        target.run(session, singles[next(position) % len(singles)])

    benchmark.group = reference.runtime
    benchmark.extra_info.update({"variant": variant, "requested_threads": 1, **target.describe(session)})
    benchmark(infer)
    outputs = target.run(session, {"input": reference.evaluation_inputs})["logits"]
    assert (outputs.argmax(1) == reference.labels).mean() >= 0.95  # measured the model, not a broken file
