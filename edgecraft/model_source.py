"""Turn a recipe's model entry into a starting artifact: a built-in (trained once, then cached), a user's
``module:factory`` (+ state dict), a ready ONNX file, or (Python API) an in-memory ``torch.nn.Module``; and its
data: the recipe's ``data.source``, or in-memory arrays or a torch ``Dataset``."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from edgecraft import data as datasets
from edgecraft.compress.base import Artifact, Dataset
from edgecraft.compress.zoo import REFERENCE_MODELS
from edgecraft.core.errors import EdgecraftError
from edgecraft.core.signature import Signature, TensorSpec
from edgecraft.imports import call_object
from edgecraft.recipe.schema import DataSpec, ModelSpec
from edgecraft.targets.base import image_like

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where trained built-in models are kept between runs (``EDGECRAFT_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("EDGECRAFT_CACHE_DIR", Path.home() / ".cache" / "edgecraft"))


def declared_signature(spec: ModelSpec) -> Signature | None:
    """The signature the model declares before any data is loaded (None: read it from the data).

    Built-ins carry theirs; a factory model may declare ``inputs`` (or the ``input_shape`` shorthand) and
    output names; an ONNX file's is read from its graph."""
    if spec.builtin:
        return REFERENCE_MODELS[spec.builtin].signature
    if spec.onnx:
        return file_signature(spec)
    outputs = list(spec.outputs or [])
    if spec.inputs:
        return Signature(
            inputs=[TensorSpec(**i.model_dump()) for i in spec.inputs], outputs=outputs, state_from=spec.state_from
        )
    if spec.input_shape:
        shape = ["batch", *spec.input_shape]
        return Signature(
            inputs=[
                TensorSpec(
                    name="input",
                    dtype="float32",
                    shape=shape,
                    layout="NCHW" if image_like(shape, channels_axis=1) else None,
                )
            ],
            outputs=outputs,
        )
    return None


def file_signature(spec: ModelSpec) -> Signature:
    """A model file's signature, its batch axes read from its shapes, then what the model entry says: an input's
    batch axis and shape, an output's kind, the state fed from call to call."""
    from edgecraft.targets import feeds, registry

    assert spec.onnx is not None  # only called for model files
    read = feeds.infer_batch_axes(registry.get("onnxruntime").signature(Path(spec.onnx)))
    origin = f"model {spec.display_name!r}"
    entries = spec.inputs or []
    try:
        signature = feeds.override(
            read,
            origin,
            batch_axes={entry.name: entry.batch_axis for entry in entries if "batch_axis" in entry.model_fields_set},
            shapes={entry.name: list(entry.shape) for entry in entries if entry.shape is not None},
            state_from=spec.state_from,
        )
    except feeds.DataMismatch as exc:
        raise EdgecraftError(str(exc)) from None
    declared = {output.name: output for output in spec.outputs or []}
    unknown = [name for name in declared if name not in signature.output_names]
    if unknown:
        raise EdgecraftError(
            f"{origin}: outputs {unknown} are not the file's; its outputs are {signature.output_names}"
        )
    return signature.model_copy(
        update={
            "outputs": [
                output.model_copy(update={"kind": declared[output.name].kind}) if output.name in declared else output
                for output in signature.outputs
            ]
        }
    )


def data_source(spec: ModelSpec, source: str) -> str:
    """``auto`` is a built-in's own data set, and digits for any other model."""
    if source != "auto":
        return source
    return REFERENCE_MODELS[spec.builtin].data if spec.builtin else "digits"


def data_origin(spec: ModelSpec, data: DataSpec) -> str:
    """How messages name where the model's data comes from."""
    if data.arrays is not None:
        return "data.arrays"
    if data.dataset is not None:
        return f"data.dataset ({type(data.dataset).__qualname__})"
    return f"data.source {data_source(spec, data.source)!r}"


