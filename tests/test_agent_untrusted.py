"""The host treats a device agent as untrusted input: a fake agent (a small HTTP server in this process) answers a
real ``edgecraft run`` with garbage, missing keys, impossible numbers, oversized bodies, a zip bomb and markup.

Every case fails the fake device's rows with a reason naming the problem, and the run still writes results.json,
report.html and summary.md (no raw markup in it) that ``edgecraft report`` re-renders. Two well-behaved fake
devices are measured at the same time, and the client checks a TLS agent's certificate before it sends the token.
"""

from __future__ import annotations

import io
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, save

from edgecraft.bench.agent import tls
from edgecraft.bench.agent.client import AgentClient, AgentError
from edgecraft.cli import main
from edgecraft.reports.results_file import load_results
from tests.agent_helpers import npz, write_zip_bomb
from tests.conftest import edgecraft
from tests.results_factory import worker_raw

TOKEN = "0123456789abcdef0123456789abcdef"
WEIGHTS = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 10  # the model: y = x @ WEIGHTS
MARKUP = "<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3)) `tick` a|b"


@dataclass(frozen=True)
class Stream:
    """An answer of ``size`` bytes, sent a chunk at a time: 200 MB never exist in this process."""

    size: int


Reply = tuple[int, bytes | Stream]
Override = Callable[[Any], Reply]  # what the fake answers instead, given the answer a good agent would give


def as_json(value: Any) -> Reply:
    return 200, json.dumps(value).encode()  # json.dumps writes NaN as NaN, as a careless agent would


def description(emulated: str | None = None) -> dict:
    return {
        "python": "3.11.2",
        "platform": "Linux-6.1-aarch64",
        "cpu": {"machine": "aarch64", "model": "Cortex-A76", "flags": ["asimd"], "logical_cores": 4},
        "packages": {"onnxruntime": "1.23.0"},
        "warnings": [],
        "targets": {"onnxruntime:cpu": None},
        "agent": {"version": "0.9.0", "max_upload_bytes": 64 << 20, "job_timeout_s": 600.0, "limits": {"max_queue": 8}},
        "emulated": emulated,
    }


def raw() -> dict:
    """One repetition's raw numbers as a worker writes them, with ``index`` and ``order`` as the agent adds them."""
    return worker_raw(0.011) | {"index": 0, "order": 0}


def zip_bomb() -> bytes:
    """An .npz of about 70 KB whose one array 'y' inflates to 64 MiB of float32 zeros."""
    buffer = io.BytesIO()
    write_zip_bomb(buffer, "y", 64 << 20)
    return buffer.getvalue()


class FakeAgent:
    """The agent protocol, answered well unless ``overrides`` (by answer: device, submitted, status, result,
    outputs) say otherwise; each job stays running for ``job_s`` seconds. ``requests`` counts what reached it."""

    def __init__(self, overrides: dict[str, Override] | None = None, job_s: float = 0.0, context=None):
        self.overrides = overrides or {}
        self.job_s = job_s
        self.blobs: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.requests = 0
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.agent = self
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply(self, method: str, path: str, body: bytes) -> Reply:
        parts = path.removeprefix("/v1/").split("/")
        if parts == ["device"]:
            return self._answer("device", description())
        if parts[0] == "blobs":
            if method == "PUT":
                self.blobs[parts[1]] = body
                return as_json({"blob": parts[1]})
            return (200, b"") if parts[1] in self.blobs else (404, b'{"error": "no such blob"}')
        if parts == ["jobs"]:
            job = uuid.uuid4().hex
            self.jobs[job] = {"inputs": json.loads(body)["inputs"], "submitted": time.monotonic()}
            return self._answer("submitted", {"job": job, "state": "queued", "position": 1})
        job = self.jobs[parts[1]]
        if method == "DELETE":
            return as_json({"job": parts[1], "state": "deleted"})
        if len(parts) == 2:
            state = "running" if time.monotonic() < job["submitted"] + self.job_s else "done"
            return self._answer("status", {"job": parts[1], "state": state})
        if parts[2] == "result":
            job["fetched"] = time.monotonic()
            result = {"raws": [raw()], "device": description(), "started_at": 1.0, "finished_at": 2.0}
            return self._answer("result", result)
        with np.load(io.BytesIO(self.blobs[job["inputs"]])) as inputs:
            return self._answer("outputs", npz({"y": inputs["x"] @ WEIGHTS}))

    def _answer(self, name: str, good: Any) -> Reply:
        if name in self.overrides:
            return self.overrides[name](good)
        return (200, good) if isinstance(good, bytes) else as_json(good)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    agent: FakeAgent

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hanging up on a 200 MB answer is the point, not an error


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        agent = self.server.agent
        agent.requests += 1
        assert self.headers["Authorization"] == f"Bearer {TOKEN}"
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, answer = agent.reply(method, self.path, body)
        size = answer.size if isinstance(answer, Stream) else len(answer)
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0.2")  # the agent says 1 (whole seconds): shorter keeps the test fast
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if method == "HEAD":
            return
        for chunk in _chunks(answer):
            self.wfile.write(chunk)


