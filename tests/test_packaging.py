"""The extras: `edgecraft[agent]` stays light enough for an edge board, `edgecraft[all]` holds the whole suite."""

from __future__ import annotations

import re
from importlib import metadata

# Never on a device: training, export and conversion stacks.
HEAVY = {
    "torch",
    "tensorflow",
    "tf-keras",
    "onnx",
    "onnx2tf",
    "onnxscript",
    "nncf",
    "neural-compressor",
    "transformers",
    "torchao",
    "scipy",
    "scikit-learn",
    "matplotlib",
}


def _requirements(extra: str | None) -> set[str]:
    """The distribution names edgecraft requires with ``extra`` (None: the base install)."""
    names = set()
    for requirement in metadata.requires("edgecraft") or []:
        spec, _, marker = requirement.partition(";")
        if (extra is None and not marker) or (extra is not None and f'extra == "{extra}"' in marker):
            names.add(re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0).lower())
    return names


def _closure(extra: str) -> set[str]:
    """Base plus ``extra``, following edgecraft's own extras that it names (``edgecraft[a,b]``)."""
    names, todo, seen = _requirements(None), [extra], set()
    while todo:
        current = todo.pop()
        seen.add(current)
        for requirement in metadata.requires("edgecraft") or []:
            spec, _, marker = requirement.partition(";")
            if f'extra == "{current}"' not in marker:
                continue
            inner = re.fullmatch(r"edgecraft\[([^\]]+)\]", spec.strip())
            if inner:
                todo += [name.strip() for name in inner.group(1).split(",") if name.strip() not in seen]
            else:
                names.add(re.match(r"[A-Za-z0-9_.-]+", spec.strip()).group(0).lower())
    return names


def test_agent_extra_pulls_only_numpy_and_runtimes() -> None:
    agent = _closure("agent")
    assert {"numpy", "onnxruntime", "ai-edge-litert"} <= agent
    assert not agent & HEAVY, agent & HEAVY


def test_all_extra_holds_the_whole_suite() -> None:
    everything = _closure("all")
    assert HEAVY <= everything
    assert {"openvino", "ai-edge-litert", "onnxruntime", "torch-pruning", "jinja2"} <= everything
    assert _closure("all") <= _closure("test")
