"""Remote devices end to end: a recipe whose targets name devices runs against real agents on loopback (behind an
import blocker: no torch, TensorFlow or onnx in them), and their rows merge into the same results and report.

One agent is native and serves TLS (its certificate pinned), one declares itself emulated, one device points at a
closed port and one lacks its token: the last two fail their own rows with the reason and every other row is
still measured. The devices' entries are checked when they are read: an https agent needs its pinned fingerprint.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from rich.progress import Progress

from edgecraft.bench.harness import MeasureJob
from edgecraft.bench.settings import profile_settings
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.results import ResultRow
from edgecraft.devices import RemoteDevice, load_devices
from edgecraft.reports.results_file import load_results
from edgecraft.rows import Pending, measure_rows
from tests.agent_helpers import RunningAgent, start_agent, write_token
from tests.conftest import edgecraft
from tests.fixtures_models import write_stateful_vad
from tests.helpers import write_token_pooler
from tests.results_factory import measurement

RECIPE = """\
name: remote
models:
  - builtin: digits-cnn
variants:
  - name: fp32
  - name: int8
    passes: [{{type: quantize.static}}]
targets: {targets}
devices:
  loop: {{url: "{loop}", token_file: "{token}"{loop_pin}}}
  emu: {{url: "{emu}", token_file: "{token}"}}
  down: {{url: "{down}", token_file: "{token}"}}
  tokenless: {{url: "{loop}", token_env: EDGECRAFT_TEST_UNSET_TOKEN{loop_pin}}}
benchmark: {{profile: quick, operator_profile: false, throughput_s: 0.1}}
"""
TARGETS = [
    "onnxruntime:cpu",
    "onnxruntime:cpu@loop",
    "onnxruntime:cpu@emu",
    "onnxruntime:cpu@down",
    "onnxruntime:cpu@tokenless",
]


def _closed_port_url() -> str:
    """An address where nothing listens: a port taken from the OS and released again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _write_recipe(folder: Path, agents: dict[str, RunningAgent], token: Path, targets: list[str]) -> Path:
    recipe = folder / "remote.yaml"
    recipe.write_text(
        RECIPE.format(
            targets=json.dumps(targets),
            loop=agents["loop"].url,
            loop_pin=f', fingerprint: "{agents["loop"].fingerprint}"' if agents["loop"].fingerprint else "",
            emu=agents["emu"].url,
            down=_closed_port_url(),
            token=token,
        )
    )
    return recipe


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("agents")
    token = folder / "token"
    write_token(token)
    started = {
        "loop": start_agent(folder / "loop", token, tls=True),
        "emu": start_agent(folder / "emu", token, "--emulated", "declared by the test (stands for qemu-user)"),
    }
    yield started, token, folder
    for agent in started.values():
        agent.stop()


@pytest.fixture(scope="module")
def remote_run(agents, model_cache: Path) -> Path:
    started, token, folder = agents
    recipe = _write_recipe(folder, started, token, TARGETS)
    completed = edgecraft("run", recipe, "--output-dir", folder / "runs")
    assert completed.returncode == 0, completed.stderr
    return Path(completed.stdout.strip().splitlines()[-1]).parent


def test_remote_rows_are_measured_there_and_merged(remote_run: Path) -> None:
    results = load_results(remote_run)
    rows = {(r.variant, r.target): r for r in results.rows}
    assert len(rows) == 2 * len(TARGETS)
    for variant in ("fp32", "int8"):
        local, remote = rows[(variant, "onnxruntime:cpu")], rows[(variant, "onnxruntime:cpu@loop")]
        assert local.status == remote.status == "ok", (local.reason, remote.reason)
        assert local.device is None and remote.device == "loop" and remote.emulated is None
        # The same file on the same kind of CPU: the agent's outputs are the local ones, scored by the same evaluator.
        assert remote.sha256 == local.sha256
        assert remote.measurement.accuracy == pytest.approx(local.measurement.accuracy)
        assert remote.measurement.fidelity.max_abs_diff == pytest.approx(
            local.measurement.fidelity.max_abs_diff, abs=1e-5
        )
        assert remote.measurement.latency_ms.runs >= 20 and remote.measurement.latency_ms.p50 > 0
    assert rows[("fp32", "onnxruntime:cpu@loop")].measurement.fidelity.max_abs_diff <= 1e-4
    description = results.devices["loop"]
    assert description["cpu"]["machine"] and description["cpu"]["logical_cores"] >= 1
    assert description["targets"]["onnxruntime:cpu"] is None and description["emulated"] is None
    assert description["packages"]["onnxruntime"]


