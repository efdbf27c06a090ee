"""ExecuTorch: one ``.pte`` program (a flatbuffer), and for a program ``convert.executorch`` wrote an optional
``.io.json`` note.

A program keeps no names: its method takes and returns tensors by position. The note records the model's
signature (input and output names in the program's order, dtypes, symbolic axes, layouts, what each output holds)
and the upper bound each symbolic axis was exported with: ExecuTorch plans its memory for those bounds, so a call
past one fails. A program without a note (one a user brings) runs with positional names and the sizes its method
declares.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgecraft.core.formats import Companion, ModelFormat, register
from edgecraft.core.signature import Signature

NOTE_SUFFIX = ".io.json"


@register
class ExecuTorchProgram(ModelFormat):
    name = "executorch"
    description = "an ExecuTorch program"
    suffix = ".pte"
    companions = (Companion(NOTE_SUFFIX, required=False, what="signature note"),)
    runtimes = ("executorch",)

    @classmethod
    def matches(cls, head: bytes) -> bool:
        # The program flatbuffer's file identifier ("ET" and a schema version, e.g. ET12), after its root offset.
        return head[4:6] == b"ET" and head[6:8].isdigit()

    @classmethod
    def check_companions(cls, files: list[Path]) -> None:
        if len(files) > 1:
            try:
                read_note_text(files[1].read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"the second file ({cls.file_names()[1]}, the signature note) is not a valid note: {exc}"
                ) from None


@dataclass(frozen=True)
class ProgramNote:
    """What a converted program's note says: the model's signature and each symbolic axis's upper bound."""

    signature: Signature | None = None
    upper_bounds: dict[str, int] = field(default_factory=dict)


def note_path(path: Path) -> Path:
    return path.with_suffix(NOTE_SUFFIX)


def write_note(path: Path, signature: Signature, upper_bounds: dict[str, int]) -> None:
    """Record, beside the .pte at ``path``, the signature it was exported with and its axes' upper bounds."""
    record = {"signature": signature.model_dump(mode="json"), "upper_bounds": upper_bounds}
    note_path(path).write_text(json.dumps(record, indent=1))


def read_note_text(text: str) -> ProgramNote:
    """A note's content; ``ValueError`` when it is not one."""
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    bounds = record.get("upper_bounds", {})
    if not isinstance(bounds, dict) or not all(isinstance(v, int) and v > 0 for v in bounds.values()):
        raise ValueError("upper_bounds must map axis names to positive integers")
    signature = record.get("signature")
    return ProgramNote(Signature.model_validate(signature) if signature is not None else None, dict(bounds))


def read_note(path: Path) -> ProgramNote:
    """The note beside ``path``; empty for a program without one."""
    note = note_path(path)
    return read_note_text(note.read_text()) if note.is_file() else ProgramNote()
