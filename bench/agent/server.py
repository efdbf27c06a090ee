"""The agent's HTTP server: uploads, a FIFO job queue measured by one worker thread, state kept on disk.

Standard library only (``http.server``, ``hmac``, ``json``, ``threading``): the agent runs on an edge box that
has numpy, pydantic and the runtimes, and a web framework there would be one more thing to install on aarch64
and to keep secure. HTTP is plain text: the bearer token protects the agent from other users of a trusted
network, not from someone reading its traffic (put it behind an SSH tunnel otherwise).

One job runs at a time, through ``bench.harness.run_process`` as a local run does: two benchmarks at once
would corrupt each other's timings. Every job's state is a file in its folder, written then renamed, so that an
agent restarted after a crash serves the results it had, re-queues what was waiting and fails, with the reason,
the job it was measuring.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import os
import platform
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from edgecraft.bench.agent.protocol import (
    BLOB_NAME,
    BLOBS,
    INPUTS_FOLDER,
    JOB_ID,
    JOBS,
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    OUTPUTS_FILE,
    PREFIX,
    RESULT_FILE,
    STATE_FILE,
    JobManifest,
    check_format,
    read_inputs,
    validation_problem,
)
from edgecraft.bench.environment import environment
from edgecraft.bench.harness import MeasureJob, MeasurementFailed, run_process
from edgecraft.bench.settings import check_pinnable
from edgecraft.core import formats
from edgecraft.core.files import write_atomic
from edgecraft.targets import feeds, registry
from edgecraft.targets.base import ARM_MACHINES

_CHUNK = 1 << 20
_X86_VENDORS = ("GenuineIntel", "AuthenticAMD")


class Refused(Exception):
    """A request the agent answers with an HTTP error status and ``{"error": message}``."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.extra = extra


def detect_emulation(machine: str, cpuinfo: str) -> str | None:
    """Why this looks like an emulated ARM box, else None: ARM code whose /proc/cpuinfo describes an x86 CPU.

    qemu-user passes the host's /proc/cpuinfo through, so an aarch64 chroot on an x86 host reads like this;
    its timings are the emulator's, not the device's."""
    if machine.lower() not in ARM_MACHINES:
        return None
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, re.MULTILINE)
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    if vendor and vendor.group(1) in _X86_VENDORS:
        evidence = f"vendor_id {vendor.group(1)}"
    elif flags and "sse2" in flags.group(1).split():
        evidence = "x86 flags such as sse2"
    else:
        return None
    return (
        f"{machine} code on an x86 CPU (/proc/cpuinfo shows {evidence}): a user-mode emulator such as "
        "qemu-user; timings are the emulator's, not the device's"
    )


def _emulation_here() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    return detect_emulation(platform.machine(), cpuinfo.read_text(errors="replace") if cpuinfo.exists() else "")


def _write_json(path: Path, value: Any) -> None:
    """Write-then-rename: a crash leaves the old file or the new one, never half of one."""
    write_atomic(path, json.dumps(value))


def _never_evaluated(outputs: dict) -> Any:
    """The agent only measures: the client evaluates the outputs it fetches (``MeasureJob`` wants a function)."""
    raise RuntimeError("the agent does not evaluate outputs")


