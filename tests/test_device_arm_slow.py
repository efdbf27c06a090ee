"""A recipe measured on a real aarch64 agent: a Debian arm64 root under qemu-user on this machine
(``tests/aarch64_box.py``), running ``edgecraft agent serve`` with aarch64 builds of onnxruntime and ai-edge-litert.

The arm recipe's four variants go to the box (``onnxruntime:arm@box``, ``litert:arm@box``) and the ONNX ones also
run natively (``onnxruntime:cpu``). Emulation is ~300x slower than native, so the protocol is a handful of runs:
the point is that remote rows are real rows (fidelity against the PyTorch fp32 reference, labelled with the
device, flagged as emulated), not their timings. Needs root, debootstrap, qemu-user-static and the package
registries; otherwise skipped with the reason. The first run builds the box (~8 min); later ones reuse it
(re-installing edgecraft there, ~30-60 s, when its packaged files changed). ~18-24 min on a busy 2-core host,
most of it training digits-mobilenet and converting to TFLite here; a remote row takes 20-90 s emulated.
"""

from __future__ import annotations

import shutil
import tempfile
import textwrap
from pathlib import Path

import pytest

from edgecraft.reports.analysis import analyse
from edgecraft.reports.results_file import load_results
from edgecraft.reports.settings import report_settings
from tests import aarch64_box
from tests.conftest import edgecraft

pytestmark = pytest.mark.slow

VARIANTS = textwrap.dedent("""\
    variants:
      - name: fp32
      - name: onnx-int8
        passes:
          - type: quantize.static
            activation_type: int8
      - name: tflite-fp32
        passes: [{type: convert.tflite}]
      - name: tflite-int8
        passes: [{type: convert.tflite, quantization: int8}]
    """)


@pytest.fixture(scope="module")
def box_agent():
    """The aarch64 box with this tree's edgecraft installed, its agent listening over TLS: (agent, token file)."""
    reason = aarch64_box.why_unavailable()
    if reason:
        pytest.skip(f"no emulated aarch64 box: {reason}")
    with aarch64_box.serving_agent("test-agent-") as (agent, token_file, _):
        yield agent, token_file


def test_arm_recipe_on_an_emulated_aarch64_agent(box_agent, tmp_path: Path) -> None:
    agent, token_file = box_agent
    assert agent.url.startswith("https://") and agent.fingerprint
    recipe = tmp_path / "arm-box.yaml"
    recipe.write_text(
        aarch64_box.box_recipe(
            textwrap.dedent("""\
            name: arm-box
            models:
              - builtin: digits-mobilenet
            """)
            + VARIANTS
            + textwrap.dedent("""\
            targets:
              - onnxruntime:arm@box
              - litert:arm@box
              - onnxruntime:cpu
            """),
            agent,
            token_file,
        )
    )
    completed = edgecraft("run", recipe, "--output-dir", tmp_path / "runs")
    agent_log = "\n".join(agent.output)
    assert completed.returncode == 0, f"{completed.stderr[-4000:]}\n--- agent:\n{agent_log}"
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    results = load_results(run_dir)

    rows = {(row.variant, row.target): row for row in results.rows}
    remote = {key: row for key, row in rows.items() if key[1].endswith("@box")}
    assert sorted(remote) == [
        ("fp32", "onnxruntime:arm@box"),
        ("onnx-int8", "onnxruntime:arm@box"),
        ("tflite-fp32", "litert:arm@box"),
        ("tflite-int8", "litert:arm@box"),
    ]
    for key, row in remote.items():
        assert row.status == "ok", f"{key}: {row.reason}\n--- agent:\n{agent_log}"
        assert row.device == "box"
        assert row.emulated and "x86" in row.emulated, key  # detected by the agent itself: no --emulated given
        assert not row.warnings or not any("noisy" in w or "capped" in w for w in row.warnings), row.warnings
    for key in (("fp32", "onnxruntime:cpu"), ("onnx-int8", "onnxruntime:cpu")):
        assert rows[key].status == "ok" and rows[key].device is None and rows[key].emulated is None, key

    # The box describes itself as aarch64, with aarch64 builds of both runtimes, and as emulated.
    box = results.devices["box"]
    assert box["cpu"]["machine"] == "aarch64" and "aarch64" in box["platform"]
    assert box["emulated"] and box["targets"]["onnxruntime:arm"] is None and box["targets"]["litert:arm"] is None
    packages = box["packages"]
    assert {"onnxruntime", "ai-edge-litert", "edgecraft", "numpy"} <= set(packages)
    assert not {"torch", "tensorflow"} & set(packages)  # the agent extra only
    ort_int8 = remote[("onnx-int8", "onnxruntime:arm@box")].measurement
    assert ort_int8.runtime_info["onnxruntime"] == packages["onnxruntime"]
    litert_int8 = remote[("tflite-int8", "litert:arm@box")].measurement
    assert litert_int8.runtime_info["interpreter"] == f"ai-edge-litert {packages['ai-edge-litert']}"
    # The recipe's threads reach the device's runtimes.
    assert ort_int8.runtime_info["intra_op_threads"] == 2 and litert_int8.runtime_info["num_threads"] == 2

    # Fidelity against the PyTorch fp32 reference, computed here from the outputs the agent sent back.
    for key, row in remote.items():
        fidelity = row.measurement.fidelity
        assert fidelity.top1_agreement is not None, key
        if key[0].endswith("fp32"):
            assert fidelity.top1_agreement == 1.0 and fidelity.max_abs_diff < 1e-3, (key, fidelity)
        else:
            assert fidelity.top1_agreement >= 0.9, (key, fidelity)
        assert row.measurement.accuracy is not None and row.measurement.accuracy > 0.8, key
    # The same int8 model on ARM and x86 kernels: both close to the reference.
    native = rows[("onnx-int8", "onnxruntime:cpu")].measurement
    assert abs(native.accuracy - ort_int8.accuracy) <= 0.05

    # The report judges the box's rows on accuracy only: no speed-up, front, cost or fastest variant from them.
    analysis = analyse(results, report_settings(results.recipe))
    for fact in analysis.facts:
        if fact.row.device == "box":
            assert fact.timing_not_measured and fact.speedup is None and fact.cost_per_million is None, fact.row.target
            assert not fact.on_front and not fact.slower_than_fp32 and not fact.throughput
            assert fact.device_label.startswith("box · aarch64")
        else:
            assert fact.timing_not_measured is None and fact.device_label is None
    for recommendation in analysis.recommendations:
        if recommendation.target.endswith("@box"):
            assert recommendation.choice is None and recommendation.timing_not_measured, recommendation
    assert analysis.best_speedup is None or analysis.best_speedup.row.device is None  # sizes are real: may be the box's