def _chunks(answer: bytes | Stream) -> Iterator[bytes]:
    if isinstance(answer, bytes):
        yield answer
        return
    chunk = b" " * (1 << 20)
    for _ in range(answer.size // len(chunk)):
        yield chunk


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-matrix ONNX model, evaluation data for it and the device's token."""
    folder = tmp_path_factory.mktemp("untrusted")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    weights = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], WEIGHTS.flatten().tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny", [x], [y], [weights])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), folder / "tiny.onnx")
    rng = np.random.default_rng(0)
    np.savez(folder / "data.npz", x=rng.standard_normal((60, 4)).astype(np.float32), targets=rng.integers(0, 3, 60))
    (folder / "token").write_text(TOKEN + "\n")
    return folder


def run_against(project: Path, agents: dict[str, FakeAgent], out: Path, job_timeout_s: float = 600) -> Path:
    """``edgecraft run`` of the tiny model on ``onnxruntime:cpu@NAME`` for each fake agent; the run folder, after
    checking that the run ended as one with failed rows does and that its three files are there."""
    devices = "".join(
        f'  {name}: {{url: "{agent.url}", token_file: "{project / "token"}", job_timeout_s: {job_timeout_s}}}\n'
        for name, agent in agents.items()
    )
    recipe = out / "recipe.yaml"
    out.mkdir(parents=True, exist_ok=True)
    recipe.write_text(
        f"name: untrusted\nmodels: [{{onnx: {project / 'tiny.onnx'}}}]\ndata: {{source: {project / 'data.npz'}}}\n"
        f"variants: [{{name: fp32}}]\ntargets: {json.dumps([f'onnxruntime:cpu@{name}' for name in agents])}\n"
        f"devices:\n{devices}benchmark: {{profile: quick, operator_profile: false}}\n"
    )
    completed = edgecraft("run", recipe, "--output-dir", out / "runs")
    assert completed.returncode == 0, completed.stderr
    assert "Traceback" not in completed.stderr
    run_dir = Path(completed.stdout.strip().splitlines()[-1]).parent
    for name in ("results.json", "report.html", "summary.md"):
        assert (run_dir / name).is_file(), name
    return run_dir