def test_emulated_device_rows_say_so(remote_run: Path) -> None:
    results = load_results(remote_run)
    for row in (r for r in results.rows if r.target.endswith("@emu")):
        assert row.status == "ok", row.reason
        assert row.device == "emu" and "declared by the test" in row.emulated
        assert row.measurement.accuracy is not None  # fidelity and accuracy stay real
    assert "declared by the test" in results.devices["emu"]["emulated"]
    # The emulator shows the host's CPU: the description says so instead of claiming it as the device's.
    cpu = results.devices["emu"]["cpu"]
    assert cpu["model"].startswith("emulated ") and cpu["flags"] == [] and "host_flags" in cpu


def test_unreachable_or_tokenless_devices_fail_only_their_rows(remote_run: Path) -> None:
    results = load_results(remote_run)
    for row in results.rows:
        if row.target.endswith("@down"):
            assert row.status == "failed" and row.reason.startswith("device down: cannot reach the agent at http://")
        elif row.target.endswith("@tokenless"):
            assert row.status == "failed" and "EDGECRAFT_TEST_UNSET_TOKEN is not set" in row.reason
        else:
            assert row.status == "ok"
    html = (remote_run / "report.html").read_text()
    assert "onnxruntime:cpu@loop" in html and "onnxruntime:cpu@down" in html


def test_devices_command_lists_reachability(agents, remote_run: Path) -> None:
    recipe = remote_run / "recipe.yaml"
    completed = edgecraft("devices", recipe)
    assert completed.returncode == 1, completed.stderr  # 'down' and 'tokenless' are not reachable
    out = completed.stdout
    assert (
        f"loop: reachable at {agents[0]['loop'].url}\n    certificate: {agents[0]['loop'].fingerprint} (pinned" in out
    )
    loop = out[out.index("loop: reachable") : out.index("emu: reachable")]
    assert "machine: " in loop and "cores" in loop and "runs: " in loop and "onnxruntime:cpu" in loop
    assert "emulated: declared by the test" in out[out.index("emu: reachable") :]
    assert "down: not reachable: device down" in out
    assert "tokenless: not reachable:" in out and "EDGECRAFT_TEST_UNSET_TOKEN is not set" in out


def test_bench_a_file_on_a_device(agents, remote_run: Path, tmp_path: Path) -> None:
    model = next(remote_run.glob("models/digits-cnn/fp32/onnxruntime-cpu/*.onnx"))
    completed = edgecraft(
        "bench", model, "--device", "loop", "--devices", remote_run / "recipe.yaml", "--quick", "--output-dir", tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    results = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    (row,) = results.rows
    assert row.status == "ok" and row.target == "onnxruntime:cpu@loop" and row.device == "loop", row.reason
    assert row.measurement.fidelity.max_abs_diff <= 1e-5 and "loop" in results.devices
    unknown = edgecraft("bench", model, "--device", "nowhere", "--devices", remote_run / "recipe.yaml")
    assert unknown.returncode == 2 and "'nowhere' is not configured" in unknown.stderr
    assert "Traceback" not in unknown.stderr


def test_a_stateful_model_with_its_batch_on_axis_1_runs_on_a_device(agents, remote_run: Path, tmp_path: Path) -> None:
    """The agent is sent the model's layout: the state's batch on axis 1, a scalar sample rate, the state carried
    from call to call; the device's outputs are the local ones."""
    model = write_stateful_vad(tmp_path / "vad.onnx")
    rows = {}
    for where in ([], ["--device", "loop", "--devices", str(remote_run / "recipe.yaml")]):
        completed = edgecraft(
            "bench",
            model,
            "--input",
            "sr=16000",
            "--state",
            "state=stateN",
            *where,
            "--quick",
            "--output-dir",
            tmp_path,
        )
        assert completed.returncode == 0, completed.stderr
        (row,) = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent).rows
        rows[row.target] = row
    local, remote = rows["onnxruntime:cpu"], rows["onnxruntime:cpu@loop"]
    assert remote.status == "ok" and remote.device == "loop", remote.reason
    assert remote.measurement.fidelity.max_abs_diff == local.measurement.fidelity.max_abs_diff == 0.0


