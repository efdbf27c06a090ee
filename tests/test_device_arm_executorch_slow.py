"""The arm recipe's ``.pte`` rows measured on a real aarch64 agent: the emulated box of ``tests/aarch64_box.py``,
its agent started from the venv with ``edgecraft[agent-executorch]`` (ExecuTorch's aarch64 wheel, and torch, whose
libtorch its Python bindings link).

``et-fp32`` and ``et-int8`` (``convert.executorch``, XNNPACK) go to the box (``executorch:arm@box``) and also run
natively (``executorch:cpu``). As in ``test_device_arm_slow.py``, a handful of runs: the remote rows must be real
rows (fidelity against the PyTorch fp32 reference, labelled with the device, flagged as emulated) whose speed the
report withholds. The plain ``agent`` venv of the same box stays free of torch. Needs root, debootstrap,
qemu-user-static and the package registries; otherwise skipped with the reason. The first run installs torch and
executorch in a second venv of the box (~5 min: PyPI's aarch64 torch 2.13 wheel is CUDA-enabled and brings ~3 GB
of nvidia-* packages); later ones reuse them. ~9 min on a busy 2-core host: the agent's start with its import of
ExecuTorch ~1 min, training digits-mobilenet and exporting here, then 1-2 min per emulated row.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgecraft.core.results import Measurement, ResultRow
from edgecraft.reports.analysis import analyse
from edgecraft.reports.results_file import load_results
from edgecraft.reports.settings import report_settings
from tests import aarch64_box
from tests.conftest import edgecraft

pytestmark = pytest.mark.slow

TARGET = "executorch:arm@box"
NATIVE = "executorch:cpu"


def measured(row: ResultRow) -> Measurement:
    assert row.measurement is not None, (row.variant, row.target, row.reason)
    return row.measurement


def accuracy(row: ResultRow) -> float:
    value = measured(row).accuracy
    assert value is not None, (row.variant, row.target)
    return value


@pytest.fixture(scope="module")
def box_agent():
    """The aarch64 box with this tree's edgecraft[agent-executorch] installed, its agent listening over TLS:
    (agent, token file, root)."""
    venv = aarch64_box.EXECUTORCH_VENV
    reason = aarch64_box.why_unavailable(venv=venv)
    if reason:
        pytest.skip(f"no emulated aarch64 box: {reason}")
    with aarch64_box.serving_agent("test-et-agent-", venv=venv) as started:
        yield started


def test_arm_recipe_pte_rows_on_an_emulated_aarch64_agent(box_agent, tmp_path: Path) -> None:
    agent, token_file, root = box_agent
    assert agent.url.startswith("https://") and agent.fingerprint
    recipe = tmp_path / "arm-et-box.yaml"
    recipe.write_text(
        aarch64_box.box_recipe(
            textwrap.dedent(f"""\
        name: arm-et-box
        models:
          - builtin: digits-mobilenet
        variants:                     # the .pte variants of recipes/arm.yaml
          - name: et-fp32
            passes: [{{type: convert.executorch}}]
          - name: et-int8
            passes: [{{type: convert.executorch, quantization: int8}}]
        targets:
          - {TARGET}
          - {NATIVE}
        """),
            agent,
            token_file,
        )
    )
    completed = edgecraft("run", str(recipe), "--output-dir", str(tmp_path / "runs"))
    agent_log = "\n".join(agent.output)
    assert completed.returncode == 0, f"{completed.stderr[-4000:]}\n--- agent:\n{agent_log}"
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = load_results(run_dir)

    rows = {(row.variant, row.target): row for row in results.rows}
    remote = {key: row for key, row in rows.items() if key[1].endswith("@box")}
    assert sorted(remote) == [("et-fp32", TARGET), ("et-int8", TARGET)]
    for key, row in remote.items():
        assert row.status == "ok", f"{key}: {row.reason}\n--- agent:\n{agent_log}"
        assert row.device == "box"
        assert row.emulated and "x86" in row.emulated, key  # detected by the agent itself: no --emulated given
        assert row.size_bytes and row.artifact and row.artifact.endswith(".pte"), key
    for variant in ("et-fp32", "et-int8"):
        native = rows[(variant, NATIVE)]
        assert native.status == "ok" and native.device is None and native.emulated is None, (variant, native.reason)
        # One program, sent as it is: the same bytes measured here and on the box.
        assert native.sha256 == rows[(variant, TARGET)].sha256, variant

    # The box describes itself as aarch64 and emulated, with aarch64 builds of ExecuTorch and torch.
    box = results.devices["box"]
    assert box["cpu"]["machine"] == "aarch64" and "aarch64" in box["platform"]
    assert box["emulated"] and box["targets"]["executorch:arm"] is None
    packages = box["packages"]
    assert {"executorch", "torch", "edgecraft", "numpy"} <= set(packages)
    assert not {"tensorflow", "onnx"} & set(packages)  # the agent-executorch extra only
    for key, row in remote.items():
        info = measured(row).runtime_info
        assert info["executorch"] == packages["executorch"] and info["threads"] == 2, (key, info)
        assert "Xnnpack" in info["delegates"], (key, info)  # lowered to XNNPACK, run by the aarch64 delegate

    # Fidelity against the PyTorch fp32 reference, computed here from the outputs the agent sent back.
    for key, row in remote.items():
        fidelity = measured(row).fidelity
        assert fidelity.top1_agreement is not None, key
        if key[0] == "et-fp32":
            assert fidelity.top1_agreement == 1.0 and fidelity.max_abs_diff <= 1e-4, (key, fidelity)
        else:
            assert fidelity.top1_agreement >= 0.9, (key, fidelity)
        assert accuracy(row) > 0.8, key
    # The same int8 program on ARM and x86 XNNPACK kernels: the same accuracy within a point or so.
    assert abs(accuracy(rows[("et-int8", NATIVE)]) - accuracy(remote[("et-int8", TARGET)])) <= 0.02

    # The report judges the box's rows on accuracy only: no speed-up, front, cost or fastest variant from them.
    analysis = analyse(results, report_settings(results.recipe))
    for fact in analysis.facts:
        if fact.row.device == "box":
            assert fact.timing_not_measured and fact.speedup is None and fact.cost_per_million is None, fact.row.target
            assert not fact.on_front and not fact.slower_than_fp32 and not fact.throughput
            assert fact.device_label and fact.device_label.startswith("box · aarch64")
        else:
            assert fact.timing_not_measured is None and fact.device_label is None
    for recommendation in analysis.recommendations:
        if recommendation.target.endswith("@box"):
            assert recommendation.choice is None and recommendation.timing_not_measured, recommendation
    assert analysis.best_speedup is None or analysis.best_speedup.row.device is None

    # torch lives in the agent-executorch venv only: the box's plain agent venv stays free of it.
    plain = aarch64_box.versions(root)
    assert "edgecraft" in plain and not {"torch", "executorch"} & set(plain), sorted(plain)