def load_data(spec: ModelSpec, data: DataSpec, signature: Signature | None, model: Any = None) -> Dataset:
    """The model's whole data set, before splitting: in-memory arrays or a torch Dataset (Python API), or the
    recipe's ``data.source``. A Dataset's positional tensors are named after the declared inputs, else after
    ``model``'s ``forward()`` parameters."""
    if data.arrays is not None:
        return datasets.from_arrays(data.arrays, data.targets, signature)
    if data.dataset is not None:
        names = signature.input_names if signature is not None else forward_parameters(model)
        return datasets.from_torch_dataset(data.dataset, names)
    return datasets.load_source(data_source(spec, data.source), data.base_dir or Path("."), signature)


def forward_parameters(model: Any) -> list[str]:
    """The names of ``model.forward``'s positional parameters (none for no model)."""
    if model is None:
        return []
    import inspect

    return [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]


def signature_from_data(data: Dataset, outputs: Sequence[TensorSpec] | None = None, model: Any = None) -> Signature:
    """Inputs read from the data (names, dtypes, per-sample shapes; the batch axis symbolic), and the declared
    outputs (found later by running the model where none are declared).

    Where the data's names are ``forward``'s parameter names, they are its inputs in ``forward``'s order, and
    other arrays are left out (and warned about); data named otherwise (``inputs``, ``x``) feeds ``forward``
    positionally in the data's order."""
    names = list(data.inputs)
    if model is not None:
        import inspect

        parameters = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        known = [p.name for p in parameters if p.name in data.inputs]
        if known:
            missing = [p.name for p in parameters if p.default is p.empty and p.name not in data.inputs]
            if missing:
                raise EdgecraftError(
                    f"the model's forward() takes ({', '.join(p.name for p in parameters)}); the data has "
                    f"{sorted(data.inputs)}, with no {', '.join(missing)}"
                )
            names = known
    inputs = []
    for name in names:
        array = data.inputs[name]
        shape = ["batch", *array.shape[1:]]
        inputs.append(
            TensorSpec(
                name=name,
                dtype=array.dtype.name,
                shape=shape,
                layout="NCHW" if image_like(array.shape, channels_axis=1) else None,
            )
        )
    return Signature(inputs=inputs, outputs=list(outputs or []))


def with_outputs(model: Any, signature: Signature) -> Signature:
    """A PyTorch model's signature with its outputs found by running it once on example inputs."""
    from edgecraft.compress.torch_io import output_specs

    names = signature.output_names or None
    try:
        outputs = output_specs(model, signature, names)
    except Exception as exc:  # noqa: BLE001 - the model's own error, with the inputs it was given
        shown = ", ".join(spec.describe() for spec in signature.inputs)
        raise EdgecraftError(f"the model rejects inputs {shown}: {_first_line(exc)}") from None
    return signature.model_copy(update={"outputs": outputs})


def _builtin_key(name: str, train: Dataset) -> str:
    """Content key of a trained built-in: the code that builds and trains it (followed through its imports),
    the training recipe, the exact training data, and what changes the numbers on this machine (torch's version
    and thread count: the order of float sums)."""
    import torch

    from edgecraft.step_cache import code_key, digest, library_versions

    reference = REFERENCE_MODELS[name]
    assert reference.training is not None  # builtin_model keys only the built-ins it trains
    arrays = [np.ascontiguousarray(array).tobytes() for array in (*train.inputs.values(), train.targets)]
    return digest(
        code_key("edgecraft.compress.models", "edgecraft.compress.training", "edgecraft.compress.zoo"),
        name,
        reference.signature.model_dump(mode="json"),
        asdict(reference.training),
        library_versions(()),
        torch.get_num_threads(),
        *arrays,
    )[:16]