def test_a_devices_scenarios_bring_their_loadgen_logs_into_the_run_folder(
    agents, remote_run: Path, tmp_path: Path
) -> None:
    """The agent deletes a job's folder once its results are fetched: LoadGen's summary and detail logs come back
    with the results, into the row's folder, and the row's log folder is that one."""
    model = next(remote_run.glob("models/digits-cnn/fp32/onnxruntime-cpu/*.onnx"))
    devices = ["--device", "loop", "--devices", str(remote_run / "recipe.yaml")]
    completed = edgecraft("bench", model, *devices, "--scenario", "single_stream", "--quick", "--output-dir", tmp_path)
    assert completed.returncode == 0, completed.stderr
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    (row,) = load_results(run_dir).rows
    single = next(result for result in row.measurement.scenarios if result.scenario == "single_stream")
    assert row.status == "ok" and single.valid, (row.reason, single.invalid_reason)
    log_dir = Path(single.log_dir)
    assert log_dir.is_relative_to(run_dir) and "Result is : VALID" in (log_dir / "mlperf_log_summary.txt").read_text()
    assert (log_dir / "mlperf_log_detail.txt").is_file()


def test_token_inputs_are_timed_at_their_own_lengths_on_a_device_too(agents, remote_run: Path, tmp_path: Path) -> None:
    """The agent is sent the token inputs' sequence axis (a layout otherwise plain): its ring holds each text at
    its own length, with the padded figure and the latency by length beside, as a local row has them."""
    model, inputs = write_token_pooler(tmp_path)
    completed = edgecraft(
        "bench",
        model,
        "--inputs",
        inputs,
        "--device",
        "loop",
        "--devices",
        remote_run / "recipe.yaml",
        "--quick",
        "--output-dir",
        tmp_path,
    )
    assert completed.returncode == 0, completed.stderr
    (row,) = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent).rows
    assert row.status == "ok" and row.target == "onnxruntime:cpu@loop", row.reason
    measured = row.measurement
    assert measured.padded_length == 40 and measured.padded_latency_ms is not None
    assert [(b.shortest, b.longest) for b in measured.latency_by_length] == [(1, 16), (17, 32)]


PIN = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            '{url: "https://192.0.2.1:8765", token_env: T}',
            "devices.pi5.fingerprint: an https agent needs its certificate pinned: add 'fingerprint: sha256:…' as the "
            "agent printed it on start (or as `edgecraft agent fingerprint` prints it on the board)",
        ),
        (
            '{url: "https://192.0.2.1:8765", token_env: T, fingerprint: "sha256:abc"}',
            "devices.pi5.fingerprint: expected 'sha256:' and 64 hex digits, as the agent prints it; got 'sha256:abc'",
        ),
        (
            f'{{url: "http://192.0.2.1:8765", token_env: T, fingerprint: "{PIN}"}}',
            "devices.pi5.fingerprint: a certificate is only checked over https: make the url https:// (it is "
            "'http://192.0.2.1:8765')",
        ),
        (
            '{url: "https://192.0.2.1:99999", token_env: T}',
            "devices.pi5.url: 'https://192.0.2.1:99999': Port out of range 0-65535",
        ),
    ],
)
def test_a_device_entry_is_checked_when_it_is_read(tmp_path: Path, entry: str, problem: str) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(f"devices:\n  pi5: {entry}\n")
    with pytest.raises(EdgecraftError) as refused:
        load_devices(path)
    assert str(refused.value) == f"{path}: {problem}"


