"""The device agent: uploads, a FIFO job queue measured by one worker thread, state kept on disk, and ``serve``.

Its HTTP is uvicorn (the pure-Python h11 protocol) running a small Starlette app (``bench.agent.http_app``): both
are maintained, pure Python, so they install on any aarch64 board without a compiler, and need no ML framework.
They parse requests and enforce their framing (a bad ``Content-Length`` is h11's 400), keep connections alive,
bound how many there are and speak TLS, all of which the hand-written ``http.server`` layer they replace did
badly or not at all. What they lack is added in ``bench.agent.serving`` (a deadline for a request's head) and
``bench.agent.http_app`` (deadlines for its body; a limit on wrong tokens per address).

One job runs at a time, through ``bench.harness.run_process`` as a local run does: two benchmarks at once
would corrupt each other's timings. Every job's state is a file in its folder, written then renamed, so that an
agent restarted after a crash serves the results it had, re-queues what was waiting and fails, with the reason,
the job it was measuring. Everything a client sends is bounded by a flag of ``edgecraft agent serve``
(``bench.agent.limits``), and each refusal is its own status with one line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import stat
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgecraft.bench import scenarios
from edgecraft.bench.agent import serving, tls
from edgecraft.bench.agent.http_app import Refused, application
from edgecraft.bench.agent.limits import MIB, Limits, in_bytes
from edgecraft.bench.agent.onnx_files import check_no_external_data
from edgecraft.bench.agent.protocol import (
    BLOB_NAME,
    BLOBS,
    INPUTS_FOLDER,
    JOB_ID,
    JOBS,
    MANIFEST_FILE,
    OUTPUTS_FILE,
    PREFIX,
    RESULT_FILE,
    STATE_FILE,
    ArrayLimits,
    JobManifest,
    OverLimit,
    check_format,
    read_inputs,
    validation_problem,
)
from edgecraft.bench.environment import environment
from edgecraft.bench.harness import MeasureJob, MeasurementFailed, run_process
from edgecraft.bench.settings import check_pinnable
from edgecraft.core import formats
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.files import write_atomic
from edgecraft.targets import feeds, registry
from edgecraft.targets.base import ARM_MACHINES

_X86_VENDORS = ("GenuineIntel", "AuthenticAMD")
_QUEUE_RETRY_AFTER_S = 30  # a job takes seconds to minutes: a full queue is worth asking again about that soon


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


def _link_or_copy(source: Path, destination: Path) -> None:
    """A job's model file is its blob hard-linked (no second copy on disk); copied where links are not allowed."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


