"""ExecuTorch through the real command line: convert.executorch in fp32, fp16 and int8 beside ONNX Runtime, a
multi-output model, a dynamic-sequence model, a .pte measured by ``edgecraft bench``, and the agent's checks of
.pte uploads (a corrupt program refused, a board without torch saying why)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecraft.reports.results_file import load_results
from tests.agent_helpers import SETTINGS, call, npz, start_agent, upload, write_token
from tests.conftest import edgecraft
from tests.fixtures_models import THREE_HEAD_OUTPUTS
from tests.test_signatures import QUICK, TOKENS, run

pytest.importorskip("executorch")

DIGITS = f"""name: executorch
models:
  - builtin: digits-cnn
data:
  source: digits
  splits: {{train: 0.6, calibration: 0.2, evaluation: 0.2}}
variants:
  - name: fp32
  - name: et-fp32
    passes: [{{type: convert.executorch}}]
  - name: et-fp16
    passes: [{{type: convert.executorch, quantization: fp16}}]
  - name: et-int8
    passes: [{{type: convert.executorch, quantization: int8}}]
targets: [onnxruntime:cpu, executorch:cpu]
{QUICK}"""


@pytest.fixture(scope="module")
def digits_run(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    return run(DIGITS, tmp_path_factory.mktemp("executorch"))


def test_fp32_fp16_and_int8_programs_beside_onnx_runtime(digits_run: tuple) -> None:
    results, _ = digits_run
    rows = {(row.variant, row.target): row for row in results.rows}
    assert set(rows) == {
        ("fp32", "onnxruntime:cpu"),
        ("et-fp32", "executorch:cpu"),
        ("et-fp16", "executorch:cpu"),
        ("et-int8", "executorch:cpu"),
    }
    for key, row in rows.items():
        assert row.status == "ok", (key, row.reason)
    fp32, fp16, int8 = (rows[(name, "executorch:cpu")] for name in ("et-fp32", "et-fp16", "et-int8"))
    assert fp32.lossless and fp32.measurement.fidelity.max_abs_diff <= 1e-4
    assert fp16.measurement.fidelity.max_abs_diff < 0.05 and fp16.measurement.fidelity.top1_agreement >= 0.99
    reference = rows[("fp32", "onnxruntime:cpu")].measurement.accuracy
    assert int8.measurement.accuracy >= reference - 0.01  # the budget static int8 meets on ONNX Runtime
    assert fp32.size_bytes / int8.size_bytes >= 3
    for row in (fp32, fp16, int8):
        assert row.measurement.runtime_info["delegates"].startswith("XnnpackBackend")
        assert row.measurement.latency_ms.p50 > 0 and row.measurement.model_memory_mb > 0
        profile = row.measurement.operator_profile
        # ExecuTorch's event tracer times every XNNPACK operator inside the delegate calls
        assert profile is not None and profile.source == "executorch etdump" and profile.not_measured is None
        assert (
            profile.total_ms
            and profile.total_ms > 0
            and any(op.op_type.startswith("Convolution") for op in profile.ops)
        )
        assert "XnnpackBackend" in profile.notes[0]
    assert int8.measurement.operator_profile.quantized and not fp32.measurement.operator_profile.quantized
    html = (digits_run[1] / "report.html").read_text()
    assert "executorch:cpu" in html


def test_a_pte_through_bench_is_named_by_its_note(digits_run: tuple, tmp_path: Path) -> None:
    results, run_dir = digits_run
    row = next(row for row in results.rows if row.variant == "et-int8")
    program = run_dir / row.artifact
    assert program.suffix == ".pte" and program.with_suffix(".io.json").is_file()
    completed = edgecraft("bench", program, "--quick", "--output-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    bench = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    (measured,) = bench.rows
    assert (measured.target, measured.status) == ("executorch:cpu", "ok"), measured.reason
    model = bench.models[0]
    assert [spec.describe() for spec in model.signature.inputs] == ["input: float32 [batch×1×32×32] NCHW"]
    assert model.signature.output_names == results.models[0].signature.output_names


def test_a_pte_without_a_note_runs_with_positional_names_at_its_declared_sizes(
    digits_run: tuple, tmp_path: Path
) -> None:
    """A program as a user brings it (no note): named input_0 / output_0, measured at the sizes its method says."""
    results, run_dir = digits_run
    row = next(row for row in results.rows if row.variant == "et-fp32")
    program = tmp_path / "theirs.pte"
    program.write_bytes((run_dir / row.artifact).read_bytes())
    completed = edgecraft("bench", program, "--quick", "--output-dir", tmp_path / "runs")
    assert completed.returncode == 0, completed.stderr[-3000:]
    bench = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    (measured,) = bench.rows
    assert measured.status == "ok", measured.reason
    signature = bench.models[0].signature
    assert signature.input_names == ["input_0"] and signature.output_names == ["output_0"]
    assert signature.inputs[0].shape == [8, 1, 32, 32]  # the batch bound the program was planned for


def test_a_program_past_its_batch_bound_says_which_option_sets_it(digits_run: tuple) -> None:
    from edgecraft.targets import registry

    results, run_dir = digits_run
    program = run_dir / next(row for row in results.rows if row.variant == "et-fp32").artifact
    target = registry.get("executorch")
    session = target.load(program, "cpu", 1, target.options_model())
    with pytest.raises(ValueError, match=r"at most 8 .*max_batch"):
        target.run(session, {"input": np.zeros((9, 1, 32, 32), np.float32)})


THREE_HEADS = f"""name: three-heads
models:
  - factory: tests.fixtures_models:three_head_net
    outputs: [boxes, landmarks, face_probability]
    evaluator: regression
