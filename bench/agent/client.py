"""The client of a device agent: upload a model and its inputs, wait for the job, fetch the raw measurements.

Standard library HTTP (``urllib``), like the agent. It writes nothing to disk: the caller turns the raws and
outputs into a measurement the way a local run does.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgecraft.bench.agent.protocol import PREFIX

_FIRST_POLL_S = 0.2
_LONGEST_POLL_S = 1.0


class AgentError(Exception):
    """The agent could not be reached, refused a request (``status``: the HTTP status), failed the job or stopped
    answering during it; the message says which, with the agent's URL."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RemoteResult:
    """One job's raw numbers: a worker's raw dict per repetition (``index`` and ``order`` added, as
    ``bench.harness.measure_all`` adds them), every output of the accuracy pass, and the device description."""

    raws: list[dict]
    outputs: dict[str, np.ndarray]
    device: dict
    started_at: float
    finished_at: float


class _Unanswered(Exception):
    """No HTTP answer at all (connection refused or reset, timeout): the caller says what it was doing."""


class AgentClient:
    def __init__(self, url: str, token: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s

    def describe(self) -> dict:
        """The agent's machine, its targets (None where one runs, else why not) and its limits."""
        return self._json("GET", "/device")

    def measure(
        self,
        *,
        runtime: str,
        device: str,
        options: dict,
        model_format: str,
        model_files: list[Path],
        inputs: dict[str, np.ndarray],
        settings: dict,
        deadline_s: float,
        on_status: Callable[[dict], None] = lambda status: None,
    ) -> RemoteResult:
        """Measure ``model_files`` (an OpenVINO IR: [.xml, .bin]) on the agent's ``runtime:device`` and return the
        raw results; the job is deleted from the agent once fetched. ``deadline_s``: seconds from now after which
        waiting for the job stops (each request is bounded by ``timeout_s``); ``on_status`` gets every status the
        agent reports (state, queue position). ``settings``: every ``BenchSettings`` field, e.g. its model_dump()."""
        deadline = time.monotonic() + deadline_s
        limit = self.describe()["agent"]["max_upload_bytes"]
        archive = io.BytesIO()
        arrays: dict[str, Any] = inputs  # Any: mypy checks ** against savez's allow_pickle too
        np.savez(archive, **arrays)
        blobs = [self._upload(path.name, path.open, limit) for path in model_files]
        inputs_blob = self._upload("the inputs", lambda mode: io.BytesIO(archive.getvalue()), limit)
        manifest = {
            "runtime": runtime,
            "device": device,
            "options": options,
            "model": {"format": model_format, "files": blobs},
            "inputs": inputs_blob,
            "settings": settings,
        }
        status = self._json("POST", "/jobs", manifest)
        try:
            return self._follow(status, deadline, deadline_s, on_status)
        except _Unanswered as exc:
            raise AgentError(f"the agent at {self.url} stopped answering during job {status['job']}: {exc}") from None

    def _follow(
        self, status: dict, deadline: float, deadline_s: float, on_status: Callable[[dict], None]
    ) -> RemoteResult:
        """Poll a submitted job until it ends; its result, or ``AgentError`` with the agent's reason."""
        job = status["job"]
        pause = _FIRST_POLL_S
        while status["state"] in ("queued", "running"):
            on_status(status)
            if time.monotonic() + pause > deadline:
                self._forget(job)
                raise AgentError(
                    f"job {job} on the agent at {self.url} did not finish within {deadline_s:g} s "
                    f"(it was {status['state']})"
                )
            time.sleep(pause)
            pause = min(_LONGEST_POLL_S, pause * 1.5)
            status = self._json("GET", f"/jobs/{job}", during=job)
        on_status(status)
        if status["state"] == "failed":
            self._forget(job)
            raise AgentError(f"job {job} failed on the agent at {self.url}: {status['reason']}")
        result = self._json("GET", f"/jobs/{job}/result", during=job)
        with np.load(io.BytesIO(self._call("GET", f"/jobs/{job}/outputs", during=job)), allow_pickle=False) as archive:
            outputs = {name: archive[name] for name in archive.files}
        self._forget(job)
        return RemoteResult(
            raws=result["raws"],
            outputs=outputs,
            device=result["device"],
            started_at=result["started_at"],
            finished_at=result["finished_at"],
        )

    def _upload(self, what: str, open_file: Callable[[Literal["rb"]], io.BufferedIOBase], limit: int) -> str:
        """Upload a file, streamed, as a blob named by its sha256 unless the agent has it already; its sha256."""
        with open_file("rb") as handle:
            name = hashlib.file_digest(handle, "sha256").hexdigest()
            size = handle.seek(0, io.SEEK_END)
        if size > limit:
            raise AgentError(
                f"{what} is {size} bytes, over the upload limit of the agent at {self.url} ({limit} "
                "bytes: its --max-upload-mb)"
            )
        if not self._has_blob(name):
            with open_file("rb") as handle:
                self._call("PUT", f"/blobs/{name}", handle, size=size)
        return name

    def _has_blob(self, name: str) -> bool:
        try:
            self._call("HEAD", f"/blobs/{name}")
        except AgentError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return False
            raise
        return True

    def _forget(self, job: str) -> None:
        """Delete a job that is no longer wanted (fetched, failed or given up on); a queued one never runs."""
        try:
            self._call("DELETE", f"/jobs/{job}", during=job)
        except (AgentError, _Unanswered):
            pass  # a running job cannot be deleted, and a lost job is the agent's disk, not the caller's result

    def _json(self, method: str, path: str, body: Any = None, during: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        return json.loads(self._call(method, path, data, during))

    def _call(
        self,
        method: str,
        path: str,
        data: bytes | io.BufferedIOBase | None = None,
        during: str | None = None,
        size: int | None = None,
    ) -> bytes:
        """The body of the answer; ``AgentError`` for an HTTP error status, and for no answer at all unless
        ``during`` a job (then ``_Unanswered``, which the caller reports as the agent stopping)."""
        request = urllib.request.Request(
            f"{self.url}{PREFIX}{path}", data=data, method=method, headers={"Authorization": f"Bearer {self._token}"}
        )
        if data is not None:  # the agent wants the length before the body (urllib would send a file chunked)
            if size is None:
                assert isinstance(data, bytes), "a file body is sent with its size"
                size = len(data)
            request.add_header("Content-Length", str(size))
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            raise AgentError(
                f"the agent at {self.url} refused {method} {PREFIX}{path}: HTTP {exc.code}: {_error_text(exc)}",
                status=exc.code,
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            if during is not None:
                raise _Unanswered(str(reason)) from None
            raise AgentError(f"cannot reach the agent at {self.url}: {reason}") from None


def _error_text(error: urllib.error.HTTPError) -> str:
    body = error.read()
    try:
        return json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")[:300] or error.reason
