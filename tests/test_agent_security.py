"""The device agent as an attacker or a flaky network would try it (issue 26's findings), each against a real agent
on 127.0.0.1: the status and the one line it answers, and that it still answers afterwards.

1. Secrets: a short token, a token file others can read, plain HTTP off loopback, a certificate that is not the
   pinned one, a guesser trying tokens. 2. Decompression: a zip bomb, a huge declared shape, a high rank.
5. Resources: 40 submissions at once against a short queue, slow-loris connections, bodies that stall, a bad
   Content-Length, a full disk, blobs that outlive their job. 8. ONNX external data pointing out of the job.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import ssl
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from edgecraft.bench.agent.client import AgentClient, AgentError
from edgecraft.bench.agent.onnx_files import ExternalData, external_data
from edgecraft.bench.agent.protocol import fingerprint
from edgecraft.bench.agent.tokens import check_token
from tests.agent_helpers import (
    SETTINGS,
    Answer,
    RunningAgent,
    call,
    npz,
    start_agent,
    upload,
    write_token,
    write_zip_bomb,
)
from tests.conftest import edgecraft

MIB = 1 << 20


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token"
    write_token(path)
    return path


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory, token_file: Path) -> Iterator[RunningAgent]:
    """One agent with small limits for the findings that do not need one of their own."""
    running = start_agent(
        tmp_path_factory.mktemp("bounded") / "folder",
        token_file,
        *("--max-upload-mb", "2", "--max-array-mb", "64", "--max-job-mb", "64", "--max-rank", "3"),
        *("--max-queue", "2", "--idle-timeout", "1", "--request-timeout", "3", "--blob-ttl", "3"),
    )
    yield running
    running.stop()


def answers(agent: RunningAgent) -> bool:
    """The agent still serves: its description comes back."""
    return call(agent, "GET", "/v1/device").status == 200


def model_bytes(weights_location: str | None = None) -> bytes:
    """x [N, 16] → Gemm → y [N, 4]; with ``weights_location``, w's data is declared to be in that file."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((16, 4), np.float32), "w")
    if weights_location is not None:
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        entry = weights.external_data.add()
        entry.key, entry.value = "location", weights_location
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"])],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def manifest(model: str, inputs: str, layout: dict | None = None) -> bytes:
    return json.dumps(
        {
            "runtime": "onnxruntime",
            "device": "cpu",
            "model": {"format": "onnx", "files": [model]},
            "inputs": inputs,
            "settings": SETTINGS,
        }
        | ({"layout": layout} if layout else {})
    ).encode()


def submit(agent: RunningAgent, inputs: bytes, model: bytes | None = None, layout: dict | None = None) -> Answer:
    body = manifest(upload(agent, model or model_bytes()), upload(agent, inputs), layout)
    return call(agent, "POST", "/v1/jobs", body)


GOOD_INPUTS = npz({"x": np.ones((4, 16), np.float32)})


