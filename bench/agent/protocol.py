"""What the agent and its client agree on: the URL prefix, the folder layout, the job manifest and its checks.

numpy and pydantic only: the agent runs on a box with the runtimes and nothing else (no torch, no ``onnx``), so
model files are recognised by their first bytes, not parsed.

Every request carries ``Authorization: Bearer TOKEN``; answers are JSON (errors ``{"error": ...}``) except outputs:

- ``GET /v1/device``: ``bench.environment.environment()`` plus ``targets`` (``"runtime:device"``: None where it
  runs, else why not), ``agent`` (version, limits) and ``emulated`` (None or why the timings are an emulator's).
- ``PUT /v1/blobs/<sha256>`` (body: the file, with a Content-Length) and ``HEAD`` (200 when it is there).
- ``POST /v1/jobs`` (body: a ``JobManifest``) → 202 ``{"job", "state": "queued", "position"}``.
- ``GET /v1/jobs/<id>`` → ``{"job", "state", "position" (queued: 1 is next), "reason" (failed)}``.
- ``GET /v1/jobs/<id>/result`` → ``{"raws", "device", "started_at", "finished_at"}`` (409 until done): each
  worker's raw dict per repetition, with ``index`` and ``order`` as ``bench.harness.measure_all`` adds them.
- ``GET /v1/jobs/<id>/outputs`` → the accuracy pass's outputs as .npz bytes (409 until done).
- ``DELETE /v1/jobs/<id>``: results are kept until the client deletes them (a running job cannot be deleted).
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zipfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecraft.bench.raw import WorkerRaw, problems
from edgecraft.bench.settings import BenchSettings
from edgecraft.core import formats
from edgecraft.targets.feeds import Layout

PREFIX = "/v1"
BLOB_NAME = re.compile(r"[0-9a-f]{64}")  # a sha256; also what keeps a client's name from walking out of the folder
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex

# The agent's folder: blobs/<sha256> as uploaded, jobs/<id>/ with generated names only.
BLOBS = "blobs"
JOBS = "jobs"
STATE_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
RESULT_FILE = "result.json"
INPUTS_FOLDER = "inputs"
OUTPUTS_FILE = "outputs.npz"  # where bench.harness.run_process has the worker write every output

MAX_MANIFEST_BYTES = 1 << 20
# The most a JSON answer of an agent may weigh (a description, a status, a result's raws): the client stops
# reading there, whatever the agent says its length is.
MAX_JSON_ANSWER_BYTES = 16 << 20
# An agent's TLS certificate, as the agent prints it and a device entry pins it (like SSH's known hosts).
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")

JobState = Literal["queued", "running", "done", "failed"]

Sha256 = Annotated[str, StringConstraints(pattern=BLOB_NAME.pattern + "$")]


class ModelFiles(BaseModel):
    """A job's model: its format and one blob per file, in the order of the format's files (its optional
    companions last); in the job's folder they get the format's generated names (``ModelFormat.file_names``)."""

    model_config = ConfigDict(extra="forbid")

    format: str
    files: list[Sha256]

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in formats.FORMATS:
            raise ValueError(f"unknown model format {value!r}; known: {', '.join(formats.FORMATS.names())}")
        return value

    @model_validator(mode="after")
    def _one_blob_per_file(self) -> ModelFiles:
        fmt = formats.get(self.format)
        names, least = fmt.file_names(), fmt.least_files()
        if not least <= len(self.files) <= len(names):
            count = f"{least} or {len(names)}" if least != len(names) else str(len(names))
            raise ValueError(f"a {self.format} model is {count} file(s) ({', '.join(names)}), got {len(self.files)}")
        return self


class JobManifest(BaseModel):
    """``POST /v1/jobs``: what to measure, on which target, on which inputs; every file named by its sha256."""

    model_config = ConfigDict(extra="forbid")

    runtime: str
    device: str
    options: dict[str, Any] = {}
    model: ModelFiles
    inputs: Sha256  # an .npz of named numeric arrays with the same number of samples
    settings: BenchSettings
    # How the model takes those sample-major arrays: each input's batch axis, a fixed batch, state carried from
    # call to call. Sent only where it is not the plain one (every batch on axis 0, any size, no state).
    layout: Layout = Field(default_factory=Layout)


def validation_problem(exc: ValidationError) -> str:
    """A pydantic error as 'field: problem' parts, short enough for an HTTP error."""
    return problems(exc)


# ----- what an agent answers: the client checks every answer against these before using a field of it


class _Answer(BaseModel):
    """An agent's answer is untrusted input: exact types, finite numbers; unknown keys are kept (a newer agent may
    say more) but never read."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class AgentInfo(_Answer):
    version: str
    max_upload_bytes: int = Field(gt=0)
    job_timeout_s: float = Field(gt=0)
    limits: dict[str, float] = Field({}, description="Every other limit of the agent, by its flag's name.")