data:
  source: tests.fixtures_models:three_head_dataset
  splits: {{train: 0.0, calibration: 0.4, evaluation: 0.3}}
variants:
  - name: et-fp32
    passes: [{{type: convert.executorch}}]
  - name: et-int8
    passes: [{{type: convert.executorch, quantization: int8}}]
targets: [executorch:cpu]
{QUICK}"""


def test_every_output_of_a_three_head_model_by_its_own_name(tmp_path: Path) -> None:
    results, _ = run(THREE_HEADS, tmp_path)
    rows = {row.variant: row for row in results.rows}
    assert set(rows) == {"et-fp32", "et-int8"}
    for name, row in rows.items():
        assert row.status == "ok", (name, row.reason)
        fidelity = row.measurement.fidelity.outputs
        assert list(fidelity) == THREE_HEAD_OUTPUTS
    assert all(o.max_abs_diff <= 1e-4 for o in rows["et-fp32"].measurement.fidelity.outputs.values())
    assert all(0 < o.max_abs_diff < 2 and o.snr_db > 10 for o in rows["et-int8"].measurement.fidelity.outputs.values())


def test_token_ids_with_a_dynamic_sequence_bounded_by_the_data(tmp_path: Path) -> None:
    recipe = (
        TOKENS.replace(
            "token_pooler\n",
            "token_pooler\n    inputs: [{name: input_ids, dtype: int64, shape: [batch, sequence]}, "
            "{name: attention_mask, dtype: int64, shape: [batch, sequence]}]\n",
        )
        .replace(
            "    passes: [{type: quantize.dynamic}]\n",
            "    passes: [{type: quantize.dynamic}]\n"
            "  - name: et-fp32\n    passes: [{type: convert.executorch}]\n"
            "  - name: et-dynamic-int8\n    passes: [{type: convert.executorch, quantization: dynamic-int8}]\n",
        )
        .replace("targets: [onnxruntime:cpu, openvino:cpu]", "targets: [onnxruntime:cpu, executorch:cpu]")
    )
    results, run_dir = run(recipe, tmp_path)
    rows = {(row.variant, row.target): row for row in results.rows}
    assert {key for key in rows if key[1] == "executorch:cpu"} == {
        ("et-fp32", "executorch:cpu"),
        ("et-dynamic-int8", "executorch:cpu"),
    }
    for key, row in rows.items():
        assert row.status == "ok", (key, row.reason)
        assert row.measurement.quality.metrics["mean_cosine"] > 0.99
    fp32 = rows[("et-fp32", "executorch:cpu")]
    assert fp32.measurement.fidelity.max_abs_diff <= 1e-4
    note = json.loads((run_dir / fp32.artifact).with_suffix(".io.json").read_text())
    assert note["upper_bounds"] == {"batch": 8, "sequence": 12}  # the longest sequence in the data
    assert [spec["name"] for spec in note["signature"]["inputs"]] == ["input_ids", "attention_mask"]
    assert [spec.shape for spec in results.models[0].signature.inputs] == [["batch", "sequence"]] * 2


def _submit(agent, program: bytes, token: str, runtime: str = "executorch") -> tuple[int, dict]:
    manifest = {
        "runtime": runtime,
        "device": "cpu",
        "model": {"format": "executorch", "files": [upload(agent, program)]},
        "inputs": upload(agent, npz({"input": np.zeros((2, 1, 32, 32), np.float32)})),
        "settings": SETTINGS,
    }
    answer = call(agent, "POST", "/v1/jobs", json.dumps(manifest).encode(), token=token)
    return answer.status, answer.body


def test_the_agent_refuses_a_corrupt_program_and_says_when_torch_is_missing(digits_run: tuple, tmp_path: Path) -> None:
    results, run_dir = digits_run
    program = (run_dir / next(row for row in results.rows if row.variant == "et-fp32").artifact).read_bytes()
    token_file = tmp_path / "token"
    token = write_token(token_file)
    # A board with edgecraft[agent-executorch]: torch is there. (Nothing is blocked: torch._dynamo, which the
    # bindings import, probes for onnx and tensorflow with find_spec, which the blocker answers with ImportError.)
    agent = start_agent(tmp_path / "with-torch", token_file, blocked=())
    try:
        # Verification checks the program's structure (its flatbuffer's offsets and indices), not weight bytes.
        corrupt = bytearray(program)
        corrupt[64:512] = b"\xff" * 448
        status, answer = _submit(agent, bytes(corrupt), token)
        assert status == 400 and "ExecuTorch refuses the program" in answer["error"], answer
        status, answer = _submit(agent, program[:400], token)
        assert status == 400 and "truncated or corrupt" in answer["error"], answer
        status, answer = _submit(agent, program, token)
        assert status == 202, answer
    finally:
        agent.stop()
    # A board with only edgecraft[agent]: no torch, so no ExecuTorch, and the refusal names the extra.
    plain = start_agent(tmp_path / "without-torch", token_file)
    try:
        status, answer = _submit(plain, program, token)
        assert status == 400 and "edgecraft[agent-executorch]" in answer["error"], answer
    finally:
        plain.stop()


def test_a_machine_without_executorch_says_which_extra_installs_it(monkeypatch) -> None:
    from edgecraft.targets import registry

    target = registry.get("executorch")
    monkeypatch.setattr(type(target), "python_modules", ("no_such_package.runtime",))
    assert target.unavailable_reason("cpu") == (
        "executorch is not installed (edgecraft[executorch]; on a device agent, edgecraft[agent-executorch])"
    )
    assert "has no device" in (target.unavailable_reason("gpu") or "")