def peak_memory_mb(agent: RunningAgent) -> float:
    status = Path(f"/proc/{agent.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def raw_exchange(agent: RunningAgent, data: bytes, timeout_s: float = 10) -> bytes:
    """Send raw bytes on a new connection; what comes back until the agent closes it."""
    address = urlsplit(agent.url)
    with socket.create_connection((address.hostname, address.port), timeout=timeout_s) as connection:
        connection.sendall(data)
        return read_until_closed(connection)


def read_until_closed(connection: socket.socket, first: bytes = b"") -> bytes:
    received = first
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:  # the agent closed with bytes of ours unread: what it sent before still counts
        pass
    return received


# ----- 1. secrets


def test_a_short_token_is_refused_at_start(tmp_path: Path):
    token = tmp_path / "token"
    write_token(token, "s3cret-for-tests")
    with pytest.raises(RuntimeError, match="exit code 2") as refused:
        start_agent(tmp_path / "folder", token)
    assert (
        f"error: the token in {token} is too short (16 characters, about 96 bits): it needs at least 128 bits, i.e. "
        "at least 32 hex digits or 22 URL-safe characters; make one with `edgecraft agent token`"
    ) in str(refused.value)


@pytest.mark.parametrize(
    ("token", "strong"),
    [("0" * 32, True), ("0" * 31, False), ("G" * 22, True), ("G" * 21, False), ("!" * 20, True), ("!" * 19, False)],
)
def test_a_token_needs_128_bits_as_its_alphabet_counts_them(token: str, strong: bool):
    if strong:
        check_token(token, "the test")
    else:
        with pytest.raises(ValueError, match="too short"):
            check_token(token, "the test")


def test_a_token_file_others_can_read_is_refused_at_start(tmp_path: Path):
    token = tmp_path / "token"
    write_token(token)
    token.chmod(0o644)
    with pytest.raises(RuntimeError, match="exit code 2") as refused:
        start_agent(tmp_path / "folder", token)
    assert f"error: --token-file: {token} is open to other users (mode 644): run: chmod 600 {token}" in str(
        refused.value
    )


def test_plain_http_off_loopback_needs_insecure_http(tmp_path: Path, token_file: Path):
    with pytest.raises(RuntimeError, match="exit code 2") as refused:
        start_agent(tmp_path / "folder", token_file, "--host", "0.0.0.0", "--no-tls")
    assert (
        "error: --host 0.0.0.0 without TLS would send the token across the network in clear text: drop --no-tls "
        "(TLS is the default off loopback), or listen on 127.0.0.1 and reach the agent through an SSH tunnel"
    ) in str(refused.value)


def test_edgecraft_agent_token_writes_a_private_strong_token(tmp_path: Path):
    path = tmp_path / "config" / "agent.token"
    made = edgecraft("agent", "token", "--file", path)
    assert made.returncode == 0, made.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(path.read_text().strip()) == 43
    again = edgecraft("agent", "token", "--file", path)
    assert again.returncode == 2
    assert f"error: {path} exists: its token is kept (delete the file first to make a new one)" in again.stderr


def test_tls_certificate_is_pinned_by_its_fingerprint(tmp_path: Path, token_file: Path):
    folder = tmp_path / "folder"
    agent = start_agent(folder, token_file, tls=True)
    try:
        assert agent.url.startswith("https://127.0.0.1:") and agent.fingerprint
        address = urlsplit(agent.url)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        with (
            socket.create_connection((address.hostname, address.port), timeout=10) as plain,
            context.wrap_socket(plain) as tls,
        ):
            served = tls.getpeercert(binary_form=True)
        assert served and fingerprint(served) == agent.fingerprint
        printed = edgecraft("agent", "fingerprint", "--folder", folder)
        assert printed.stdout.strip() == agent.fingerprint
        assert oct((folder / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"

        with pytest.raises(AgentError, match="fingerprint"):
            AgentClient(agent.url, agent.token, fingerprint="sha256:" + "0" * 64).describe()
        assert AgentClient(agent.url, agent.token, fingerprint=agent.fingerprint).describe()["agent"]
        assert answers(agent)
    finally:
        agent.stop()
    again = start_agent(folder, token_file, tls=True)  # the same identity after a restart: the pin holds
    again.stop()
    assert again.fingerprint == agent.fingerprint


def test_wrong_tokens_are_limited_per_address(tmp_path: Path, token_file: Path):
    agent = start_agent(tmp_path / "folder", token_file, "--max-token-failures", "3")
    try:
        for _ in range(3):
            wrong = call(agent, "GET", "/v1/device", token="guess-" + "0" * 40)
            assert (wrong.status, wrong.body) == (
                401,
                {"error": "missing or wrong token: send 'Authorization: Bearer TOKEN'"},
            )
        limited = call(agent, "GET", "/v1/device")  # even the right token: a guesser must not learn it was right
        assert limited.status == 429
        assert limited.body["error"].startswith("too many wrong tokens from 127.0.0.1: try again in ")
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        assert call(agent, "GET", "/v1/device", source="127.0.0.2").status == 200  # another address is served
    finally:
        agent.stop()


# ----- 2. decompression


def test_a_zip_bomb_is_refused_from_its_header(bounded: RunningAgent, tmp_path: Path):
    bomb = tmp_path / "bomb.npz"
    write_zip_bomb(bomb, "x", 400 * MIB)
    assert bomb.stat().st_size < 1 * MIB
    assert answers(bounded)  # every runtime imported, so that the peak below is the bomb's alone
    before = peak_memory_mb(bounded)
    refused = submit(bounded, bomb.read_bytes())
    assert (refused.status, refused.body["error"]) == (
        413,
        "inputs: 'x' declares shape [104857600] of float32 (419430400 bytes inflated), over the limit of "
        "67108864 bytes per array",
    )
    assert peak_memory_mb(bounded) - before < 100  # nothing near 400 MB was inflated
    assert answers(bounded)


def test_arrays_over_the_job_limit_together_are_refused(bounded: RunningAgent, tmp_path: Path):
    pieces = [tmp_path / f"{name}.npz" for name in ("x", "y")]
    for piece in pieces:
        write_zip_bomb(piece, piece.stem, 40 * MIB)
    both = tmp_path / "both.npz"
    with zipfile.ZipFile(both, "w") as archive:
        for piece in pieces:
            with zipfile.ZipFile(piece) as source:
                archive.writestr(source.infolist()[0], source.read(source.infolist()[0]))
    refused = submit(bounded, both.read_bytes())
    assert (refused.status, refused.body["error"]) == (
        413,
        "inputs: 'y': the arrays inflate to 83886080 bytes or more, over the limit of 67108864 bytes for all of them",
    )
    assert answers(bounded)


def test_a_huge_declared_shape_is_refused_before_reading(bounded: RunningAgent):
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 16)})
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as writing:
        writing.writestr("x.npy", member.getvalue() + bytes(64))
    refused = submit(bounded, archive.getvalue())
    assert (refused.status, refused.body["error"]) == (
        413,
        "inputs: 'x' declares shape [1000000000000, 16] of float32 (64000000000000 bytes inflated), over the limit "
        "of 67108864 bytes per array",
    )
    assert answers(bounded)


