"""OpenVINO IR: the graph as ``.xml`` and its weights as ``.bin`` beside it, run by OpenVINO."""

from __future__ import annotations

from edgecraft.core.formats import Companion, ModelFormat, register


@register
class OpenVinoIr(ModelFormat):
    name = "openvino"
    description = "an OpenVINO IR"
    suffix = ".xml"
    companions = (Companion(".bin", required=True, what="weights file"),)
    runtimes = ("openvino",)

    @classmethod
    def matches(cls, head: bytes) -> bool:
        return head.lstrip()[:1] == b"<" and b"<net" in head