def _board_commands() -> list[str]:
    """The README's board set-up, the commands run on the board (after '# then on the board:'), comments dropped."""
    readme = (aarch64_box.REPO / "README.md").read_text()
    section = readme[readme.index("Set up a Raspberry-Pi-class board") :]
    block = section[section.index("```bash\n") + len("```bash\n") :]
    lines = block[: block.index("```")].splitlines()
    on_board = lines[[line.strip() for line in lines].index("# then on the board:") + 1 :]
    return [line.split("  #")[0].strip() for line in on_board if line.strip() and not line.lstrip().startswith("#")]


def test_readme_board_setup_gives_a_tls_agent(tmp_path: Path) -> None:
    """The README's board commands, as written, in the aarch64 box: the agent they start speaks TLS, prints its
    fingerprint, and a device entry pinning it reaches it (a wrong pin is refused before the token is sent)."""
    reason = aarch64_box.why_unavailable()
    if reason:
        pytest.skip(f"no emulated aarch64 box: {reason}")
    root = aarch64_box.ensure_root()
    commands = _board_commands()
    venv, token, serve = commands  # make the venv and install; make the token; serve
    assert venv.startswith("python3 -m venv ~/edgecraft") and '[agent]"' in venv
    home = Path(tempfile.mkdtemp(prefix="readme-home-", dir=root / "srv"))
    inside_home = "/" + str(home.relative_to(root))
    # The box has ~/edgecraft already: edgecraft[agent] from this checkout in its venv (what the first line does).
    board = [line.replace("~/edgecraft/bin/", f"{aarch64_box.VENV}/bin/") for line in (token, serve)]
    try:
        aarch64_box.inside(root, "env", f"HOME={inside_home}", "sh", "-c", board[0])
        token_file = home / ".config/edgecraft/agent.token"
        assert token_file.stat().st_mode & 0o777 == 0o600 and len(token_file.read_text().strip()) >= 22
        # --port 0: the README's default port may be taken on this machine; the box shares its network.
        command = ["chroot", str(root), "env", f"HOME={inside_home}", "sh", "-c", f"exec {board[1]} --port 0"]
        agent = aarch64_box.watch_agent(command, aarch64_box.START_TIMEOUT_S, tls=True, what="the README's agent")
    except BaseException:
        shutil.rmtree(home, ignore_errors=True)
        raise
    try:
        assert agent.url.startswith("https://0.0.0.0:") and agent.fingerprint, agent.url
        url = agent.url.replace("0.0.0.0", "127.0.0.1")
        for pin, expected in ((agent.fingerprint, 0), ("sha256:" + "0" * 64, 1)):
            devices = tmp_path / "devices.yaml"
            devices.write_text(
                f"devices:\n  pi5:\n    url: {url}\n    token_file: {token_file}\n    fingerprint: {pin}\n"
            )
            listed = edgecraft("devices", devices)
            output = listed.stdout + listed.stderr
            assert listed.returncode == expected, output
            assert ("aarch64" in output) if expected == 0 else ("fingerprint" in output), output
    finally:
        aarch64_box.stop_agent(agent.process)
        shutil.rmtree(home, ignore_errors=True)
