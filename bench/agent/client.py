"""The client of a device agent: upload a model and its inputs, wait for the job, fetch the raw measurements.

Standard library HTTP (``http.client`` and ``ssl``): the host needs nothing new to talk to an agent, and
``http.client`` offers the one moment pinning needs. Its ``connect()`` completes the TLS handshake before a byte of
the request is sent, so the agent's self-signed certificate is compared with the pinned fingerprint there, before the
bearer token leaves this machine (like SSH's known hosts: the pin is the trust, not a certificate authority). urllib
hides that moment; requests or httpx would be a new dependency for the same check.

An agent is untrusted input. Every answer is read up to a cap whatever its Content-Length says, then checked
against the protocol's models (``bench.agent.protocol``); outputs are read by ``protocol.read_npz`` within limits
derived from the reference outputs. Anything else is an ``AgentError`` naming the endpoint and the first problem.
It writes nothing to disk: the caller turns the raws and outputs into a measurement the way a local run does.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import numpy as np
from pydantic import BaseModel, ValidationError

from edgecraft.bench.agent.protocol import (
    MAX_JSON_ANSWER_BYTES,
    PREFIX,
    ArrayLimits,
    DeviceDescription,
    JobResult,
    JobStatus,
    fingerprint,
    read_npz,
)
from edgecraft.bench.raw import problems

_FIRST_POLL_S = 0.2
_LONGEST_POLL_S = 1.0
_LONGEST_RETRY_AFTER_S = 30.0  # a busy agent's Retry-After is followed up to this, and never past the row's deadline
_ERROR_ANSWER_BYTES = 64 << 10  # an error answer is one line of JSON: more is not read
_CHUNK = 1 << 20
_REASON_CHARS = 300  # what of an agent's own text (an error, a job's reason) goes into a row's reason

Answer = TypeVar("Answer", bound=BaseModel)


class AgentError(Exception):
    """The agent could not be reached, refused a request (``status``: the HTTP status), answered something that is
    not the protocol, failed the job or stopped answering during it; the message says which, with its URL."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RemoteResult:
    """One job's raw numbers: a worker's raw dict per repetition, checked as a local worker's (``index`` and
    ``order`` added, as ``bench.harness.measure_all`` adds them), the outputs of the accuracy pass that the
    reference has, and the device description (checked against ``DeviceDescription``)."""

    raws: list[dict]
    outputs: dict[str, np.ndarray]
    device: dict
    started_at: float
    finished_at: float


class _Unanswered(Exception):
    """No HTTP answer at all (connection refused or reset, timeout): the caller says what it was doing."""


def output_limits(expected: Mapping[str, np.ndarray]) -> ArrayLimits:
    """What an agent's outputs may inflate to: each a few times the largest reference output (the shapes must match
    the reference; the factor allows a wider dtype, the MiB a tiny output), whatever the .npz headers declare."""
    slack = 1 << 20
    return ArrayLimits(
        max_array_bytes=4 * max((array.nbytes for array in expected.values()), default=0) + slack,
        max_total_bytes=4 * sum(array.nbytes for array in expected.values()) + slack,
    )