CASES: dict[str, tuple[dict[str, Override], str]] = {
    "description-not-json": (
        {"device": lambda good: (200, b"<html>a router's login page</html>")},
        "answered GET /v1/device with something that is not JSON (Expecting value: line 1 column 1 (char 0))",
    ),
    "description-without-max-upload": (
        {"device": lambda good: as_json(good | {"agent": {"version": "1", "job_timeout_s": 5.0}})},
        "answered GET /v1/device with an invalid DeviceDescription: agent.max_upload_bytes: Field required",
    ),
    "emulated-of-the-wrong-type": (
        {"device": lambda good: as_json(good | {"emulated": 5})},
        "answered GET /v1/device with an invalid DeviceDescription: emulated: Input should be a valid string",
    ),
    "description-of-200-mb": (
        {"device": lambda good: (200, Stream(200 << 20))},
        "answered GET /v1/device with more than 16777216 bytes, the most a JSON answer of the protocol may weigh",
    ),
    "result-without-raws": (
        {"result": lambda good: as_json({key: value for key, value in good.items() if key != "raws"})},
        "with an invalid JobResult: raws: Field required",
    ),
    "negative-timings": (
        {
            "result": lambda good: as_json(
                good
                | {
                    "raws": [
                        raw()
                        | {
                            "load_s": -1.0,
                            "samples_ms": [-1000.0],
                            "throughput": [{"batch_size": 1, "parallel": 1, "items_per_s": -1e9}],
                        }
                    ]
                }
            )
        },
        "with an invalid JobResult: raws.0.load_s: Input should be greater than or equal to 0; raws.0.samples_ms.0: "
        "Input should be greater than 0; raws.0.throughput.0.items_per_s: Input should be greater than 0",
    ),
    "nan-timings": (
        {"result": lambda good: as_json(good | {"raws": [raw() | {"samples_ms": [float("nan")]}]})},
        "with something that is not JSON (NaN is not a number JSON allows)",
    ),
    "outputs-zip-bomb": (
        {"outputs": lambda good: (200, zip_bomb())},
        "with outputs this host refuses: 'y' declares shape [16777216] of float32 (67108864 bytes inflated), over "
        "the limit of",
    ),
    "outputs-of-200-mb": (
        {"outputs": lambda good: (200, Stream(200 << 20))},
        "bytes, the most a job's outputs may weigh here (4× the reference outputs + 1 MiB, at most the device's "
        "max_outputs_mb)",
    ),
    "markup-in-the-reason": (
        {"status": lambda good: as_json(good | {"state": "failed", "reason": MARKUP})},
        f"failed on the agent at URL: {MARKUP}",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_agent_fails_its_rows_and_the_run_is_reported(case: str, project: Path, tmp_path: Path) -> None:
    overrides, expected = CASES[case]
    agent = FakeAgent(overrides)
    try:
        run_dir = run_against(project, {"fake": agent}, tmp_path)
    finally:
        agent.stop()
    (row,) = load_results(run_dir).rows
    assert row.status == "failed" and row.device == "fake"
    assert row.reason.startswith("device fake: "), row.reason
    assert expected.replace("URL", agent.url) in row.reason, row.reason
    summary = (run_dir / "summary.md").read_text()
    assert "<script>" not in summary and "<img" not in summary and not re.search(r"(?<!\\)\]\(javascript:", summary)
    assert "<script>alert(1)" not in (run_dir / "report.html").read_text()
    assert main(["report", str(run_dir)]) == 0


def test_markup_in_a_description_reads_as_text(project: Path, tmp_path: Path) -> None:
    """An emulated device whose description is markup: its row is measured, and the markup is text in the report
    (escaped HTML) and in summary.md (literal Markdown), where the emulator's reason is shown in full."""
    marked = description(emulated=MARKUP) | {"cpu": {"model": MARKUP, "machine": "<b>"}}
    agent = FakeAgent(
        {"device": lambda good: as_json(marked), "result": lambda good: as_json(good | {"device": marked})}
    )
    try:
        run_dir = run_against(project, {"fake": agent}, tmp_path)
    finally:
        agent.stop()
    (row,) = load_results(run_dir).rows
    assert row.status == "ok" and row.emulated == MARKUP, row.reason
    assert load_results(run_dir).devices["fake"]["cpu"]["model"] == MARKUP  # stored as the agent said it
    page = (run_dir / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt;" in page
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>" not in page
    summary = (run_dir / "summary.md").read_text()
    escaped = (
        "&lt;script&gt;alert(1)&lt;/script&gt; &lt;img src=x onerror=alert(2)&gt; \\[x\\](javascript:alert(3)) "
        "\\`tick\\` a\\|b"
    )
    assert f"not measured: emulated device fake ({escaped})" in summary, summary
    assert "<script>" not in summary and "<img" not in summary
    assert main(["report", str(run_dir)]) == 0


QUEUE_FULL = (429, b'{"error": "the queue is full (8 jobs); submit again later", "queue_limit": 8}')


def test_a_full_queue_is_waited_for_until_the_rows_deadline(project: Path, tmp_path: Path) -> None:
    """A busy agent's 429 is asked again after its Retry-After: twice busy, then accepted, the row is measured;
    busy until the row's deadline, the row fails with the agent's reason."""
    answers = iter([QUEUE_FULL, QUEUE_FULL])
    patient = FakeAgent({"submitted": lambda good: next(answers, None) or as_json(good)})
    always_busy = FakeAgent({"submitted": lambda good: QUEUE_FULL})
    try:
        measured = run_against(project, {"patient": patient}, tmp_path / "patient")
        refused = run_against(project, {"busy": always_busy}, tmp_path / "busy", job_timeout_s=1)
    finally:
        patient.stop()
        always_busy.stop()
    (row,) = load_results(measured).rows
    assert row.status == "ok" and len(patient.jobs) == 3, row.reason
    (row,) = load_results(refused).rows
    assert row.status == "failed" and row.reason == (
        f"device busy: the agent at {always_busy.url} refused POST /v1/jobs: HTTP 429: the queue is full (8 jobs); "
        "submit again later"
    )


def test_two_devices_are_measured_at_the_same_time(project: Path, tmp_path: Path) -> None:
    """Each fake job runs for a second; the two devices' jobs overlap, and the results say they ran in parallel."""
    agents = {"pi": FakeAgent(job_s=1.0), "jetson": FakeAgent(job_s=1.0)}
    try:
        run_dir = run_against(project, agents, tmp_path)
    finally:
        for agent in agents.values():
            agent.stop()
    results = load_results(run_dir)
    assert {row.device: row.status for row in results.rows} == {"pi": "ok", "jetson": "ok"}, [
        row.reason for row in results.rows
    ]
    assert results.parallel_devices == ["jetson", "pi"]
    (pi,), (jetson,) = agents["pi"].jobs.values(), agents["jetson"].jobs.values()
    assert (
        pi["submitted"] < jetson["fetched"] and jetson["submitted"] < pi["fetched"]
    )  # each began before the other ended
    assert "Measured in parallel: jetson, pi (one job at a time per device)" in (run_dir / "summary.md").read_text()
    assert 'id="parallel-devices">Measured in parallel: jetson, pi' in (run_dir / "report.html").read_text()
    assert main(["report", str(run_dir)]) == 0


# --- the certificate is checked before the token is sent ------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeAgent, str]]:
    identity = tls.identity(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(identity.certificate, identity.key)
    agent = FakeAgent(context=context)
    yield agent, identity.fingerprint
    agent.stop()


def test_a_pinned_certificate_is_trusted(tls_agent: tuple[FakeAgent, str]) -> None:
    agent, pinned = tls_agent
    assert AgentClient(agent.url, TOKEN, fingerprint=pinned).describe()["cpu"]["model"] == "Cortex-A76"


def test_another_certificate_is_refused_before_the_token_is_sent(tls_agent: tuple[FakeAgent, str]) -> None:
    agent, pinned = tls_agent
    before = agent.requests
    other = "sha256:" + "0" * 64
    with pytest.raises(AgentError) as refused:
        AgentClient(agent.url, TOKEN, fingerprint=other).describe()
    assert str(refused.value) == (
        f"the agent at {agent.url} presented the certificate {pinned}, not the pinned {other}: nothing was sent; "
        "like SSH's known hosts, if the agent's certificate was remade on purpose, update the device's fingerprint "
        "(the agent prints it on start)"
    )
    with pytest.raises(AgentError, match=f"serves TLS but its certificate is not pinned: add 'fingerprint: {pinned}'"):
        AgentClient(agent.url, TOKEN).describe()
    assert agent.requests == before  # no request, so no token, reached it
