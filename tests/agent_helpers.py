"""Start a device agent (``edgecraft agent serve``) as a subprocess on loopback, and stop or kill it.

No pytest here, so that any test (the agent's own, an end-to-end recipe with a remote target) can use it. The
agent runs behind an import blocker: torch, TensorFlow and the ``onnx`` package raise ImportError in it, as
on an edge box that has only ``edgecraft[agent]``; a job that succeeds there proves the agent needs none of them.
``write_token`` makes a token file the agent accepts (128 bits or more, mode 600).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import queue
import secrets
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import numpy as np

REPO = Path(__file__).resolve().parent.parent
BLOCKED_MODULES = ("torch", "tensorflow", "onnx")  # exact top-level names: onnxruntime stays importable
FINGERPRINT_PREFIX = "certificate fingerprint: "

# Runs the real command line with a meta-path finder that refuses the blocked packages (and their submodules).
BLOCKED_CLI = """
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: the agent must run without it")
        return None

sys.meta_path.insert(0, Blocker())
from edgecraft.cli import main
sys.exit(main(sys.argv[1:]))
"""
# A job's benchmark settings in tests: tiny phases, a job is one worker process of a second or two.
SETTINGS = {
    "profile": "quick",
    "warmup_runs": 1,
    "warmup_s": 0.0,
    "runs": 5,
    "measure_s": 0.05,
    "max_runs": 1000,
    "max_s": 5.0,
    "repetitions": 1,
    "batch_sizes": [1],
    "throughput_s": 0.0,
    "operator_profile": False,
    "timeout_s": 60,
}


def write_token(path: Path, token: str | None = None) -> str:
    """``token`` (else a new one) in ``path``, readable by its owner only, as ``edgecraft agent token --file``
    writes one."""
    token = token or secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token


@dataclass
class RunningAgent:
    """An agent subprocess: its URL, token, folder and (with TLS) the fingerprint it printed; ``kill`` crashes it,
    ``stop`` ends it and its workers."""

    process: subprocess.Popen
    url: str
    token: str
    folder: Path
    _stderr: IO[bytes] = field(repr=False)
    fingerprint: str | None = None

    def kill(self) -> None:
        """SIGKILL the agent alone, as a crash would: the benchmark process it was running is left behind."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        """End the agent and every process it started (its process group)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)  # its own session: the group id is its pid
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()

    def log(self) -> str:
        """What the agent wrote to stderr so far (one line per job start and end, or a traceback)."""
        return _read(self._stderr)


def start_agent(
    folder: Path,
    token_file: Path | None,
    *options: str,
    tls: bool = False,
    blocked: tuple[str, ...] = BLOCKED_MODULES,
    timeout_s: float = 60.0,
) -> RunningAgent:
    """``edgecraft agent serve --host 127.0.0.1 --port 0 --folder FOLDER --token-file TOKEN_FILE [--tls] OPTIONS...``,
    once it listens; ``RuntimeError`` with its stderr when it exits or stays silent for ``timeout_s`` instead.
    Without a token file (and with $EDGECRAFT_AGENT_TOKEN removed) the agent must refuse to start."""
    command = [
        sys.executable,
        "-c",
        BLOCKED_CLI.format(blocked=blocked),
        "agent",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--folder",
        str(folder),
        *(["--tls"] if tls else []),
        *options,
    ]
    if token_file is not None:
        command += ["--token-file", str(token_file)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("EDGECRAFT_AGENT_TOKEN", None)
    stderr = tempfile.TemporaryFile()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_forward, args=(process.stdout, lines), daemon=True).start()
    listening = _next_line(lines, timeout_s)
    prefix = "edgecraft agent listening on "
    fingerprint = _next_line(lines, timeout_s) if listening.startswith(prefix + "https://") else ""
    if not listening.startswith(prefix) or (tls and not fingerprint.startswith(FINGERPRINT_PREFIX)):
        RunningAgent(process, "", "", folder, stderr).stop()
        raise RuntimeError(
            f"the agent did not start (exit code {process.returncode}; stdout {listening + fingerprint!r}): "
            f"{_read(stderr)}"
        )
    url = listening[len(prefix) :].split(" ", 1)[0]
    token = token_file.read_text().strip() if token_file else ""
    return RunningAgent(
        process, url, token, folder, stderr, fingerprint.removeprefix(FINGERPRINT_PREFIX).strip() or None
    )


def _forward(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Every line the agent prints, as it prints it, then "" once it closed its stdout (read in a thread: a silent
    agent must not block the test)."""
    for line in stream:
        lines.put(line)
    lines.put("")


def _next_line(lines: queue.Queue[str], timeout_s: float) -> str:
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        return ""


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict  # the JSON answer; {} when there is none
    headers: http.client.HTTPMessage


def call(
    agent: RunningAgent,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    authorize: bool = True,
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> Answer:
    """One raw request (http.client sends the path exactly as given), with ``token`` or else the agent's own
    (none if not ``authorize``), from the local address ``source``. Over TLS the certificate is not checked
    here: the tests of pinning do that on purpose."""
    address = urlsplit(agent.url)
    if address.scheme == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            address.hostname, address.port, timeout=30, context=context, source_address=(source, 0) if source else None
        )
    else:
        connection = http.client.HTTPConnection(
            address.hostname, address.port, timeout=30, source_address=(source, 0) if source else None
        )
    sent = {"Authorization": f"Bearer {token or agent.token}"} if authorize else {}
    try:
        connection.request(method, path, body=body, headers=sent | (headers or {}))
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    answer = json.loads(data) if data and response.getheader("Content-Type") == "application/json" else {}
    return Answer(response.status, answer, response.headers)


def upload(agent: RunningAgent, data: bytes) -> str:
    """``data`` as a blob on the agent; its name (sha256)."""
    name = hashlib.sha256(data).hexdigest()
    answer = call(agent, "PUT", f"/v1/blobs/{name}", data)
    assert (answer.status, answer.body) == (200, {"sha256": name}), answer
    return name


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_zip_bomb(target: Path | IO[bytes], name: str, inflated: int) -> None:
    """An .npz whose one float32 array ``name`` of zeros inflates to ``inflated`` bytes (a few hundred KB as sent),
    written in pieces, never whole in memory."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.float32)) | {"shape": (inflated // 4,)}
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(f"{name}.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, header)
        zeros = bytes(1 << 20)
        for _ in range(inflated // len(zeros)):
            member.write(zeros)