class CpuDescription(_Answer):
    """The fields of ``bench.cpu_info`` that reports and the console show."""

    machine: str | None = None
    model: str | None = None
    flags: list[str] = []
    logical_cores: int | None = Field(None, ge=1)
    usable_cores: int | None = Field(None, ge=1)
    memory_mb: float | None = Field(None, ge=0)
    governor: str | None = None
    load_average: list[float] = []


class DeviceDescription(_Answer):
    """``GET /v1/device``: ``bench.environment.environment()`` plus what the agent runs and its limits."""

    python: str
    platform: str
    cpu: CpuDescription
    packages: dict[str, str] = {}
    warnings: list[str] = []
    targets: dict[str, str | None] = Field(description="'runtime:device': None where it runs here, else why not.")
    agent: AgentInfo
    emulated: str | None = Field(None, description="Why this machine's timings are an emulator's, else None.")


class JobStatus(_Answer):
    job: Annotated[str, StringConstraints(pattern=JOB_ID.pattern + "$")]
    state: JobState
    position: int | None = Field(None, ge=1, description="Queued: 1 is next.")
    reason: str | None = None

    @model_validator(mode="after")
    def _failure_has_reason(self) -> JobStatus:
        if self.state == "failed" and not self.reason:
            raise ValueError("a failed job's status carries its reason")
        return self


class JobResult(_Answer):
    """``GET /v1/jobs/<id>/result``: each repetition's raw numbers, checked as a local worker's are."""

    raws: list[WorkerRaw] = Field(min_length=1)
    device: DeviceDescription
    started_at: float = Field(ge=0)
    finished_at: float = Field(ge=0)

    @model_validator(mode="after")
    def _in_order(self) -> JobResult:
        if self.finished_at < self.started_at:
            raise ValueError(f"the job finished ({self.finished_at}) before it started ({self.started_at})")
        return self


