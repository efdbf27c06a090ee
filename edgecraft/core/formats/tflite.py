"""TFLite (LiteRT): one ``.tflite`` flatbuffer, and for a file converted from ONNX an optional ``.io.json`` note.

The note records the model's own names for the file's signature names and which inputs the data gives as NCHW
images (the file takes NHWC), so that one evaluation set serves every runtime. A native file has no note.
"""

from __future__ import annotations

import json
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


def write_io_note(path: Path, names: dict[str, str], nchw_inputs: list[str]) -> None:
    """Record, beside the .tflite at ``path``, the model's names for the file's signature names and the inputs
    (by the model's names) that are NCHW images in the data and NHWC in the file."""
    io_note(path).write_text(json.dumps({"names": names, "nchw_inputs": nchw_inputs}, indent=1))


def read_io_note(path: Path) -> tuple[dict[str, str], set[str]]:
    """The note beside ``path``: the names and the NCHW inputs; empty for a native file without one."""
    note = io_note(path)
    if not note.is_file():
        return {}, set()
    record = json.loads(note.read_text())
    return record.get("names", {}), set(record.get("nchw_inputs", []))
