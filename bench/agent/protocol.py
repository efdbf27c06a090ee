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

import re
import zipfile
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from edgecraft.bench.settings import BenchSettings
from edgecraft.core import formats

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


def validation_problem(exc: ValidationError) -> str:
    """A pydantic error as 'field: problem' lines, short enough for an HTTP error."""
    problems = [
        f"{'.'.join(map(str, error['loc'])) or 'body'}: {error['msg']}" for error in exc.errors(include_url=False)[:3]
    ]
    return "; ".join(problems)


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


def read_inputs(path: Path) -> dict[str, np.ndarray]:
    """The named input arrays of an uploaded .npz, without unpickling anything; ``ValueError`` says what is wrong."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("it is a single .npy array, not an .npz of named arrays")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not an .npz file: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"not an .npz of plain arrays: {exc}") from None
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
