"""ONNX: one ``.onnx`` file (weights inside), run by ONNX Runtime and converted by OpenVINO."""

from __future__ import annotations

from edgecraft.core.formats import ModelFormat, register


@register
class Onnx(ModelFormat):
    name = "onnx"
    description = "an ONNX model"
    suffix = ".onnx"
    runtimes = ("onnxruntime", "openvino")
    exact_magic = False  # protobuf has no magic number

    @classmethod
    def matches(cls, head: bytes) -> bool:
        # A serialised ModelProto starts with field 1 (ir_version) as a one-byte varint: tag 0x08, then the version.
        return len(head) > 1 and head[0] == 0x08 and 0 < head[1] < 0x80