def fingerprint(certificate_der: bytes) -> str:
    """A certificate's SHA-256 fingerprint in the form the agent prints and a device entry pins."""
    return "sha256:" + hashlib.sha256(certificate_der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """``text`` as ``sha256:<64 lowercase hex digits>``; colons between the bytes (as openssl prints them) and
    upper case are accepted. ``ValueError`` otherwise."""
    digits = text.strip().lower().removeprefix("sha256:").replace(":", "")
    if not re.fullmatch(r"[0-9a-f]{64}", digits):
        raise ValueError(f"expected 'sha256:' and 64 hex digits, as the agent prints it; got {text!r}")
    return f"sha256:{digits}"


# ----- arrays sent across: bounded before a byte of their data is inflated


class OverLimit(ValueError):
    """Arrays that are well formed but larger than a limit allows (the agent answers 413, not 400)."""


@dataclass(frozen=True)
class ArrayLimits:
    """What one .npz may hold, checked from each array's header before its data is read: a 400 KB zip can
    declare gigabytes."""

    max_array_bytes: int
    max_total_bytes: int
    max_rank: int = 8
    max_arrays: int = 256


def read_npz(source: Path | bytes, limits: ArrayLimits, wanted: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The named numeric arrays of an .npz (only ``wanted`` ones, if given), never unpickling and never inflating
    more than each header declares within ``limits``; ``ValueError`` names the array and the limit."""
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not an .npz file: {exc}") from None
    with archive:
        members = [member for member in archive.infolist() if not member.is_dir()]
        if len(members) > limits.max_arrays:
            raise OverLimit(f"it holds {len(members)} arrays, over the limit of {limits.max_arrays}")
        names = [member.filename.removesuffix(".npy") for member in members]
        if len(set(names)) != len(names):
            raise ValueError("it names an array twice")
        arrays: dict[str, np.ndarray] = {}
        total = 0
        for name, member in zip(names, members):
            if wanted is not None and name not in wanted:
                continue
            try:
                with archive.open(member) as stream:
                    shape, dtype = _header(stream)
                    _check_header(name, shape, dtype, limits)
                    total += math.prod(shape) * dtype.itemsize
                    if total > limits.max_total_bytes:
                        raise OverLimit(
                            f"{name!r}: the arrays inflate to {total} bytes or more, over the limit of "
                            f"{limits.max_total_bytes} bytes for all of them"
                        )
                with archive.open(member) as stream:
                    arrays[name] = np.lib.format.read_array(stream, allow_pickle=False)
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise ValueError(f"{name!r}: unreadable: {exc}") from None
    return arrays


def _header(stream: Any) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version} (1.0 and 2.0 are read)")
    except ValueError as exc:
        raise ValueError(f"not a plain .npy array: {exc}") from None
    return tuple(shape), dtype


def _check_header(name: str, shape: tuple[int, ...], dtype: np.dtype, limits: ArrayLimits) -> None:
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"{name!r} is a {dtype} array; only numeric arrays are read (never pickles)")
    if len(shape) > limits.max_rank:
        raise OverLimit(f"{name!r} has rank {len(shape)}, over the limit of {limits.max_rank}")
    declared = math.prod(shape) * dtype.itemsize
    if declared > limits.max_array_bytes:
        raise OverLimit(
            f"{name!r} declares shape {list(shape)} of {dtype} ({declared} bytes inflated), over the limit of "
            f"{limits.max_array_bytes} bytes per array"
        )


def looks_like(head: bytes) -> str:
    """What a file is, from its first ``formats.HEAD_BYTES`` bytes, as the end of 'it looks like …': a model
    format's own description, else what else it is (never unpickled, only named)."""
    fmt = formats.identify(head)
    if fmt is not None:
        return fmt.description
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (what torch.save and TorchScript write: a pickle inside)"
    if head[:1] == b"\x80":
        return "a Python pickle"
    if head.startswith(b"\x93NUMPY"):
        return "a numpy array (.npy)"
    if head.lstrip()[:1] == b"<":
        return "an XML or HTML file that is not an OpenVINO IR"
    return f"no model format edgecraft runs (its first bytes are {head[:8].hex(' ') or 'empty'})"


def check_format(declared: str, files: list[Path]) -> None:
    """Raise ``ValueError`` unless the model's first file (the .xml of an OpenVINO IR) is of the declared format
    and its companions hold what they should (a TFLite model's optional note is a JSON object)."""
    fmt = formats.get(declared)
    head = formats.read_head(files[0])
    if formats.identify(head) is not fmt:
        raise ValueError(f"not {fmt.description}: it looks like {looks_like(head)}")
    fmt.check_companions(files)


def read_inputs(path: Path, limits: ArrayLimits) -> dict[str, np.ndarray]:
    """The named input arrays of an uploaded .npz within ``limits``, without unpickling anything; ``ValueError``
    says what is wrong."""
    arrays = read_npz(path, limits)
    if not arrays:
        raise ValueError("the .npz holds no arrays")
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf" or array.ndim == 0:
            raise ValueError(
                f"{name!r} is a {array.dtype} array of shape {list(array.shape)}; every input must be a "
                "numeric array with a first (sample) dimension"
            )
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the arrays have different numbers of samples: {lengths}")
    if not next(iter(lengths.values())):
        raise ValueError("the arrays hold no samples")
    return arrays