def builtin_model(name: str, train: Dataset, on_epoch: Callable[[int, int, float], None]) -> Any:
    """The built-in ``name``: a pretrained one as it ships (its package caches what it unpacks), a digits model
    loaded from the cache, or trained on ``train`` and cached.

    Concurrent runs sharing the cache train it once: the second waits on the lock, then loads the first's."""
    import torch
    from filelock import FileLock

    from edgecraft.compress.training import train as train_model

    reference = REFERENCE_MODELS[name]
    if reference.training is None:
        return reference.build().eval()
    # Seed the initial weights too, not only the training loop: the cache key assumes that the same data and
    # recipe give the same model in any process.
    torch.manual_seed(reference.training.seed)
    model = reference.build()
    path = cache_dir() / "models" / f"{name}-{_builtin_key(name, train)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):
        if path.is_file():
            try:
                model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                log.info("using cached %s from %s", name, path)
                return model.eval()
            except Exception as exc:  # noqa: BLE001 - a damaged cache file is retrained, never trusted
                log.warning("cached %s at %s is unreadable (%s): training it again", name, path, exc)
                torch.manual_seed(reference.training.seed)
                model = reference.build()
        log.info("training %s (%d epochs); it will be cached at %s", name, reference.training.epochs, path)
        epochs = reference.training.epochs
        train_model(
            model,
            train,
            reference.signature,
            reference.training,
            on_epoch=lambda epoch, loss: on_epoch(epoch, epochs, loss),
        )
        temporary = path.with_name(f".{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        torch.save(model.state_dict(), temporary)
        temporary.replace(path)  # atomic: an interrupted run never leaves a half-written cache entry
    return model.eval()


def factory_model(spec: ModelSpec) -> Any:
    """Call the user's ``module:function`` and load its state dict, with errors that name the recipe field."""
    import torch

    assert spec.factory is not None  # prepare_model calls this for a factory model only
    model = call_object(spec.factory, "model.factory", spec.base_dir)
    if not isinstance(model, torch.nn.Module):
        raise EdgecraftError(f"model.factory {spec.factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if spec.weights:
        try:
            state = torch.load(spec.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise EdgecraftError(f"model.weights {spec.weights}: cannot load into {spec.factory}: {exc}") from exc
    return model.eval()


def in_memory_model(spec: ModelSpec) -> Any:
    """A copy of the user's in-memory module, in eval mode on the CPU: passes (pruning, training) and ``eval()``
    never touch the object the user holds."""
    import copy

    try:
        model = copy.deepcopy(spec.module)
    except Exception as exc:  # noqa: BLE001 - a module holding something that cannot be copied
        raise EdgecraftError(
            f"model.module {type(spec.module).__qualname__}: cannot copy it "
            f"({type(exc).__name__}: {_first_line(exc)}); edgecraft works on a copy"
        ) from None
    return model.cpu().eval()


def starting_artifact(spec: ModelSpec, model: Any, signature: Signature) -> Artifact:
    if spec.onnx:
        return Artifact("onnx", signature, path=Path(spec.onnx))
    return Artifact("torch", signature, model=model)


def check_accepts(artifact: Artifact, sample: Dataset, origin: str) -> None:
    """Run one real sample through the model so that a mismatch is reported before any long work."""
    try:
        if artifact.format == "torch":
            from edgecraft.compress.torch_io import predict

            predict(artifact.model, sample.inputs, artifact.signature)
        else:
            from edgecraft.targets import registry

            target = registry.get("onnxruntime")
            assert artifact.path is not None  # a model file's artifact carries its path
            target.run_batches(
                target.load(artifact.path, "cpu", 1, target.options_model()), sample.inputs, 1, sample.layout
            )
    except Exception as exc:  # noqa: BLE001 - the framework's message is the useful part
        shapes = ", ".join(
            f"{name} {sample.inputs[name].dtype.name} {shape}"
            for name, shape in sample.layout.call_shapes(sample.inputs).items()
        )
        raise EdgecraftError(f"the model rejects the data: {origin} gives {shapes}: {_first_line(exc)[:300]}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
