"""TFLite (LiteRT): one ``.tflite`` flatbuffer, and for a file converted from ONNX an optional ``.io.json`` note.

The note records the model's own names for the file's signature names, which inputs the data gives as NCHW
images (the file takes NHWC) and which outputs the file gives channels-last where the model gives them
channels-first (an NCHW output as NHWC), so that one evaluation set serves every runtime. A native file has no note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgecraft.core.formats import Companion, ModelFormat, register

IO_NOTE_SUFFIX = ".io.json"


@register
class TfLite(ModelFormat):
    name = "tflite"
    description = "a TFLite model"
    suffix = ".tflite"
    companions = (Companion(IO_NOTE_SUFFIX, required=False, what="input/output note"),)
    runtimes = ("litert",)

    @classmethod
    def matches(cls, head: bytes) -> bool:
        return head[4:8] == b"TFL3"  # the flatbuffer's file identifier, after its 4-byte root offset

    @classmethod
    def check_companions(cls, files: list[Path]) -> None:
        if len(files) > 1:
            try:
                note = json.loads(files[1].read_bytes())
            except ValueError:
                note = None
            if not isinstance(note, dict):
                raise ValueError(
                    f"the second file ({TfLite.file_names()[1]}, the input/output note) is not a JSON object"
                )


def io_note(path: Path) -> Path:
    return path.with_suffix(IO_NOTE_SUFFIX)


@dataclass(frozen=True)
class IoNote:
    """What the note says: ``names`` maps the file's signature names to the model's; ``nchw_inputs`` are the
    inputs (model names) that the data gives as NCHW images and the file takes as NHWC; ``channels_last_outputs``
    are the outputs (model names) that the model gives channels-first (axis 1) and the file channels-last (its
    last axis: an NCHW output as NHWC), to be moved back (for 4-D, a (0, 3, 1, 2) transpose)."""

    names: dict[str, str] = field(default_factory=dict)
    nchw_inputs: frozenset[str] = frozenset()
    channels_last_outputs: frozenset[str] = frozenset()


def write_io_note(
    path: Path, names: dict[str, str], nchw_inputs: list[str], channels_last_outputs: list[str] | None = None
) -> None:
    """Record, beside the .tflite at ``path``, the model's names for the file's signature names, the inputs (by
    the model's names) that are NCHW images in the data and NHWC in the file, and the outputs that the file gives
    channels-last where the model gives them channels-first."""
    record = {"names": names, "nchw_inputs": nchw_inputs, "channels_last_outputs": channels_last_outputs or []}
    io_note(path).write_text(json.dumps(record, indent=1))


def read_io_note(path: Path) -> IoNote:
    """The note beside ``path``; empty for a native file without one. A note written before
    ``channels_last_outputs`` existed reads as having none."""
    note = io_note(path)
    if not note.is_file():
        return IoNote()
    record = json.loads(note.read_text())
    return IoNote(
        dict(record.get("names", {})),
        frozenset(record.get("nchw_inputs", [])),
        frozenset(record.get("channels_last_outputs", [])),
    )