def test_an_array_of_too_many_dimensions_is_refused(bounded: RunningAgent):
    refused = submit(bounded, npz({"x": np.zeros((1, 1, 1, 1), np.float32)}))
    assert (refused.status, refused.body["error"]) == (413, "inputs: 'x' has rank 4, over the limit of 3")
    assert answers(bounded)


@pytest.mark.parametrize(
    ("lengths", "line"),
    [
        ({"ids": 1}, "layout: names no input of the job: ids"),
        ({"x": 2}, "layout.lengths.x: no sequence axis 2 in its samples"),
        ({"x": 0}, "layout.lengths.x: no sequence axis 0 in its samples"),
    ],
)
def test_a_sequence_axis_the_inputs_do_not_have_is_refused(bounded: RunningAgent, lengths: dict, line: str):
    refused = submit(bounded, GOOD_INPUTS, layout={"lengths": lengths})
    assert (refused.status, refused.body) == (400, {"error": line})
    assert answers(bounded)


# ----- 5. resources


def test_forty_submissions_at_once_get_202_or_429_and_no_reset(bounded: RunningAgent):
    body = manifest(upload(bounded, model_bytes()), upload(bounded, GOOD_INPUTS))
    with ThreadPoolExecutor(40) as pool:
        outcomes = list(pool.map(lambda _: _try(lambda: call(bounded, "POST", "/v1/jobs", body)), range(40)))
    failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert not failures, failures  # no connection reset, refused or timed out
    statuses = sorted({outcome.status for outcome in outcomes})
    assert statuses == [202, 429], statuses
    full = next(outcome for outcome in outcomes if outcome.status == 429)
    assert full.body == {
        "error": "the queue is full (2 jobs waiting, this agent's --max-queue): submit again once one ran",
        "queue_limit": 2,
    }
    assert full.headers["Retry-After"] == "30"
    for accepted in (outcome for outcome in outcomes if outcome.status == 202):  # leave the queue empty
        job = accepted.body["job"]
        while call(bounded, "DELETE", f"/v1/jobs/{job}").status == 409:  # running: deleted once done
            time.sleep(0.1)
    assert answers(bounded)


