"""Tensors of an ONNX file that keep their data in another file ("external data"), found without the ``onnx``
package.

A tensor's external data names a file by a path in the model (``location``); a runtime reads that file and the
model's outputs can carry its bytes back to the client. A job is one uploaded file, so the agent needs no external
data at all: it refuses every reference, and says which tensor points where (outside the job's folder, e.g.
``../../etc/passwd``, is named as such) before ONNX Runtime ever opens the model.

Hand-written protobuf decoding (about 60 lines): the agent has no ``onnx`` package, and ``google.protobuf`` alone
cannot decode an ONNX file without the generated ONNX schema that only ``onnx`` ships. Only the fields on the
way to a tensor are decoded; everything else, the weights included, is skipped by its length.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

# Message kinds of onnx.proto3, and for each the fields (number → kind) that can lead to a TensorProto.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _SPARSE, _TENSOR = range(8)
_LEADS_TO: dict[int, dict[int, int]] = {
    _MODEL: {7: _GRAPH, 20: _TRAINING, 25: _FUNCTION},  # graph, training_info, functions
    _TRAINING: {1: _GRAPH, 2: _GRAPH},  # initialization, algorithm
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},  # node, initializer, sparse_initializer
    _NODE: {5: _ATTRIBUTE},
    _FUNCTION: {7: _NODE, 11: _ATTRIBUTE},  # node, attribute_proto (defaults)
    # t, g, tensors, graphs, sparse_tensor, sparse_tensors
    _ATTRIBUTE: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},  # values, indices
}
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class ExternalData:
    tensor: str
    location: str | None  # None: marked EXTERNAL without saying where


def check_no_external_data(model: Path, folder: Path) -> None:
    """``ValueError`` naming the first tensor of ``model`` whose data lives in another file, and whether that
    file would be outside ``folder`` (where the model is run from)."""
    for reference in external_data(model):
        where = reference.location
        if where is None:
            raise ValueError(f"tensor {reference.tensor!r} is marked as external data but names no file")
        if "\0" in where or PurePath(where).is_absolute() or not _inside(folder, where):
            raise ValueError(
                f"tensor {reference.tensor!r} points its external data at {where!r}, outside the job's folder"
            )
        raise ValueError(
            f"tensor {reference.tensor!r} keeps its data in a separate file {where!r}, which a job does not carry: "
            "save the model as one file (onnx.save(model, path, save_as_external_data=False))"
        )


def _inside(folder: Path, location: str) -> bool:
    return (folder / location).resolve().is_relative_to(folder.resolve())


def external_data(model: Path) -> list[ExternalData]:
    """Every tensor of ``model`` (initializers, attributes, subgraphs, functions) whose data is external.
    ``ValueError`` if the file is not a well-formed protobuf message."""
    if not model.stat().st_size:
        return []
    with model.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        try:
            return _walk(memoryview(mapped))
        except ValueError as exc:
            problem = str(exc)  # not raised from here: its traceback holds views that keep the map from closing
    raise ValueError(problem)


def _walk(model: memoryview) -> list[ExternalData]:
    # Iterative, not recursive: a file can nest subgraphs deeper than Python's recursion limit.
    found, pending = [], [(model, _MODEL)]
    while pending:
        message, kind = pending.pop()
        if kind == _TENSOR:
            reference = _tensor(message)
            if reference:
                found.append(reference)
            continue
        for number, value in _fields(message):
            if number in _LEADS_TO[kind] and isinstance(value, memoryview):
                pending.append((value, _LEADS_TO[kind][number]))
    return found


def _tensor(message: memoryview) -> ExternalData | None:
    name, entries, external = "", {}, False
    for number, value in _fields(message):
        if number == _TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value).decode(errors="replace")
        elif number == _TENSOR_EXTERNAL_DATA and isinstance(value, memoryview):
            entry = {key: bytes(text).decode(errors="replace") for key, text in _fields(value)}
            entries[entry.get(1, "")] = entry.get(2, "")
        elif number == _TENSOR_DATA_LOCATION and value == _EXTERNAL:
            external = True
    if not (external or entries):
        return None
    return ExternalData(name or "(unnamed)", entries.get("location"))


def _fields(message: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of each field of one protobuf message: an int for a varint, a view of the bytes for
    a length-delimited field; fixed-size fields are skipped."""
    position, end = 0, len(message)
    while position < end:
        key, position = _varint(message, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            value, position = _varint(message, position)
            yield number, value
        elif wire_type == _LENGTH:
            length, position = _varint(message, position)
            if position + length > end:
                raise ValueError(f"not a valid ONNX file: field {number} runs past the end of its message")
            yield number, message[position : position + length]
            position += length
        elif wire_type in (_FIXED64, _FIXED32):
            position += 8 if wire_type == _FIXED64 else 4
        else:
            raise ValueError(f"not a valid ONNX file: field {number} has the unknown wire type {wire_type}")
    if position > end:
        raise ValueError("not a valid ONNX file: its last field is cut off")


def _varint(message: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(message) or shift > 63:
            raise ValueError("not a valid ONNX file: a number in it is cut off or too long")
        byte = message[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