class DiskQuota:
    """The agent's folder against ``--max-disk-mb``: what is on disk plus what is being written to it."""

    def __init__(self, folder: Path, max_bytes: int):
        self.folder = folder
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._reserved = 0

    def reserve(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` as used until ``release``; 507 if they do not fit."""
        with self._lock:
            used = self._on_disk() + self._reserved
            if used + nbytes > self.max_bytes:
                raise Refused(
                    HTTPStatus.INSUFFICIENT_STORAGE,
                    f"{what} ({nbytes} bytes) would take the agent's folder to {(used + nbytes) / MIB:.1f} MiB, "
                    f"over its --max-disk-mb of {self.max_bytes / MIB:g} MiB: delete finished jobs or raise the limit",
                )
            self._reserved += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    @contextlib.contextmanager
    def reserved(self, nbytes: int, what: str) -> Iterator[None]:
        self.reserve(nbytes, what)
        try:
            yield
        finally:
            self.release(nbytes)

    def _on_disk(self) -> int:
        """Bytes of every file under the folder, a hard-linked file (a blob and its job's copy) counted once."""
        seen: dict[tuple[int, int], int] = {}
        # os.walk, not Path.rglob: a folder renamed or deleted by another request while it walks (a job being
        # submitted or deleted) is skipped, where rglob raises FileNotFoundError.
        for root, _, names in os.walk(self.folder):
            for name in names:
                try:
                    status = os.lstat(os.path.join(root, name))
                except FileNotFoundError:  # deleted while we walked
                    continue
                if stat.S_ISREG(status.st_mode):
                    seen[status.st_dev, status.st_ino] = status.st_size
        return sum(seen.values())


class Upload:
    """A blob as it arrives: hashed and written to a temporary file, then renamed to its sha256 once it is whole
    and that sha256 is its name. Its announced length counts against the disk quota while it is written."""

    def __init__(self, blobs: Path, name: str, length: int, disk: DiskQuota):
        self.name, self.length, self.received = name, length, 0
        self._blobs, self._disk = blobs, disk
        self._temporary = blobs / f".upload-{uuid.uuid4().hex}"
        self._digest = hashlib.sha256()
        disk.reserve(length, f"uploading blob {name}")
        try:
            self._handle = self._temporary.open("wb")
        except OSError:
            disk.release(length)
            raise
        self._open = True

    def write(self, chunk: bytes | bytearray) -> None:
        self._digest.update(chunk)
        self._handle.write(chunk)
        self.received += len(chunk)

    def finish(self) -> dict[str, str]:
        self._handle.close()
        if self._digest.hexdigest() != self.name:
            raise Refused(HTTPStatus.BAD_REQUEST, f"the body's sha256 is {self._digest.hexdigest()}, not {self.name}")
        os.replace(self._temporary, self._blobs / self.name)
        return {"sha256": self.name}

    def discard(self) -> None:
        """Close and forget what is left (nothing after ``finish``); safe to call twice."""
        if self._open:
            self._open = False
            self._handle.close()
            self._temporary.unlink(missing_ok=True)
            self._disk.release(self.length)


class Agent:
    """The jobs and blobs of one folder, and the single thread that measures the jobs in submission order."""

    def __init__(self, folder: Path, limits: Limits, emulated: str | None):
        self.folder = folder.resolve()
        self.blobs = self.folder / BLOBS
        self.jobs = self.folder / JOBS
        self.limits = limits
        self.emulated = emulated or _emulation_here()
        self.disk = DiskQuota(self.folder, in_bytes(limits.max_disk_mb))
        self._changed = threading.Condition()
        self._states: dict[str, dict[str, Any]] = {}
        self._queue: list[str] = []
        self._arriving = 0  # submissions being checked, each holding a place in the queue
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
        threading.Thread(target=self._sweep_forever, name="edgecraft-agent-sweeper", daemon=True).start()
        threading.Thread(target=self._warm_up, name="edgecraft-agent-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        """Each runtime that runs here imports what checking an upload needs, once, before the first upload asks."""
        for runtime, cls in registry.runtimes().items():
            if any(self._target_reasons[f"{runtime}:{device}"] is None for device in cls.devices):
                try:
                    cls().warm_up()
                except Exception as exc:  # noqa: BLE001 - the upload's own check will say what is wrong
                    print(f"warming up {runtime} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    # ----- what the endpoints do

    def describe(self) -> dict[str, Any]:
        """This machine as a result records it, with every target and whether it runs here, and every limit."""
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
                "max_upload_bytes": in_bytes(self.limits.max_upload_mb),
                "job_timeout_s": self.limits.job_timeout,
                "limits": self.limits.by_flag(),
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
        """Whether the blob is here; asking marks it as wanted (its --blob-ttl starts again)."""
        try:
            os.utime(self.blobs / _blob_name(name))
        except FileNotFoundError:
            return False
        return True

    def upload(self, name: str, length: int) -> Upload:
        return Upload(self.blobs, _blob_name(name), length, self.disk)

    def submit(self, body: Any) -> dict[str, Any]:
        """Check a manifest against what was uploaded and what runs here, give the job its own folder with
        generated file names, and queue it."""
        try:
            manifest = JobManifest.model_validate(body)
        except ValidationError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, validation_problem(exc)) from None
        with self._place_in_queue():
            return self._admit(manifest)

    @contextlib.contextmanager
    def _place_in_queue(self) -> Iterator[None]:
        """Hold a place in the queue while a submission is checked; 429 when every place is taken."""
        limit = self.limits.max_queue
        with self._changed:
            if len(self._queue) + self._arriving >= limit:
                raise Refused(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    f"the queue is full ({limit} jobs waiting, this agent's --max-queue): submit again once one ran",
                    headers={"Retry-After": str(_QUEUE_RETRY_AFTER_S)},
                    queue_limit=limit,
                )
            self._arriving += 1
        try:
            yield
        finally:
            with self._changed:
                self._arriving -= 1

    def _admit(self, manifest: JobManifest) -> dict[str, Any]:
        target = self._target(manifest)
        try:
            target.options_model(**manifest.options)
        except ValidationError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"options: {validation_problem(exc)}") from None
        blobs = [*manifest.model.files, manifest.inputs]
        for name in blobs:
            if not self.has_blob(name):
                raise Refused(HTTPStatus.BAD_REQUEST, f"blob {name} was not uploaded (PUT {PREFIX}/blobs/{name})")
        job_id = uuid.uuid4().hex
        model_files = [self.blobs / name for name in manifest.model.files]
        try:
            check_format(manifest.model.format, model_files)
            if manifest.model.format == "onnx":
                check_no_external_data(model_files[0], self.jobs / job_id)
            target.verify(model_files[0])
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"model: {exc}") from None
        limits = ArrayLimits(
            max_array_bytes=in_bytes(self.limits.max_array_mb),
            max_total_bytes=in_bytes(self.limits.max_job_mb),
            max_rank=self.limits.max_rank,
        )
        try:
            inputs = read_inputs(self.blobs / manifest.inputs, limits)
        except OverLimit as exc:
            raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"inputs: {exc}") from None
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"inputs: {exc}") from None
        layout = manifest.layout
        unknown = sorted({*layout.inputs, *layout.state_from, *layout.lengths} - set(inputs))
        if unknown:
            raise Refused(HTTPStatus.BAD_REQUEST, f"layout: names no input of the job: {', '.join(unknown)}")
        for name, axis in layout.lengths.items():
            if not 0 < axis < inputs[name].ndim:
                raise Refused(HTTPStatus.BAD_REQUEST, f"layout.lengths.{name}: no sequence axis {axis} in its samples")
        try:
            check_pinnable(manifest.settings.pin_cpus)
        except ValueError as exc:
            raise Refused(HTTPStatus.BAD_REQUEST, f"settings.pin_cpus: {exc}") from None
        settings = manifest.settings.model_copy(
            update={"timeout_s": min(manifest.settings.timeout_s, self.limits.job_timeout)}
        )
        staging = self.jobs / f".new-{job_id}"
        inflated = sum(array.nbytes for array in inputs.values())
        try:
            with self.disk.reserved(inflated, "the job's inputs, inflated"):
                staging.mkdir()
                for path, file_name in zip(model_files, formats.get(manifest.model.format).file_names()):
                    _link_or_copy(path, staging / file_name)
                feeds.save(inputs, staging / INPUTS_FOLDER, manifest.layout)
            if len(list((staging / INPUTS_FOLDER).glob("*.npy"))) != len(inputs):
                raise Refused(HTTPStatus.BAD_REQUEST, f"inputs: names that differ only in punctuation: {list(inputs)}")
            _write_json(staging / MANIFEST_FILE, manifest.model_copy(update={"settings": settings}).model_dump())
            with self._changed:
                state = {
                    "job": job_id,
                    "state": "queued",
                    "sequence": self._sequence,
                    "submitted_at": time.time(),
                    "blobs": blobs,
                }
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
            state = self._states[self._known(job_id)]
            if state["state"] == "running":
                raise Refused(
                    HTTPStatus.CONFLICT, f"job {job_id} is running; delete it once it is done", state=state["state"]
                )
            if state["state"] == "queued":
                self._queue.remove(job_id)
            del self._states[job_id]
            # Renamed first, so that a restart never finds half a folder under a job's name.
            doomed = self.jobs / f".deleted-{job_id}"
            os.replace(self.jobs / job_id, doomed)
            self._forget_blobs(state)
        shutil.rmtree(doomed, ignore_errors=True)
        return {"job": job_id, "deleted": True}

    def _forget_blobs(self, deleted: dict[str, Any]) -> None:
        """Delete the blobs of a deleted job that no other job uses, unless a client asked for one since the job
        was submitted (it is about to be used again; the --blob-ttl sweep takes it otherwise). Under the lock."""
        for name in set(deleted.get("blobs", [])) - self._blobs_in_use():
            path = self.blobs / name
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime <= deleted["submitted_at"]:
                    path.unlink()

    def _blobs_in_use(self) -> set[str]:
        return {name for state in self._states.values() for name in state.get("blobs", [])}

    def sweep_blobs(self) -> None:
        """Delete uploads that no job uses and no client asked for within --blob-ttl seconds (uploads cut off
        midway by a crash among them)."""
        cutoff = time.time() - self.limits.blob_ttl
        with self._changed:
            in_use = self._blobs_in_use()
            for path in self.blobs.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    if path.name not in in_use and path.stat().st_mtime < cutoff:
                        path.unlink()

    def _known(self, job_id: str) -> str:
        if not JOB_ID.fullmatch(job_id) or job_id not in self._states:
            raise Refused(HTTPStatus.NOT_FOUND, f"no job {job_id!r} on this agent")
        return job_id

    # ----- the worker threads

    def _sweep_forever(self) -> None:
        while True:
            try:
                self.sweep_blobs()
            except OSError as exc:  # a disk problem waits for the next sweep; it must not end the sweeps
                print(f"sweeping {self.blobs}: {exc}", file=sys.stderr, flush=True)
            time.sleep(min(self.limits.blob_ttl, 60.0))

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
        limit_s = self.limits.job_timeout
        deadline = time.monotonic() + limit_s
        raws = []
        started_at = time.time()
        for repetition in range(settings.repetitions):
            where = f"repetition {repetition + 1} of {settings.repetitions}: " if settings.repetitions > 1 else ""
            left = deadline - time.monotonic()
            if left <= 0:
                raise MeasurementFailed(f"{where}the job used up this agent's limit of {limit_s:g} s")
            capped = settings.model_copy(update={"timeout_s": min(settings.timeout_s, left)})
            try:
                raw = run_process(job, capped, repetition)
            except MeasurementFailed as exc:
                limit = " (the rest of this agent's job time limit)" if capped.timeout_s < settings.timeout_s else ""
                raise MeasurementFailed(f"{where}{exc}{limit}") from None
            for entry in raw.get("scenarios") or []:
                entry["logs"] = scenarios.read_logs(entry.get("log_dir"), folder)
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


def serve(
    *, host: str, port: int, folder: Path, token: str, limits: Limits, use_tls: bool, emulated: str | None
) -> int:
    """Run the agent until it is stopped (SIGINT, SIGTERM). Two lines on stdout say where it listens and, with
    TLS, the fingerprint a client pins."""
    agent = Agent(folder, limits, emulated)
    agent.recover()
    identity = None
    if use_tls:
        try:
            identity = tls.identity(agent.folder)
        except ValueError as exc:
            raise EdgecraftError(str(exc)) from None
    config = serving.configure(application(agent, token), limits, identity)
    listener = serving.listen(host, port)
    url_host = f"[{host}]" if ":" in host else host
    scheme = "https" if identity else "http"
    print(f"edgecraft agent listening on {scheme}://{url_host}:{listener.getsockname()[1]} (folder {agent.folder})")
    if identity:
        print(f"certificate fingerprint: {identity.fingerprint}")
    sys.stdout.flush()
    agent.start()
    serving.run(config, listener)
    return 0