def _try(action):
    try:
        return action()
    except Exception as exc:  # noqa: BLE001 - the test asserts there are none
        return exc


def test_slow_loris_connections_are_closed_after_the_header_timeout(tmp_path: Path, token_file: Path):
    agent = start_agent(tmp_path / "folder", token_file, "--max-connections", "4", "--header-timeout", "1")
    address = urlsplit(agent.url)
    try:
        lorises = [socket.create_connection((address.hostname, address.port), timeout=10) for _ in range(6)]
        for loris in lorises[1:]:  # the first sends nothing at all
            loris.sendall(b"GET /v1/device HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
        time.sleep(0.3)
        busy = call(agent, "GET", "/v1/device")
        assert busy.status == 503  # uvicorn's limit: --max-connections are taken
        for loris in lorises:
            assert loris.recv(1024) == b""  # closed by the agent, not by us
            loris.close()
        assert answers(agent)
    finally:
        agent.stop()


def test_a_stalled_or_dragging_body_is_answered_408(bounded: RunningAgent):
    address = urlsplit(bounded.url)
    head = (
        f"PUT /v1/blobs/{'0' * 64} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {bounded.token}\r\n"
        "Content-Length: 100\r\n\r\n"
    ).encode()
    stalled = raw_exchange(bounded, head + b"0123456789")
    assert stalled.startswith(b"HTTP/1.1 408 ")
    assert b'{"error":"the request\'s body stalled for 1 s (the agent\'s --idle-timeout)"}' in stalled

    with socket.create_connection((address.hostname, address.port), timeout=0.4) as dragging:
        dragging.sendall(head)
        first = b""
        for _ in range(25):  # a byte every 0.4 s: never idle for 1 s, past 3 s in all
            try:
                first = dragging.recv(65536)
                break
            except TimeoutError:
                dragging.sendall(b"x")
        dragging.settimeout(10)
        answer = read_until_closed(dragging, first)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'{"error":"the request\'s body took longer than 3 s (the agent\'s --request-timeout)"}' in answer
    assert answers(bounded)


@pytest.mark.parametrize(
    "length_headers",
    ["Content-Length: \u00b2", "Content-Length: -1", "Content-Length: 1, 2", "Content-Length: 1\r\nContent-Length: 2"],
)
def test_a_bad_content_length_is_answered_400(bounded: RunningAgent, length_headers: str):
    request = (
        f"PUT /v1/blobs/{'0' * 64} HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer {bounded.token}\r\n"
        f"{length_headers}\r\n\r\nx"
    ).encode()
    answer = raw_exchange(bounded, request)
    assert answer.startswith(b"HTTP/1.1 400 ") and answer.endswith(b"Invalid HTTP request received."), answer
    assert answers(bounded)


def test_uploads_past_the_disk_quota_are_answered_507(tmp_path: Path, token_file: Path):
    agent = start_agent(tmp_path / "folder", token_file, "--max-disk-mb", "1")
    try:
        upload(agent, os.urandom(700_000))
        second = os.urandom(700_000)
        refused = call(agent, "PUT", f"/v1/blobs/{hashlib.sha256(second).hexdigest()}", second)
        assert refused.status == 507
        assert refused.body["error"].startswith(f"uploading blob {hashlib.sha256(second).hexdigest()} (700000 bytes)")
        assert refused.body["error"].endswith(
            "over its --max-disk-mb of 1 MiB: delete finished jobs or raise the limit"
        )
        assert not list((agent.folder / "blobs").glob(".upload-*"))
        assert answers(agent)
    finally:
        agent.stop()


def test_blobs_go_with_their_job_and_unused_ones_after_their_ttl(bounded: RunningAgent):
    accepted = submit(bounded, npz({"x": np.full((2, 16), 7, np.float32)}))
    assert accepted.status == 202, accepted.body
    job = accepted.body["job"]
    while call(bounded, "GET", f"/v1/jobs/{job}").body["state"] in ("queued", "running"):
        time.sleep(0.1)
    blobs = bounded.folder / "blobs"
    used = set(json.loads((bounded.folder / "jobs" / job / "state.json").read_text())["blobs"])
    assert used <= {path.name for path in blobs.iterdir()}
    assert call(bounded, "DELETE", f"/v1/jobs/{job}").status == 200
    assert not used & {path.name for path in blobs.iterdir()}

    unused = upload(bounded, b"never used by a job")
    deadline = time.monotonic() + 15  # --blob-ttl 3, swept every 3 s
    while (blobs / unused).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (blobs / unused).exists()
    assert call(bounded, "HEAD", f"/v1/blobs/{unused}").status == 404
    assert answers(bounded)


# ----- 8. ONNX external data


@pytest.mark.parametrize(
    ("location", "line"),
    [
        (
            "../../etc/passwd",
            "model: tensor 'w' points its external data at '../../etc/passwd', outside the job's folder",
        ),
        ("/etc/passwd", "model: tensor 'w' points its external data at '/etc/passwd', outside the job's folder"),
        (
            "weights.bin",
            "model: tensor 'w' keeps its data in a separate file 'weights.bin', which a job does not carry: save the "
            "model as one file (onnx.save(model, path, save_as_external_data=False))",
        ),
    ],
)
def test_onnx_external_data_is_refused_before_loading(bounded: RunningAgent, location: str, line: str):
    refused = submit(bounded, GOOD_INPUTS, model_bytes(location))
    assert (refused.status, refused.body) == (400, {"error": line})
    assert answers(bounded)


def test_external_data_is_found_wherever_a_tensor_can_be(tmp_path: Path):
    """In a subgraph's constant, a sparse initializer's values and a function's node, not only the initializers."""
    from onnx import TensorProto, helper, numpy_helper

    def external(name: str) -> TensorProto:
        tensor = numpy_helper.from_array(np.ones(2, np.float32), name)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key, entry.value = "location", f"../{name}.bin"
        return tensor

    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=external("in_branch"))],
        "branch",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    sparse = helper.make_sparse_tensor(external("sparse_values"), numpy_helper.from_array(np.array([0, 1])), [4])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        sparse_initializer=[sparse],
    )
    function = helper.make_function(
        "local", "f", [], ["z"], [helper.make_node("Constant", [], ["z"], value=external("in_function"))], []
    )
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, functions=[function]).SerializeToString())
    assert sorted(external_data(path), key=lambda found: found.tensor) == [
        ExternalData("in_branch", "../in_branch.bin"),
        ExternalData("in_branch", "../in_branch.bin"),  # the then and else branches
        ExternalData("in_function", "../in_function.bin"),
        ExternalData("sparse_values", "../sparse_values.bin"),
    ]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="not a valid ONNX file"):
        external_data(path)


def test_the_agent_still_measures_after_all_that(bounded: RunningAgent):
    """After every refusal above, a good job still runs."""
    accepted = submit(bounded, GOOD_INPUTS)
    assert accepted.status == 202, accepted.body
    job = accepted.body["job"]
    deadline = time.monotonic() + 60
    while (state := call(bounded, "GET", f"/v1/jobs/{job}").body["state"]) in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state == "done", call(bounded, "GET", f"/v1/jobs/{job}").body
