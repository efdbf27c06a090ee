"""Model preparation: a recipe's model entry → its data splits, evaluator, the shared PyTorch passes, the fp32
ONNX export and the fp32 reference outputs every variant is compared with.

Everything that can fail for one model fails here, before any variant runs, and ``edgecraft.runner`` turns such
a failure into that model's failed rows.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from edgecraft import data as datasets
from edgecraft import model_source
from edgecraft.bench import evaluators
from edgecraft.bench.evaluators import EvaluatorSpec
from edgecraft.compress.base import Artifact, Dataset, PassContext, Validation
from edgecraft.compress.onnx_export import export_torch
from edgecraft.compress.zoo import REFERENCE_MODELS
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.results import ModelRecord
from edgecraft.recipe.schema import DataSpec, ModelSpec
from edgecraft.rows import Evaluation, reference_outputs
from edgecraft.step_cache import (
    OUR_PACKAGES,
    architecture_key,
    code_key,
    digest,
    file_digest,
    library_versions,
    weights_digest,
)
from edgecraft.steps import Keyed, StepRunner
from edgecraft.targets import feeds
from edgecraft.targets import registry as target_registry

log = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """A model ready for variants: after the shared passes (PyTorch, if it is one) and as its fp32 ONNX export,
    with the data splits and what its rows are measured against."""

    name: str
    torch: Keyed | None
    onnx: Keyed
    context: PassContext
    evaluation: Evaluation
    record: ModelRecord


def prepare_model(
    spec: ModelSpec, data_spec: DataSpec, passes: list[Any], run_dir: Path, steps: StepRunner, progress: Progress
) -> PreparedModel:
    """Load the model and its data, run the shared passes (from the step cache where they finished before),
    export fp32 ONNX and compute the reference outputs, under ``run_dir/models/NAME``."""
    name = spec.display_name
    model_dir = run_dir / "models" / name
    model_dir.mkdir(parents=True, exist_ok=True)
    origin = model_source.data_origin(spec, data_spec)
    declared = model_source.declared_signature(spec)
    model = model_source.in_memory_model(spec) if spec.module is not None else None
    dataset = model_source.load_data(spec, data_spec, declared, model)
    if spec.factory:
        model = model_source.factory_model(spec)
    signature = declared or model_source.signature_from_data(dataset, spec.outputs, model)
    dataset = datasets.conform(dataset, signature, f"model {name!r}: {origin}")
    chosen = spec.evaluator or _builtin_evaluator(spec)
    splits = datasets.split(
        dataset,
        (data_spec.splits.train, data_spec.splits.calibration, data_spec.splits.evaluation),
        data_spec.seed,
        grouped=evaluators.groups_targets(chosen),
    )
    log.info(
        "%s: %d train, %d calibration, %d evaluation samples (%s)",
        name,
        len(splits.train),
        len(splits.calibration),
        len(splits.evaluation),
        splits.how,
    )
    if spec.builtin:
        model = _builtin(spec.builtin, splits.train, progress)
    if model is not None:
        signature = model_source.with_outputs(model, signature)
    evaluator = evaluators.choose(chosen, signature.outputs, splits.evaluation.targets)
    try:
        evaluators.check(evaluator, signature.outputs, splits.evaluation.targets)
    except evaluators.EvaluatorMismatch as exc:
        raise EdgecraftError(f"model {name!r}: {exc}") from None
    artifact = model_source.starting_artifact(spec, model, signature)
    model_source.check_accepts(artifact, splits.evaluation.head(1), origin)

    context = PassContext(
        train=splits.train,
        calibration=splits.calibration,
        evaluation=splits.evaluation,
        work_dir=model_dir,
        cache_dir=run_dir / "cache",
        seed=data_spec.seed,
        original=model,
    )
    # The evaluator is part of the key: accuracy-aware passes search against it.
    start = Keyed(
        artifact,
        digest(content_key(spec, artifact), data_key(splits), data_spec.seed, evaluator.model_dump(mode="json")),
    )
    shared = steps.apply(name, None, start, passes, context, model_dir / "shared")
    artifact = shared.artifact
    context.validation = validation_for(evaluator, artifact, splits.calibration)
    evaluation = splits.evaluation
    if artifact.format == "torch":
        from edgecraft.compress.torch_io import predict

        reference = predict(artifact.model, evaluation.inputs, signature)
        onnx_path = export_torch(artifact.model, signature, model_dir / "fp32.onnx")
        parameters = sum(p.numel() for p in artifact.model.parameters())
        onnx_key = digest(shared.key, "export_torch", library_versions(()), code_key("edgecraft.compress.onnx_export"))
    else:
        # A user's ONNX model: there is no PyTorch model to compare with, the file is its own reference.
        assert artifact.path is not None  # a model file's artifact carries its path
        reference = reference_outputs(
            target_registry.get("onnxruntime"), artifact.path, "cpu", {}, evaluation.inputs, 1, evaluation.layout
        )
        onnx_path = artifact.path
        parameters = None
        onnx_key = shared.key
    score = functools.partial(evaluators.evaluate, evaluator, reference=reference, targets=evaluation.targets)
    record = ModelRecord(
        name=name,
        source=spec.source,
        signature=signature,
        data_shapes=evaluation.layout.call_shapes(evaluation.inputs),
        data_notes=data_notes(evaluation, splits.how),
        evaluation_data=datasets.fingerprint(evaluation),
        parameters=parameters,
        reference=score(reference),
    )
    return PreparedModel(
        name=name,
        torch=shared if artifact.format == "torch" else None,
        onnx=Keyed(Artifact("onnx", signature, path=onnx_path), onnx_key),
        context=context,
        evaluation=Evaluation(
            feeds.save(evaluation.inputs, model_dir / "evaluation-inputs", evaluation.layout), reference, score
        ),
        record=record,
    )


def validation_for(evaluator: EvaluatorSpec, artifact: Artifact, calibration: Dataset) -> Validation:
    """The evaluator on the calibration split against the fp32 model's outputs there (after the shared passes)."""

    def reference() -> dict[str, np.ndarray]:
        if artifact.format == "torch":
            from edgecraft.compress.torch_io import predict

            return predict(artifact.model, calibration.inputs, artifact.signature)
        assert artifact.path is not None  # a model file's artifact carries its path
        return reference_outputs(
            target_registry.get("onnxruntime"), artifact.path, "cpu", {}, calibration.inputs, 1, calibration.layout
        )

    def score(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], targets: np.ndarray | None) -> float:
        value = evaluators.evaluate(evaluator, outputs, expected, targets).value
        assert value is not None  # evaluate() always measures the headline (only not_measured() leaves it out)
        return value

    return Validation(
        data=calibration, metric=evaluators.metric_name(evaluator.type), reference_fn=reference, score_fn=score
    )


