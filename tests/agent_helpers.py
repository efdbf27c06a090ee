"""Start a device agent (``edgecraft agent serve``) as a subprocess on loopback, and stop or kill it.

No pytest here, so that any test (the agent's own, an end-to-end recipe with a remote target) can use it. The
agent runs behind an import blocker: torch, TensorFlow and the ``onnx`` package raise ImportError in it, as
on an edge box that has only ``edgecraft[agent]``; a job that succeeds there proves the agent needs none of them.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
BLOCKED_MODULES = ("torch", "tensorflow", "onnx")  # exact top-level names: onnxruntime stays importable

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


@dataclass
class RunningAgent:
    """An agent subprocess: its URL, token and folder; ``kill`` crashes it, ``stop`` ends it and its workers."""

    process: subprocess.Popen
    url: str
    token: str
    folder: Path
    _stderr: IO[bytes] = field(repr=False)

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
    blocked: tuple[str, ...] = BLOCKED_MODULES,
    timeout_s: float = 60.0,
) -> RunningAgent:
    """``edgecraft agent serve --host 127.0.0.1 --port 0 --folder FOLDER --token-file TOKEN_FILE OPTIONS...``,
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
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=timeout_s)
    except queue.Empty:
        line = ""
    prefix = "edgecraft agent listening on "
    if not line.startswith(prefix):
        RunningAgent(process, "", "", folder, stderr).stop()
        raise RuntimeError(
            f"the agent did not start (exit code {process.returncode}; stdout {line!r}): {_read(stderr)}"
        )
    url = line[len(prefix) :].split(" ", 1)[0]
    return RunningAgent(process, url, token_file.read_text().strip() if token_file else "", folder, stderr)


def _read(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read().decode(errors="replace")
