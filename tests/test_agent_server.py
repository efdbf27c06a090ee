"""The device agent over real HTTP: a real ONNX model measured by an agent that cannot import torch, TensorFlow
or onnx; every refusal (token, size, format, pickles, path traversal); one job at a time; a crash that loses
nothing already measured. What an attacker or a flaky network would try is in test_agent_security.py."""

from __future__ import annotations

import hashlib
import http.client
import io
import itertools
import json
import pickle
import re
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from edgecraft.bench.agent.client import AgentClient, AgentError
from edgecraft.bench.agent.limits import Limits
from edgecraft.bench.agent.protocol import DeviceDescription
from edgecraft.bench.agent.server import detect_emulation
from tests.agent_helpers import BLOCKED_CLI, REPO, SETTINGS, RunningAgent, call, npz, start_agent, upload, write_token

TOKEN = "agent-test-token-0123456789-abcdefghijklmnop"  # 288 bits as the agent counts them
SAMPLES = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Gemm + Relu classifier: input x [N, 16], output y [N, 4]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
        ],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(proto)
    path = tmp_path_factory.mktemp("model") / "classifier.onnx"
    onnx.save(proto, path)
    return path


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((SAMPLES, 16)).astype(np.float32)}


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token"
    write_token(path, TOKEN)
    return path


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, token_file: Path):
    """One agent for the module, with a 1 MiB upload limit."""
    running = start_agent(tmp_path_factory.mktemp("agent") / "folder", token_file, "--max-upload-mb", "1")
    yield running
    running.stop()


def request(
    agent: RunningAgent,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict]:
    """One raw request; the status and the JSON answer."""
    answer = call(agent, method, path, body, token=token, authorize=token is not None, headers=headers)
    return answer.status, answer.body


def submit(agent: RunningAgent, model: Path, inputs: dict[str, np.ndarray], **settings) -> str:
    manifest = {
        "runtime": "onnxruntime",
        "device": "cpu",
        "model": {"format": "onnx", "files": [upload(agent, model.read_bytes())]},
        "inputs": upload(agent, npz(inputs)),
        "settings": SETTINGS | settings,
    }
    status, answer = request(agent, "POST", "/v1/jobs", json.dumps(manifest).encode())
    assert status == 202, answer
    return answer["job"]


