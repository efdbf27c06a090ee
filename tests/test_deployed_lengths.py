"""Token inputs timed at their own lengths (as deployed), the padded figure beside them, latency by length."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecraft.reports.results_file import load_results
from edgecraft.targets import feeds
from tests.conftest import edgecraft
from tests.helpers import write_token_pooler


def test_own_length_is_the_last_position_any_token_input_uses() -> None:
    from edgecraft.core.signature import Signature, TensorSpec

    tokens = [TensorSpec(name=name, dtype="int64", shape=["batch", "sequence"]) for name in ("ids", "mask")]
    layout = feeds.layout(Signature(inputs=tokens, outputs=[TensorSpec(name="out", shape=["batch", 4])]))
    assert layout.lengths == {"ids": 1, "mask": 1}
    sample = {"ids": np.array([[7, 0, 9, 0, 0]]), "mask": np.array([[1, 1, 1, 0, 0]])}  # a 0 id inside the text
    assert layout.own_length(sample) == 3
    assert layout.cut(sample, 3)["ids"].tolist() == [[7, 0, 9]]
    # A float input is never cut (silence at the end of audio is data), nor are axes of different names.
    audio = [TensorSpec(name="wave", dtype="float32", shape=["batch", "samples"])]
    assert feeds.layout(Signature(inputs=audio, outputs=[TensorSpec(name="out")])).lengths == {}
    mixed = [tokens[0], TensorSpec(name="mask", dtype="int64", shape=["batch", "other"])]
    assert feeds.layout(Signature(inputs=mixed, outputs=[TensorSpec(name="out")])).lengths == {}


def test_bench_times_token_inputs_at_their_own_lengths_with_the_padded_figure_beside(tmp_path: Path) -> None:
    model, inputs = write_token_pooler(tmp_path)  # 32 texts padded to 40: 16 of 8 tokens, then 16 of 30
    completed = edgecraft("bench", model, "--inputs", inputs, "--quick", "--output-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip()).parent
    (row,) = load_results(run_dir).rows
    measured = row.measurement
    assert row.status == "ok" and measured.padded_length == 40 and measured.padded_latency_ms is not None
    calls = len(measured.samples_ms)
    short = sum(1 for index in range(calls) if index % 32 < 16)
    buckets = [(b.shortest, b.longest, b.calls) for b in measured.latency_by_length]
    assert buckets == [(1, 16, short), (17, 32, calls - short)]
    # Accuracy and fidelity still come from the padded data: the outputs are the file's on the data as given.
    assert measured.fidelity.max_abs_diff == 0
    assert 'id="lengths-table"' in (run_dir / "report.html").read_text()