def _stop_leftover_workers(job_folder: Path) -> None:
    """Kill benchmark processes that a killed agent left running for ``job_folder``: they would compete for the
    CPU with the next job. Found by their command line, which names a file in that folder (Linux only)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    prefix = str(job_folder) + os.sep
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "edgecraft.bench.worker" in arguments and any(argument.startswith(prefix) for argument in arguments):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except OSError:
                continue


class Agent:
    """The jobs and blobs of one folder, and the single thread that measures the jobs in submission order."""

    def __init__(self, folder: Path, token: str, max_upload_bytes: int, job_timeout_s: float, emulated: str | None):
        self.folder = folder.resolve()
        self.blobs = self.folder / BLOBS
        self.jobs = self.folder / JOBS
        self.token = token.encode()
        self.max_upload_bytes = max_upload_bytes
        self.job_timeout_s = job_timeout_s
        self.emulated = emulated or _emulation_here()
        self._changed = threading.Condition()
        self._states: dict[str, dict[str, Any]] = {}
        self._queue: list[str] = []
        self._sequence = 0

    # ----- start-up

    def recover(self) -> None:
        """Load every job's state from disk: finished jobs stay served, queued ones queue again in submission
        order, and the job that was running when the agent stopped fails."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.jobs.mkdir(parents=True, exist_ok=True)
        restarted = time.strftime("%Y-%m-%d %H:%M:%S")
        for folder in sorted(self.jobs.iterdir()):
            if not JOB_ID.fullmatch(folder.name):  # a submission cut off before its rename
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                state = json.loads((folder / STATE_FILE).read_text())
            except (OSError, ValueError) as exc:
                state = {
                    "job": folder.name,
                    "state": "failed",
                    "sequence": 0,
                    "reason": f"the agent could not read this job's state: {exc}",
                }
            if state["state"] == "running":
                _stop_leftover_workers(folder)
                state |= {"state": "failed", "reason": f"the agent stopped during this job (restarted at {restarted})"}
                _write_json(folder / STATE_FILE, state)
            self._states[folder.name] = state
        waiting = [state for state in self._states.values() if state["state"] == "queued"]
        self._queue = [state["job"] for state in sorted(waiting, key=lambda state: state["sequence"])]
        self._sequence = 1 + max((state["sequence"] for state in self._states.values()), default=0)

    def start(self) -> None:
        threading.Thread(target=self._work, name="edgecraft-agent-worker", daemon=True).start()

    # ----- what the endpoints do

    def describe(self) -> dict[str, Any]:
        """This machine as a result records it, with every target and whether it runs here."""
        machine = environment()
        if self.emulated:  # an emulator passes the host's /proc/cpuinfo through: its CPU and flags are not this box's
            cpu = machine["cpu"]
            cpu |= {
                "model": f"emulated {cpu.get('machine')} (on a {cpu.get('model')} host)",
                "flags": [],
                "host_flags": cpu.get("flags", []),
            }
        return {
            **machine,
            "targets": self._target_reasons,
            "agent": {
                "version": _version(),
                "max_upload_bytes": self.max_upload_bytes,
                "job_timeout_s": self.job_timeout_s,
            },
            "emulated": self.emulated,
        }

    @functools.cached_property
    def _target_reasons(self) -> dict[str, str | None]:
        """Computed once: it imports every runtime, and what is installed does not change while the agent runs."""
        return {
            f"{runtime}:{device}": cls().unavailable_reason(device)
            for runtime, cls in registry.runtimes().items()
            for device in cls.devices
        }

    def has_blob(self, name: str) -> bool:
        return (self.blobs / _blob_name(name)).is_file()

    def put_blob(self, name: str, body: io.BufferedIOBase, length: int) -> dict[str, str]:
        """Store ``length`` bytes of ``body`` as the blob ``name`` if their sha256 is ``name`` (both checked by
        the caller before the body is read: the name's form and the length against the upload limit)."""
        temporary = self.blobs / f".upload-{uuid.uuid4().hex}"
        digest = hashlib.sha256()
        try:
            with temporary.open("wb") as handle:
                left = length
                while left:
                    chunk = body.read(min(_CHUNK, left))
                    if not chunk:
                        raise Refused(HTTPStatus.BAD_REQUEST, f"the body ended after {length - left} of {length} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
                    left -= len(chunk)
            if digest.hexdigest() != name:
                raise Refused(HTTPStatus.BAD_REQUEST, f"the body's sha256 is {digest.hexdigest()}, not {name}")
            os.replace(temporary, self.blobs / name)
        finally:
            temporary.unlink(missing_ok=True)
        return {"sha256": name}

    def submit(self, body: Any) -> dict[str, Any]:
        """Check a manifest against what was uploaded and what runs here, give the job its own folder with
        generated file names, and queue it."""
        try:
            manifest = JobManifest.model_validate(body)
        except ValidationError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, validation_problem(exc)) from None
        target = self._target(manifest)
        try:
            target.options_model(**manifest.options)
        except ValidationError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"options: {validation_problem(exc)}") from None
        for name in [*manifest.model.files, manifest.inputs]:
            if not self.has_blob(name):
                raise Refused(HTTPStatus.BAD_REQUEST, f"blob {name} was not uploaded (PUT {PREFIX}/blobs/{name})")
        try:
            check_format(manifest.model.format, [self.blobs / name for name in manifest.model.files])
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"model: {exc}") from None
        try:
            inputs = read_inputs(self.blobs / manifest.inputs)
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"inputs: {exc}") from None
        try:
            check_pinnable(manifest.settings.pin_cpus)
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"settings.pin_cpus: {exc}") from None
        settings = manifest.settings.model_copy(
            update={"timeout_s": min(manifest.settings.timeout_s, self.job_timeout_s)}
        )
        job_id = uuid.uuid4().hex
        staging = self.jobs / f".new-{job_id}"
        staging.mkdir()
        try:
            for blob, file_name in zip(manifest.model.files, formats.get(manifest.model.format).file_names()):
                shutil.copyfile(self.blobs / blob, staging / file_name)
            feeds.save(inputs, staging / INPUTS_FOLDER)
            if len(list((staging / INPUTS_FOLDER).glob("*.npy"))) != len(inputs):
                raise Refused(HTTPStatus.BAD_REQUEST, f"inputs: names that differ only in punctuation: {list(inputs)}")
            _write_json(staging / MANIFEST_FILE, manifest.model_copy(update={"settings": settings}).model_dump())
            with self._changed:
                state = {"job": job_id, "state": "queued", "sequence": self._sequence, "submitted_at": time.time()}
                self._sequence += 1
                _write_json(staging / STATE_FILE, state)
                os.replace(staging, self.jobs / job_id)
                self._states[job_id] = state
                self._queue.append(job_id)
                self._changed.notify_all()
                return self._status(job_id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _target(self, manifest: JobManifest) -> Any:
        runtimes = registry.runtimes()
        if manifest.runtime not in runtimes:
            raise Refused(
                HTTPStatus.BAD_REQUEST,
                f"runtime: unknown runtime {manifest.runtime!r}; this agent has {', '.join(runtimes)}",
            )
        cls = runtimes[manifest.runtime]
        if manifest.device not in cls.devices:
            raise Refused(
                HTTPStatus.BAD_REQUEST,
                f"device: {manifest.runtime} has no device {manifest.device!r} (known: {', '.join(cls.devices)})",
            )
        accepts = formats.loaded_by(manifest.runtime)
        if manifest.model.format not in accepts:
            raise Refused(
                HTTPStatus.BAD_REQUEST,
                f"model.format: {manifest.runtime} runs {', '.join(accepts)}, not {manifest.model.format}",
            )
        reason = self._target_reasons[f"{manifest.runtime}:{manifest.device}"]
        if reason:
            raise Refused(HTTPStatus.BAD_REQUEST, f"{manifest.runtime}:{manifest.device} cannot run here: {reason}")
        return cls()

    def status(self, job_id: str) -> dict[str, Any]:
        with self._changed:
            return self._status(self._known(job_id))

    def _status(self, job_id: str) -> dict[str, Any]:
        state = self._states[job_id]
        status = {"job": job_id, "state": state["state"]}
        if state["state"] == "queued":
            status["position"] = self._queue.index(job_id) + 1
        if state["state"] == "failed":
            status["reason"] = state["reason"]
        return status

    def finished_file(self, job_id: str, name: str) -> Path:
        """A file of a done job (its result or its outputs); 409 with the state while it is not done."""
        with self._changed:
            state = self._states[self._known(job_id)]["state"]
        if state != "done":
            raise Refused(HTTPStatus.CONFLICT, f"job {job_id} is {state}, not done", state=state)
        return self.jobs / job_id / name

    def delete(self, job_id: str) -> dict[str, Any]:
        with self._changed:
            state = self._states[self._known(job_id)]["state"]
            if state == "running":
                raise Refused(HTTPStatus.CONFLICT, f"job {job_id} is running; delete it once it is done", state=state)
            if state == "queued":
                self._queue.remove(job_id)
            del self._states[job_id]
            # Renamed first, so that a restart never finds half a folder under a job's name.
            doomed = self.jobs / f".deleted-{job_id}"
            os.replace(self.jobs / job_id, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        return {"job": job_id, "deleted": True}

    def _known(self, job_id: str) -> str:
        if not JOB_ID.fullmatch(job_id) or job_id not in self._states:
            raise Refused(HTTPStatus.NOT_FOUND, f"no job {job_id!r} on this agent")
        return job_id

    # ----- the worker thread

    def _set_state(self, job_id: str, **changes: Any) -> None:
        with self._changed:
            state = self._states[job_id] | changes
            _write_json(self.jobs / job_id / STATE_FILE, state)
            self._states[job_id] = state

    def _work(self) -> None:
        while True:
            with self._changed:
                while not self._queue:
                    self._changed.wait()
                job_id = self._queue.pop(0)
                self._set_state(job_id, state="running", started_at=time.time())  # never seen out of the queue
            started = time.monotonic()
            print(f"job {job_id}: started", file=sys.stderr, flush=True)
            try:
                self._measure(job_id)
                self._set_state(job_id, state="done")
                outcome = "done"
            except MeasurementFailed as exc:
                self._set_state(job_id, state="failed", reason=str(exc))
                outcome = f"failed: {exc}"
            except Exception as exc:  # noqa: BLE001 - an agent bug or a full disk fails this job, not the agent
                self._set_state(job_id, state="failed", reason=f"the agent failed: {type(exc).__name__}: {exc}")
                outcome = f"failed: {type(exc).__name__}: {exc}"
            print(f"job {job_id}: {outcome} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)

    def _measure(self, job_id: str) -> None:
        """Every repetition in a fresh process, as a local run measures; raises ``MeasurementFailed``."""
        folder = self.jobs / job_id
        manifest = JobManifest.model_validate_json((folder / MANIFEST_FILE).read_text())
        settings = manifest.settings
        job = MeasureJob(
            runtime=manifest.runtime,
            device=manifest.device,
            options=manifest.options,
            model=folder / formats.get(manifest.model.format).file_names()[0],
            inputs=folder / INPUTS_FOLDER,
            reference_outputs={},
            evaluate=_never_evaluated,
            work_dir=folder,
        )
        device = self.describe()
        deadline = time.monotonic() + self.job_timeout_s
        raws = []
        started_at = time.time()
        for repetition in range(settings.repetitions):
            where = f"repetition {repetition + 1} of {settings.repetitions}: " if settings.repetitions > 1 else ""
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeasurementFailed(f"{where}the job used up this agent's limit of {self.job_timeout_s:g} s")
            capped = settings.model_copy(update={"timeout_s": min(settings.timeout_s, left)})
            try:
                raw = run_process(job, capped, repetition)
            except MeasurementFailed as exc:
                limit = " (the rest of this agent's job time limit)" if capped.timeout_s < settings.timeout_s else ""
                raise MeasurementFailed(f"{where}{exc}{limit}") from None
            raws.append(raw | {"index": repetition, "order": 0})
        finished_at = time.time()
        if not (folder / OUTPUTS_FILE).is_file():
            raise MeasurementFailed("the benchmark process wrote no outputs")
        _write_json(
            folder / RESULT_FILE, {"raws": raws, "device": device, "started_at": started_at, "finished_at": finished_at}
        )


def _blob_name(name: str) -> str:
    if not BLOB_NAME.fullmatch(name):
        raise Refused(HTTPStatus.BAD_REQUEST, f"a blob is named by its sha256 (64 lowercase hex digits), not {name!r}")
    return name


@functools.cache
def _version() -> str:
    try:
        return metadata.version("edgecraft")
    except metadata.PackageNotFoundError:
        return "unknown (run from a source tree that is not installed)"


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent):
        super().__init__(address, _Handler)
        self.agent = agent


class _Handler(BaseHTTPRequestHandler):
    """Routes ``/v1/...`` to the agent; every answer is JSON except a job's outputs (.npz bytes)."""

    server: AgentServer
    server_version = "edgecraft-agent"
    timeout = 60  # seconds a connection may stay silent: a stalled client does not hold a thread for ever

    def do_GET(self) -> None:
        self._answer("GET")

    def do_HEAD(self) -> None:
        self._answer("HEAD")

    def do_PUT(self) -> None:
        self._answer("PUT")

    def do_POST(self) -> None:
        self._answer("POST")

    def do_DELETE(self) -> None:
        self._answer("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the agent logs one line per job, not one per poll."""

    def _answer(self, method: str) -> None:
        try:
            status, body = self._handle(method)
        except Refused as exc:
            status, body = exc.status, {"error": str(exc), **exc.extra}
        except Exception as exc:  # noqa: BLE001 - an agent bug answers 500 and leaves the server running
            print(f"{method} {self.path}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream" if isinstance(body, bytes) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _handle(self, method: str) -> tuple[int, Any]:
        agent = self.server.agent
        sent = self.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(sent, b"Bearer " + agent.token):
            raise Refused(HTTPStatus.UNAUTHORIZED, "missing or wrong token: send 'Authorization: Bearer TOKEN'")
        path = urlsplit(self.path).path  # not unquoted: %2F stays three characters that no name may hold
        if not path.startswith(PREFIX + "/"):
            raise Refused(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r}")
        parts = path[len(PREFIX) + 1 :].split("/")
        routes: dict[tuple[str, ...], dict[str, Callable[..., Any]]] = {
            ("device",): {"GET": agent.describe},
            ("blobs", "*"): {
                "PUT": lambda name: agent.put_blob(_blob_name(name), self.rfile, self._length(agent.max_upload_bytes)),
                "HEAD": lambda name: self._exists(agent.has_blob(name)),
            },
            ("jobs",): {"POST": lambda: (HTTPStatus.ACCEPTED, agent.submit(self._json()))},
            ("jobs", "*"): {"GET": agent.status, "DELETE": agent.delete},
            ("jobs", "*", "result"): {"GET": lambda job: json.loads(agent.finished_file(job, RESULT_FILE).read_text())},
            ("jobs", "*", "outputs"): {"GET": lambda job: agent.finished_file(job, OUTPUTS_FILE).read_bytes()},
        }
        for pattern, methods in routes.items():
            if len(pattern) == len(parts) and all(p in ("*", part) for p, part in zip(pattern, parts)):
                if method not in methods:
                    raise Refused(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} takes {', '.join(methods)}, not {method}")
                answer = methods[method](*[part for p, part in zip(pattern, parts) if p == "*"])
                return answer if isinstance(answer, tuple) else (HTTPStatus.OK, answer)
        raise Refused(HTTPStatus.NOT_FOUND, f"no such endpoint {path!r}")

    def _length(self, limit: int) -> int:
        """The request's Content-Length, decided before a byte of the body is read."""
        text = self.headers.get("Content-Length")
        if text is None:
            raise Refused(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length")
        if not text.isdigit():
            raise Refused(HTTPStatus.BAD_REQUEST, f"Content-Length {text!r} is not a byte count")
        if int(text) > limit:
            raise Refused(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{int(text)} bytes is over this agent's limit of {limit} bytes"
            )
        return int(text)

    def _json(self) -> Any:
        data = self.rfile.read(self._length(MAX_MANIFEST_BYTES))
        try:
            return json.loads(data)
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None

    @staticmethod
    def _exists(found: bool) -> tuple[int, dict]:
        return (HTTPStatus.OK, {}) if found else (HTTPStatus.NOT_FOUND, {})


def serve(
    *, host: str, port: int, folder: Path, token: str, max_upload_bytes: int, job_timeout_s: float, emulated: str | None
) -> int:
    """Run the agent until it is killed; the one line on stdout says where it listens."""
    agent = Agent(folder, token, max_upload_bytes, job_timeout_s, emulated)
    agent.recover()
    server = AgentServer((host, port), agent)
    print(f"edgecraft agent listening on http://{host}:{server.server_port} (folder {agent.folder})", flush=True)
    agent.start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