def _builtin(name: str, train: Dataset, progress: Progress) -> Any:
    """A built-in model, trained (once, then cached) with a progress bar."""
    task = progress.add_task(f"loading {name}", total=None)

    def on_epoch(epoch: int, epochs: int, loss: float) -> None:
        progress.update(task, total=epochs, completed=epoch, description=f"training {name} (loss {loss:.3f})")

    try:
        return model_source.builtin_model(name, train, on_epoch)
    finally:
        progress.remove_task(task)


def _builtin_evaluator(spec: ModelSpec) -> EvaluatorSpec | None:
    return EvaluatorSpec(type=REFERENCE_MODELS[spec.builtin].evaluator) if spec.builtin else None


def data_notes(evaluation: Dataset, how: str) -> list[str]:
    """What a reader needs to know about the evaluation data: its size, how it was split, sequence lengths."""
    notes = [f"{len(evaluation)} evaluation samples ({how} split)"]
    for name, array in evaluation.inputs.items():
        if "mask" in name.lower() and array.ndim == 2 and array.dtype.kind in "iub":
            lengths = array.sum(axis=1)
            notes.append(
                f"sequence length {array.shape[1]} (padded); real tokens per sample (from {name}): "
                f"min {int(lengths.min())}, median {int(np.median(lengths))}, max {int(lengths.max())}"
            )
    return notes


def content_key(spec: ModelSpec, artifact: Artifact) -> str:
    """What a starting model is, by content: a PyTorch model's weights and the code that defines it (its
    class's module and, for a factory, the factory's module; for an in-memory module, its structure and its
    classes' source); an ONNX model's file and its external data."""
    signature = artifact.signature.model_dump(mode="json")
    if artifact.format == "torch" and spec.module is not None:
        # An in-memory module has no factory file: its weights, its structure and its classes' source.
        model = artifact.model
        return digest("in-memory", type(model).__qualname__, weights_digest(model), architecture_key(model), signature)
    if artifact.format == "torch":
        model = artifact.model
        state = model.state_dict()
        tensors = [name.encode() + state[name].detach().cpu().numpy().tobytes() for name in sorted(state)]
        modules = {type(model).__module__}
        if spec.factory:
            modules.add(spec.factory.partition(":")[0])
        code = {module: _source_digest(module) for module in sorted(modules)}
        return digest(type(model).__qualname__, code, signature, *tensors)
    assert artifact.path is not None  # a model file's artifact carries its path
    return digest([file_digest(path) for path in onnx_files(artifact.path)], signature)


def _source_digest(module: str) -> str:
    """The source of a loaded module, followed through our own packages' imports; a module without a source
    file (built into a binary) is keyed by its name alone."""
    if module.split(".")[0] in OUR_PACKAGES:
        return code_key(module)
    try:
        return file_digest(Path(inspect.getfile(sys.modules[module])))
    except (KeyError, TypeError, OSError):
        return module


def onnx_files(path: Path) -> list[Path]:
    """An ONNX model file and every external data file its initializers point at (exporters put a large
    model's weights there; onnx's own walk over every tensor is private API)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    locations = sorted(
        {
            entry.value
            for tensor in graph.initializer
            if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data
            if entry.key == "location"
        }
    )
    return [path, *(path.parent / location for location in locations)]


def data_key(splits: Any) -> str:
    """The exact train / calibration / evaluation arrays: passes train, calibrate and evaluate on them."""
    return digest(*(datasets.fingerprint(part) for part in (splits.train, splits.calibration, splits.evaluation)))