def test_a_fingerprint_is_read_as_openssl_prints_it_too(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text(
        f'devices:\n  pi5: {{url: "https://pi5:8765", token_env: T, fingerprint: "{":".join(["AB"] * 32)}"}}\n'
    )
    assert load_devices(path)["pi5"].fingerprint == PIN


def test_plain_http_to_another_machine_is_warned_about() -> None:
    assert RemoteDevice(url="http://192.168.1.20:8765", token_env="T").cleartext_warning("pi5") == (
        "devices.pi5: http://192.168.1.20:8765 is plain HTTP to another machine: its token travels in clear text; "
        "serve the agent over TLS (its default off loopback) and pin its fingerprint, or reach it through an SSH tunnel"
    )
    for here in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765"):
        assert RemoteDevice(url=here, token_env="T").cleartext_warning("pi5") is None
    assert RemoteDevice(url="https://pi5:8765", token_env="T", fingerprint=PIN).cleartext_warning("pi5") is None


def test_emulated_rows_carry_no_timing_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ±20 % CI is "noisy" on a native row; on an emulated one the timings are never shown, so neither is that."""
    noisy = measurement(1.0, 0.9, ci=0.2)
    monkeypatch.setattr("edgecraft.rows.measure_all", lambda jobs, settings, on_process: [noisy, noisy])
    native = ResultRow(model="net", variant="fp32", target="onnxruntime:cpu@box", status="failed", device="box")
    table = [native, native.model_copy(update={"emulated": "qemu-user"})]
    job = MeasureJob("onnxruntime", "cpu", {}, tmp_path / "m.onnx", tmp_path, {}, lambda outputs: None, tmp_path)
    assert (
        measure_rows(table, [Pending(0, job, False), Pending(1, job, False)], profile_settings("quick"), Progress())
        == []
    )
    assert table[0].status == "ok" and [w.split(":")[0] for w in table[0].warnings] == ["noisy"]
    assert table[1].status == "ok" and table[1].warnings == []


def test_recipe_naming_an_undefined_device_is_one_line(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(
        "name: bad\nmodels: [{builtin: digits-cnn}]\nvariants: [{name: fp32}]\ntargets: [onnxruntime:arm@pi5]\n"
    )
    completed = edgecraft("recipe", "validate", recipe)
    assert completed.returncode == 2
    assert "names the device 'pi5', which is not in 'devices'" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_agent_killed_mid_job_fails_that_row_and_keeps_the_rest(tmp_path: Path, model_cache: Path) -> None:
    token = tmp_path / "token"
    write_token(token)
    agent = start_agent(tmp_path / "agent", token)
    try:
        recipe = _write_recipe(
            tmp_path, {"loop": agent, "emu": agent}, token, ["onnxruntime:cpu", "onnxruntime:cpu@loop"]
        )

        def kill_when_running() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                for state in (tmp_path / "agent").glob("jobs/*/state.json"):
                    try:
                        running = json.loads(state.read_text())["state"] == "running"
                    except (OSError, ValueError, KeyError):
                        continue
                    if running:  # the job runs as soon as it is queued: let the 202 reach the client first
                        time.sleep(0.5)
                        agent.kill()
                        return
                time.sleep(0.05)

        killer = threading.Thread(target=kill_when_running, daemon=True)
        killer.start()
        completed = edgecraft("run", recipe, "--output-dir", tmp_path / "runs")
        killer.join(timeout=1)
    finally:
        agent.stop()
    assert completed.returncode == 0, completed.stderr
    results = load_results(Path(completed.stdout.strip().splitlines()[-1]).parent)
    for row in results.rows:
        if row.target == "onnxruntime:cpu":
            assert row.status == "ok", row.reason  # measured before the remote rows: never lost
        else:
            assert row.status == "failed" and "device loop" in row.reason, row.reason
    first_remote = next(r for r in results.rows if r.target == "onnxruntime:cpu@loop")
    assert "stopped" in first_remote.reason, first_remote.reason
