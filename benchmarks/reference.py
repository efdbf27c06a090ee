"""The reference variants the benchmark suite and the cross-checks measure: a built-in digits model as fp32 and
int8 for every runtime, built through the pass registry exactly as a recipe builds them, and kept in a folder so
that later runs measure the very same files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecraft.targets import feeds

# name → (runtime that runs it, passes applied to the fp32 ONNX export)
VARIANTS: dict[str, tuple[str, list[dict]]] = {
    "onnx-fp32": ("onnxruntime", []),
    "onnx-int8": ("onnxruntime", [{"type": "quantize.static", "calibration_method": "minmax"}]),
    "ov-fp32": ("openvino", [{"type": "convert.openvino"}]),
    "ov-int8": ("openvino", [{"type": "quantize.nncf"}]),
    "tflite-fp32": ("litert", [{"type": "convert.tflite"}]),
    "tflite-int8": ("litert", [{"type": "convert.tflite", "quantization": "int8"}]),
}
DEFAULT_FOLDER = Path(".benchmarks") / "reference"


@dataclass(frozen=True)
class Reference:
    """One runnable reference variant and the evaluation data it is measured on."""

    name: str
    runtime: str
    path: Path
    inputs: Path  # a folder of named inputs (targets.feeds.save)
    labels: np.ndarray | None  # None for a built-in judged by agreement with fp32
    fp32: Path  # the fp32 ONNX export every variant comes from

    def reference_outputs(self) -> dict[str, np.ndarray]:
        """The fp32 export's outputs on every evaluation input, on ONNX Runtime, as a run computes them."""
        from edgecraft.rows import reference_outputs
        from edgecraft.targets import registry

        return reference_outputs(registry.get("onnxruntime"), self.fp32, "cpu", {}, feeds.load(self.inputs), threads=1)

    @property
    def evaluation_inputs(self) -> np.ndarray:
        """The single image input of the vision built-ins."""
        return np.array(next(iter(feeds.load(self.inputs).values())))

    def feeds(self) -> list[dict[str, np.ndarray]]:
        """One feed per evaluation sample, as ``Target.run`` takes it."""
        inputs = feeds.load(self.inputs)
        return [feeds.take(inputs, i, i + 1) for i in range(feeds.count(inputs))]


def build(
    model: str = "digits-cnn", folder: Path = DEFAULT_FOLDER, names: list[str] | None = None
) -> dict[str, Reference]:
    """The variants ``names`` (default: all) of the built-in ``model``, built once per trained model into
    ``folder/model`` and reused while the trained weights are the same."""
    import torch

    from edgecraft import data, model_source
    from edgecraft.compress import registry as passes
    from edgecraft.compress.base import Artifact, PassContext
    from edgecraft.compress.onnx_export import export_torch
    from edgecraft.compress.zoo import REFERENCE_MODELS

    names = names or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown reference variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    reference = REFERENCE_MODELS[model]
    # The built-in's own data (digits, or a pretrained model's bundled samples), split as a recipe splits it.
    dataset = data.conform(
        data.load_source(reference.data, Path("."), reference.signature), reference.signature, f"model {model!r}"
    )
    splits = data.split(dataset, (0.6, 0.2, 0.2), seed=0)
    network = model_source.builtin_model(model, splits.train, lambda *_: None)
    signature = model_source.with_outputs(network, reference.signature)
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in network.state_dict().values())).hexdigest()[:16]
    root = Path(folder).resolve() / f"{model}-{digest}"  # absolute: convert.tflite changes the working directory
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    inputs = root / "evaluation-inputs"
    if not (inputs / "names.txt").is_file():
        feeds.save(splits.evaluation.inputs, inputs)
    fp32 = root / "fp32.onnx"
    if not fp32.is_file():
        with torch.no_grad():
            export_torch(network, signature, fp32)
    for name in names:
        if name in manifest and (root / manifest[name]).is_file():
            continue
        _, entries = VARIANTS[name]
        artifact = Artifact("onnx", signature, path=fp32)
        for index, entry in enumerate(entries):
            work_dir = root / name / f"{index}-{entry['type']}"
            work_dir.mkdir(parents=True, exist_ok=True)
            context = PassContext(
                train=splits.train,
                calibration=splits.calibration,
                evaluation=splits.evaluation,
                work_dir=work_dir,
                cache_dir=root / "cache",
                seed=0,
            )
            config = passes.passes()[entry["type"]].config_model(**entry)
            artifact = passes.get(entry["type"]).apply(artifact, config, context).artifact
        manifest[name] = str(artifact.path.relative_to(root))
        manifest_path.write_text(json.dumps(manifest, indent=2))
    return {
        name: Reference(name, VARIANTS[name][0], root / manifest[name], inputs, splits.evaluation.targets, fp32)
        for name in names
    }