def wait_for(agent: RunningAgent, job: str, states: tuple[str, ...], timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, answer = request(agent, "GET", f"/v1/jobs/{job}")
        assert status == 200, answer
        if answer["state"] in states:
            return answer
        time.sleep(0.1)
    raise AssertionError(f"job {job} never reached {states}; agent log:\n{agent.log()}")


def measure(agent: RunningAgent, model: Path, inputs: dict[str, np.ndarray], on_status=lambda status: None, **settings):
    return AgentClient(agent.url, TOKEN).measure(
        runtime="onnxruntime",
        device="cpu",
        options={},
        model_format="onnx",
        model_files=[model],
        inputs=inputs,
        expected_outputs={"y": np.zeros((SAMPLES, 4), np.float32)},
        settings=SETTINGS | settings,
        deadline_s=120,
        on_status=on_status,
    )


def test_the_import_blocker_blocks(tmp_path: Path):
    """The agent's interpreter really cannot import what the agent must do without (else the next test proves
    nothing)."""
    import subprocess
    import sys

    script = BLOCKED_CLI.format(blocked=("torch", "tensorflow", "onnx")).replace(
        "from edgecraft.cli import main", "import onnxruntime\nimport onnx"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert completed.returncode == 1 and "onnx is blocked" in completed.stderr


def test_a_real_measurement_comes_back_from_an_agent_without_torch_tensorflow_onnx(agent, model, inputs):
    result = measure(agent, model, inputs)
    assert len(result.raws) == 1 and result.raws[0]["index"] == 0 and result.raws[0]["order"] == 0
    assert len(result.raws[0]["samples_ms"]) >= SETTINGS["runs"]
    assert result.outputs["y"].shape == (SAMPLES, 4)
    expected = np.maximum(inputs["x"] @ _weights(model)[0] + _weights(model)[1], 0)
    np.testing.assert_allclose(result.outputs["y"], expected, rtol=1e-4, atol=1e-5)
    assert result.device["targets"]["onnxruntime:cpu"] is None and "emulated" in result.device
    assert result.started_at < result.finished_at
    assert not list((agent.folder / "jobs").iterdir())  # the client deleted the job it fetched
    description = AgentClient(agent.url, TOKEN).describe()
    assert description["agent"]["max_upload_bytes"] == 1 << 20 and description["emulated"] is None


def test_the_description_says_every_limit_by_its_flag(agent):
    status, answer = request(agent, "GET", "/v1/device")
    assert status == 200
    limits = DeviceDescription.model_validate(answer).agent.limits
    assert set(limits) == {name.replace("_", "-") for name, *_ in Limits.fields()}
    assert limits["max-upload-mb"] == 1 and limits["max-queue"] == Limits().max_queue


def _weights(model: Path) -> tuple[np.ndarray, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    arrays = {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(model).graph.initializer}
    return arrays["w"], arrays["b"]


def test_the_agent_refuses_what_it_must(agent, model, inputs):
    sha = hashlib.sha256(b"x").hexdigest()
    assert request(agent, "GET", "/v1/device", token=None)[0] == 401
    assert request(agent, "GET", "/v1/device", token="wrong")[0] == 401
    assert request(agent, "PUT", f"/v1/blobs/{sha}", b"x", token="wrong")[0] == 401
    assert request(agent, "GET", "/v1/nothing")[0] == 404
    assert request(agent, "POST", "/v1/device")[0] == 405
    assert request(agent, "POST", "/v1/jobs", b"{not json")[0] == 400

    # Sizes: decided from Content-Length, before the body is read.
    status, answer = request(agent, "PUT", f"/v1/blobs/{sha}", headers={"Content-Length": str(2 << 20)})
    assert status == 413 and "limit" in answer["error"]
    assert request(agent, "PUT", f"/v1/blobs/{sha}", b"not x")[0] == 400  # the sha256 differs
    address = urlsplit(agent.url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    connection.putrequest("PUT", f"/v1/blobs/{sha}")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.endheaders()
    assert connection.getresponse().status == 411
    connection.close()

    # Path traversal: names are sha256s and job ids are 32 hex digits, never paths.
    for path in ("/v1/blobs/..%2F..%2Fetc%2Fpasswd", "/v1/blobs/../../escaped", "/v1/blobs/%2E%2E"):
        assert request(agent, "PUT", path, b"x")[0] in (400, 404)
    for path in (
        "/v1/jobs/../x",
        "/v1/jobs/..%2Fx",
        "/v1/jobs/%2E%2E",
        f"/v1/jobs/{'0' * 32}",
        f"/v1/jobs/{'0' * 32}/result",
    ):
        assert request(agent, "GET", path)[0] == 404
        assert request(agent, "DELETE", path)[0] in (404, 405)

    good_model, good_inputs = upload(agent, model.read_bytes()), upload(agent, npz(inputs))

    def refusal(**changes) -> str:
        manifest = {
            "runtime": "onnxruntime",
            "device": "cpu",
            "model": {"format": "onnx", "files": [good_model]},
            "inputs": good_inputs,
            "settings": SETTINGS,
        } | changes
        status, answer = request(agent, "POST", "/v1/jobs", json.dumps(manifest).encode())
        assert status == 400, answer
        return answer["error"]

    def model_refusal(data: bytes, model_format: str = "onnx") -> str:
        return refusal(model={"format": model_format, "files": [upload(agent, data)]})

    assert "pickle" in model_refusal(pickle.dumps({"weights": [1.0, 2.0]}))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:  # what torch.save writes
        zipped.writestr("archive/data.pkl", pickle.dumps({"weights": [1.0]}))
    assert "torch.save" in model_refusal(archive.getvalue())
    assert "not an ONNX model" in model_refusal(b"just some text, not a model")
    assert "not a TFLite model: it looks like an ONNX model" in refusal(
        runtime="litert", model={"format": "tflite", "files": [good_model]}
    )
    assert "2 file(s)" in refusal(runtime="openvino", model={"format": "openvino", "files": [good_model]})
    assert "runtime" in refusal(runtime="tensorrt")
    assert "device" in refusal(device="tpu")
    assert "cannot run here" in refusal(device="cuda")
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    assert missing in refusal(inputs=missing)
    assert "settings.runs" in refusal(settings=SETTINGS | {"runs": 0})
    assert "model.files" in refusal(model={"format": "onnx", "files": ["../../etc/passwd"]})
    assert "inputs" in refusal(inputs=upload(agent, pickle.dumps(inputs)))
    assert "inputs" in refusal(inputs=upload(agent, npz({"x": inputs["x"], "y": inputs["x"][:3]})))
    assert "inputs" in refusal(inputs=upload(agent, npz({"x": np.array(["a", "b"])})))

    # Nothing outside the folder, and inside it only names the agent generated.
    generated = re.compile(r"blobs(/[0-9a-f]{64})?|jobs(/[0-9a-f]{32}(/.*)?)?")
    assert all(generated.fullmatch(str(path.relative_to(agent.folder))) for path in agent.folder.rglob("*"))
    assert [path.name for path in agent.folder.parent.iterdir()] == [agent.folder.name]


def test_concurrent_jobs_run_one_at_a_time(agent, model, inputs):
    results, statuses, errors = [], [], []

    def one() -> None:
        try:
            results.append(measure(agent, model, inputs, lambda status: statuses.append((time.time(), status))))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and len(results) == 3, (errors, agent.log())
    windows = sorted((result.started_at, result.finished_at) for result in results)
    assert all(before[1] <= after[0] for before, after in itertools.pairwise(windows)), windows
    waiting = [(at, status) for at, status in statuses if status.state == "queued"]
    assert all(status.position and status.position >= 1 for _, status in waiting)
    assert any(start < at < end for at, status in waiting for start, end in windows), statuses


def test_a_killed_agent_loses_nothing_already_measured(tmp_path, token_file, model, inputs):
    folder = tmp_path / "folder"
    first = start_agent(folder, token_file)
    started = []
    try:
        finished = submit(first, model, inputs)
        wait_for(first, finished, ("done",))
        errors: list[Exception] = []

        def long_job() -> None:
            try:
                measure(
                    first,
                    model,
                    inputs,
                    started.append,
                    measure_s=60.0,
                    max_s=120.0,
                    max_runs=10_000_000,
                    runs=10_000_000,
                )
            except AgentError as exc:
                errors.append(exc)

        thread = threading.Thread(target=long_job)
        thread.start()
        deadline = time.monotonic() + 60
        while not any(status.state == "running" for status in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        running = next(status.job for status in started if status.state == "running")
        waiting = [submit(first, model, inputs) for _ in range(2)]
        time.sleep(1.0)  # the benchmark process is under way
        first.kill()
        assert _workers_of(folder / "jobs" / running)  # left behind, still measuring
        thread.join(30)
        assert len(errors) == 1 and "stopped answering during job" in str(errors[0]) and first.url in str(errors[0])

        second = start_agent(folder, token_file, "--emulated", "declared by the test")
        try:
            assert AgentClient(second.url, TOKEN).describe()["emulated"] == "declared by the test"
            status, answer = request(second, "GET", f"/v1/jobs/{running}")
            assert status == 200 and answer["state"] == "failed"
            assert "the agent stopped during this job (restarted at" in answer["reason"]
            assert not _workers_of(folder / "jobs" / running)  # the killed agent's benchmark process was stopped
            status, result = request(second, "GET", f"/v1/jobs/{finished}/result")
            assert status == 200 and result["raws"][0]["samples_ms"]
            assert request(second, "GET", f"/v1/jobs/{finished}/outputs")[0] == 200
            assert request(second, "GET", f"/v1/jobs/{running}/result")[0] == 409
            assert request(second, "DELETE", f"/v1/jobs/{finished}")[0] == 200
            assert request(second, "GET", f"/v1/jobs/{finished}")[0] == 404
            # The jobs that were waiting run after the restart, in the order they were submitted.
            for job in waiting:
                wait_for(second, job, ("done",))
            windows = [request(second, "GET", f"/v1/jobs/{job}/result")[1] for job in waiting]
            assert windows[0]["finished_at"] <= windows[1]["started_at"]
        finally:
            second.stop()
    finally:
        first.stop()


def _workers_of(folder: Path) -> list[str]:
    """Benchmark processes whose command line names a file in ``folder``."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "edgecraft.bench.worker" in command and str(folder.resolve()) in command:
            found.append(entry.name)
    return found


def test_a_job_past_the_agent_time_limit_fails_with_the_reason(tmp_path, token_file, model, inputs):
    agent = start_agent(tmp_path / "folder", token_file, "--job-timeout", "1")
    try:
        with pytest.raises(AgentError, match=r"failed on the agent.*timed out.*job time limit"):
            measure(agent, model, inputs, measure_s=30.0, max_s=60.0, max_runs=10_000_000)
    finally:
        agent.stop()


def test_emulation_is_an_arm_machine_reading_an_x86_cpuinfo():
    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse sse2 avx2\n"
    raspberry = "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
    assert "qemu-user" in detect_emulation("aarch64", intel)
    assert "sse2" in detect_emulation("aarch64", "processor\t: 0\nflags\t\t: fpu sse2\n")
    assert detect_emulation("aarch64", raspberry) is None
    assert detect_emulation("x86_64", intel) is None


def test_the_command_line_module_imports_only_the_standard_library():
    """``edgecraft`` imports it on every start, whatever the command."""
    import subprocess
    import sys

    script = (
        "import sys, edgecraft.bench.agent.commands; "
        "print(sorted({'numpy', 'pydantic', 'edgecraft.bench.agent.server'} & set(sys.modules)))"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True)
    assert completed.stdout.strip() == "[]"


def test_the_agent_refuses_to_start_without_a_token(tmp_path):
    with pytest.raises(RuntimeError, match=r"exit code 2.*no token"):
        start_agent(tmp_path / "folder", None)


def test_a_tflite_model_may_bring_its_input_output_note(tmp_path):
    """The LiteRT target keeps a converted model's input names and layouts in model.io.json beside the .tflite:
    the agent takes it as an optional second file, and refuses one that is not a JSON object."""
    from edgecraft.bench.agent.protocol import ModelFiles, check_format

    blob = "0" * 64
    assert ModelFiles(format="tflite", files=[blob]).files == [blob]
    assert len(ModelFiles(format="tflite", files=[blob, blob]).files) == 2
    with pytest.raises(ValueError, match="1 or 2 file"):
        ModelFiles(format="tflite", files=[blob] * 3)
    model = tmp_path / "model.tflite"
    model.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    note = tmp_path / "model.io.json"
    note.write_text(json.dumps({"inputs": []}))
    check_format("tflite", [model, note])
    note.write_bytes(pickle.dumps({"inputs": []}))
    with pytest.raises(ValueError, match="not a JSON object"):
        check_format("tflite", [model, note])


def test_the_agent_warms_up_each_runtime_that_runs_here_before_the_first_upload(tmp_path: Path, monkeypatch) -> None:
    """ExecuTorch's bindings import torch (30-65 s on an emulated board): an upload's check must not pay for it."""
    from edgecraft.bench.agent.server import Agent, Limits
    from edgecraft.targets import registry

    warmed = []
    for runtime, cls in registry.runtimes().items():
        monkeypatch.setattr(cls, "warm_up", lambda self, runtime=runtime: warmed.append(runtime))
    agent = Agent(tmp_path / "agent", Limits(), None)
    agent._warm_up()
    runs_here = {
        runtime
        for runtime, cls in registry.runtimes().items()
        if any(cls().unavailable_reason(device) is None for device in cls.devices)
    }
    assert warmed and set(warmed) == runs_here and "executorch" in warmed