def one_line(text: str, limit: int = _REASON_CHARS) -> str:
    """An agent's text fit for a row's reason: printable, on one line, at most ``limit`` characters."""
    printable = "".join(char if char.isprintable() else " " for char in text)
    flat = " ".join(printable.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an agent with a self-signed certificate, trusted by its pinned fingerprint: checked right after the
    handshake, before the request (and its token) is sent."""

    def __init__(self, host: str, port: int | None, timeout: float, pinned: str | None, url: str):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # no authority signed it: the pin below is the check
        super().__init__(host, port, timeout=timeout, context=context, blocksize=_CHUNK)
        self._pinned = pinned
        self._url = url

    def connect(self) -> None:
        super().connect()
        assert isinstance(self.sock, ssl.SSLSocket)  # HTTPSConnection.connect wraps it
        certificate = self.sock.getpeercert(binary_form=True)
        presented = fingerprint(certificate) if certificate else "no certificate"
        if presented == self._pinned:
            return
        self.close()
        if self._pinned is None:
            raise AgentError(
                f"the agent at {self._url} serves TLS but its certificate is not pinned: add "
                f"'fingerprint: {presented}' to the device once you have checked that it is the one the agent "
                "printed on start (or that `edgecraft agent fingerprint` prints on the board)"
            )
        raise AgentError(
            f"the agent at {self._url} presented the certificate {presented}, not the pinned {self._pinned}: "
            "nothing was sent; like SSH's known hosts, if the agent's certificate was remade on purpose, update the "
            "device's fingerprint (the agent prints it on start)"
        )


class AgentClient:
    """The agent at ``url``: every request carries the token, every answer is checked before it is used. One
    connection per request: a job is a handful of requests and polls, not worth a connection pool."""

    def __init__(
        self,
        url: str,
        token: str,
        fingerprint: str | None = None,
        timeout_s: float = 30.0,
        max_outputs_bytes: int = 256 << 20,
    ):
        """``fingerprint``: the agent's certificate, ``sha256:…`` (an https URL needs it); ``timeout_s``: the
        longest silence of the agent during one request; ``max_outputs_bytes``: the most a job's outputs may weigh
        as sent (the reference outputs set a tighter bound per job, see ``output_limits``)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise AgentError(f"expected an http(s) URL for the agent such as 'https://192.168.1.20:8765', got {url!r}")
        self.url = url.rstrip("/")
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port  # ValueError for a bad port
        self._path = parts.path.rstrip("/")
        self._token = token
        self._fingerprint = fingerprint
        self.timeout_s = timeout_s
        self.max_outputs_bytes = max_outputs_bytes

    def describe(self) -> dict:
        """The agent's machine, its targets (None where one runs, else why not) and its limits, checked against
        ``DeviceDescription``."""
        return self._description(time.monotonic() + self.timeout_s).model_dump()

    def measure(
        self,
        *,
        runtime: str,
        device: str,
        options: dict,
        model_format: str,
        model_files: list[Path],
        inputs: dict[str, np.ndarray],
        expected_outputs: Mapping[str, np.ndarray],
        settings: dict,
        deadline_s: float,
        layout: Mapping[str, Any] | None = None,
        on_status: Callable[[JobStatus], None] = lambda status: None,
    ) -> RemoteResult:
        """Measure ``model_files`` (an OpenVINO IR: [.xml, .bin]) on the agent's ``runtime:device`` and return the
        raw results; the job is deleted from the agent once fetched. ``expected_outputs``: the reference outputs,
        whose names are the outputs read back and whose sizes bound them. ``deadline_s``: seconds from now after
        which the row stops waiting (queue, busy answers and slow reads included); ``on_status`` gets every status
        the agent reports. ``settings``: every ``BenchSettings`` field, e.g. its model_dump(). ``layout``: how the
        model takes the sample-major ``inputs`` (``targets.feeds.Layout.to_json()``); None: the plain one."""
        deadline = time.monotonic() + deadline_s
        limit = self._description(deadline).agent.max_upload_bytes
        archive = io.BytesIO()
        arrays: dict[str, Any] = inputs  # Any: mypy checks ** against savez's allow_pickle too
        np.savez(archive, **arrays)
        blobs = [self._upload(path.name, path, limit, deadline) for path in model_files]
        inputs_blob = self._upload("the inputs", archive.getvalue(), limit, deadline)
        manifest = {
            "runtime": runtime,
            "device": device,
            "options": options,
            "model": {"format": model_format, "files": blobs},
            "inputs": inputs_blob,
            "settings": settings,
        } | ({"layout": layout} if layout else {})  # an agent older than layouts still takes a plain model
        status = self._answer(JobStatus, "POST", "/jobs", deadline, json.dumps(manifest).encode())
        try:
            return self._follow(status, expected_outputs, deadline, deadline_s, on_status)
        except _Unanswered as exc:
            raise AgentError(f"the agent at {self.url} stopped answering during job {status.job}: {exc}") from None
        finally:
            self._forget(status.job)

    def _description(self, deadline: float) -> DeviceDescription:
        return self._answer(DeviceDescription, "GET", "/device", deadline)

    def _follow(
        self,
        status: JobStatus,
        expected: Mapping[str, np.ndarray],
        deadline: float,
        deadline_s: float,
        on_status: Callable[[JobStatus], None],
    ) -> RemoteResult:
        """Poll a submitted job until it ends; its result and outputs, or ``AgentError`` with the agent's reason."""
        job = status.job
        pause = _FIRST_POLL_S
        while status.state in ("queued", "running"):
            on_status(status)
            if time.monotonic() + pause > deadline:
                raise AgentError(
                    f"job {job} on the agent at {self.url} did not finish within {deadline_s:g} s "
                    f"(it was {status.state})"
                )
            time.sleep(pause)
            pause = min(_LONGEST_POLL_S, pause * 1.5)
            status = self._answer(JobStatus, "GET", f"/jobs/{job}", deadline, during=job)
            if status.job != job:
                raise AgentError(f"the agent at {self.url} answered GET {PREFIX}/jobs/{job} about job {status.job}")
        on_status(status)
        if status.state == "failed":
            raise AgentError(f"job {job} failed on the agent at {self.url}: {one_line(status.reason or '')}")
        result = self._answer(JobResult, "GET", f"/jobs/{job}/result", deadline, during=job)
        return RemoteResult(
            raws=[raw.model_dump() for raw in result.raws],
            outputs=self._outputs(job, expected, deadline),
            device=result.device.model_dump(),
            started_at=result.started_at,
            finished_at=result.finished_at,
        )

    def _outputs(self, job: str, expected: Mapping[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        """The job's outputs that the reference has, bounded on the wire and inflated (see ``output_limits``)."""
        limits = output_limits(expected)
        path = f"/jobs/{job}/outputs"
        # An .npz as the worker writes it is stored, not compressed: its bytes are about the arrays' bytes.
        sent = self._call(
            "GET",
            path,
            deadline,
            limit=min(self.max_outputs_bytes, limits.max_total_bytes),
            limit_note="the most a job's outputs may weigh here (4× the reference outputs + 1 MiB, at most the "
            "device's max_outputs_mb)",
            during=job,
        )
        try:
            return read_npz(sent, limits, wanted=expected.keys())
        except ValueError as exc:
            raise AgentError(
                f"the agent at {self.url} answered GET {PREFIX}{path} with outputs this host refuses: {exc}"
            ) from None

    def _upload(self, what: str, body: bytes | Path, limit: int, deadline: float) -> str:
        """Upload a file (streamed) or bytes as a blob named by its sha256 unless the agent has it already."""
        if isinstance(body, Path):
            with body.open("rb") as handle:
                name = hashlib.file_digest(handle, "sha256").hexdigest()
            size = body.stat().st_size
        else:
            name, size = hashlib.sha256(body).hexdigest(), len(body)
        if size > limit:
            raise AgentError(
                f"{what} is {size} bytes, over the upload limit of the agent at {self.url} ({limit} "
                "bytes: its --max-upload-mb)"
            )
        if not self._has_blob(name, deadline):
            self._call("PUT", f"/blobs/{name}", deadline, body)
        return name

    def _has_blob(self, name: str, deadline: float) -> bool:
        try:
            self._call("HEAD", f"/blobs/{name}", deadline)
        except AgentError as exc:
            if exc.status == HTTPStatus.NOT_FOUND:
                return False
            raise
        return True

    def _forget(self, job: str) -> None:
        """Delete a job that is no longer wanted (fetched, failed or given up on); a queued one never runs."""
        try:
            self._call("DELETE", f"/jobs/{job}", time.monotonic() + self.timeout_s, during=job)
        except (AgentError, _Unanswered):
            pass  # a running job cannot be deleted, and a lost job is the agent's disk, not the caller's result

    def _answer(
        self,
        model: type[Answer],
        method: str,
        path: str,
        deadline: float,
        body: bytes | None = None,
        during: str | None = None,
    ) -> Answer:
        """A JSON answer read within ``MAX_JSON_ANSWER_BYTES`` and checked against ``model``."""
        text = self._call(method, path, deadline, body, during=during)
        endpoint = f"{method} {PREFIX}{path}"
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested deeper than Python recurses
            raise AgentError(
                f"the agent at {self.url} answered {endpoint} with something that is not JSON "
                f"({one_line(str(exc) or type(exc).__name__, 120)})"
            ) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise AgentError(
                f"the agent at {self.url} answered {endpoint} with an invalid {model.__name__}: "
                f"{one_line(problems(exc))}"
            ) from None

    def _call(
        self,
        method: str,
        path: str,
        deadline: float,
        body: bytes | Path | None = None,
        limit: int = MAX_JSON_ANSWER_BYTES,
        limit_note: str = "the most a JSON answer of the protocol may weigh",
        during: str | None = None,
    ) -> bytes:
        """The body of the answer, at most ``limit`` bytes; a busy agent (429, 503) is asked again after its
        Retry-After while ``deadline`` allows. ``AgentError`` for an HTTP error status, and for no answer at all
        unless ``during`` a job (then ``_Unanswered``, which the caller reports as the agent stopping)."""
        endpoint = f"{method} {PREFIX}{path}"
        while True:
            try:
                status, retry_after, answer = self._exchange(method, path, deadline, body, limit, limit_note)
            except (OSError, http.client.HTTPException) as exc:
                reason = one_line(str(exc) or type(exc).__name__)
                if during is not None:
                    raise _Unanswered(reason) from None
                raise AgentError(f"cannot reach the agent at {self.url}: {reason}") from None
            if HTTPStatus.OK <= status < HTTPStatus.MULTIPLE_CHOICES:
                return answer
            refusal = f"the agent at {self.url} refused {endpoint}: HTTP {status}: {_error_text(answer)}"
            busy = status in (HTTPStatus.TOO_MANY_REQUESTS, HTTPStatus.SERVICE_UNAVAILABLE)
            if not busy or time.monotonic() + retry_after > deadline:
                raise AgentError(refusal, status=status)
            time.sleep(retry_after)

    def _exchange(
        self, method: str, path: str, deadline: float, body: bytes | Path | None, limit: int, limit_note: str
    ) -> tuple[int, float, bytes]:
        """One request on a fresh connection: the status, how long a busy agent asks to wait, and the body (an
        error's only its first ``_ERROR_ANSWER_BYTES``)."""
        connection = self._connection()
        target, endpoint = f"{self._path}{PREFIX}{path}", f"{method} {PREFIX}{path}"
        try:
            headers = {"Authorization": f"Bearer {self._token}"}
            if isinstance(body, Path):
                # Streamed, with its length first: the agent wants it before the body (http.client would chunk it).
                with body.open("rb") as handle:
                    headers["Content-Length"] = str(body.stat().st_size)
                    connection.request(method, target, handle, headers)
            else:
                connection.request(method, target, body, headers)
            response = connection.getresponse()
            if not HTTPStatus.OK <= response.status < HTTPStatus.MULTIPLE_CHOICES:
                error = self._read(response, _ERROR_ANSWER_BYTES, deadline, endpoint)[:_ERROR_ANSWER_BYTES]
                return response.status, _retry_after(response.getheader("Retry-After")), error
            answer = self._read(response, limit, deadline, endpoint)
            if len(answer) > limit:
                raise AgentError(
                    f"the agent at {self.url} answered {endpoint} with more than {limit} bytes, {limit_note}"
                )
            return response.status, 0.0, answer
        finally:
            connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        if self._https:
            return _PinnedHTTPSConnection(self._host, self._port, self.timeout_s, self._fingerprint, self.url)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s, blocksize=_CHUNK)

    def _read(self, response: http.client.HTTPResponse, limit: int, deadline: float, endpoint: str) -> bytes:
        """The body, but never more than ``limit`` + 1 bytes and never past ``deadline``: an agent's Content-Length
        is not believed (a 200 MB answer stops here), nor an agent that sends a byte now and then."""
        chunks, size = [], 0
        while size <= limit and (chunk := response.read1(min(_CHUNK, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
            if time.monotonic() > deadline:
                raise AgentError(f"the agent at {self.url} was still sending its answer to {endpoint} at the deadline")
        return b"".join(chunks)


def _no_constant(name: str) -> NoReturn:
    """``json.loads`` takes NaN and Infinity by default; no number of the protocol may be either."""
    raise ValueError(f"{name} is not a number JSON allows")


def _retry_after(header: str | None) -> float:
    """A busy agent's Retry-After in seconds, within reason (a missing or odd one: one second)."""
    try:
        seconds = float(header) if header else 1.0
    except ValueError:  # an HTTP date, or garbage
        seconds = 1.0
    return min(max(seconds, 0.1), _LONGEST_RETRY_AFTER_S) if math.isfinite(seconds) else 1.0


def _error_text(body: bytes) -> str:
    """The agent's ``{"error": ...}`` (or its text), on one line."""
    try:
        text = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError, RecursionError):
        text = body.decode(errors="replace")
    return one_line(str(text)) or "no reason given"
