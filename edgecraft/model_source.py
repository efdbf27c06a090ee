"""Turn a recipe's model entry into a starting artifact: a built-in (trained once, then cached), a user's
``module:factory`` (+ state dict), or a ready ONNX file."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from compress.base import Artifact
from compress.zoo import REFERENCE_MODELS
from edgecraft.errors import EdgecraftError
from edgecraft.imports import load_object
from edgecraft.recipe import ModelSpec

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where trained built-in models are kept between runs (``EDGECRAFT_CACHE_DIR`` overrides)."""
    return Path(os.environ.get("EDGECRAFT_CACHE_DIR", Path.home() / ".cache" / "edgecraft"))


def declared_input_shape(spec: ModelSpec) -> tuple[int, ...] | None:
    """The per-sample input shape the model says it takes, before any data is loaded."""
    if spec.builtin:
        return REFERENCE_MODELS[spec.builtin].input_shape
    if spec.input_shape:
        return tuple(spec.input_shape)
    if spec.onnx:
        import onnx

        graph = onnx.load(spec.onnx, load_external_data=False).graph
        dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.input[0].type.tensor_type.shape.dim]
        if len(dims) >= 2 and all(dims[1:]):
            return tuple(dims[1:])
    return None


def _builtin_key(name: str, train: tuple[np.ndarray, np.ndarray]) -> str:
    """Content key of a trained built-in: architecture source, training recipe and the exact training data."""
    import compress.models

    reference = REFERENCE_MODELS[name]
    digest = hashlib.sha256()
    digest.update(inspect.getsource(compress.models).encode())
    digest.update(json.dumps([name, reference.input_shape, asdict(reference.training)]).encode())
    for array in train:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def builtin_model(
    name: str, train: tuple[np.ndarray, np.ndarray], on_epoch: Callable[[int, int, float], None]
) -> Any:
    """The trained built-in ``name``: loaded from the cache, or trained on ``train`` and cached."""
    import torch

    from compress.training import train as train_model

    reference = REFERENCE_MODELS[name]
    # Seed the initial weights too, not only the training loop: the cache key assumes that the same data and
    # recipe give the same model in any process.
    torch.manual_seed(reference.training.seed)
    model = reference.build()
    path = cache_dir() / "models" / f"{name}-{_builtin_key(name, train)}.pt"
    if path.is_file():
        log.info("using cached %s from %s", name, path)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    log.info("training %s (%d epochs); it will be cached at %s", name, reference.training.epochs, path)
    epochs = reference.training.epochs
    train_model(model, *train, reference.training, on_epoch=lambda epoch, loss: on_epoch(epoch, epochs, loss))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    torch.save(model.state_dict(), temporary)
    temporary.replace(path)  # atomic: an interrupted run never leaves a half-written cache entry
    return model.eval()


def factory_model(spec: ModelSpec) -> Any:
    """Call the user's ``module:function`` and load its state dict, with errors that name the recipe field."""
    import torch

    model = load_object(spec.factory, "model.factory")()
    if not isinstance(model, torch.nn.Module):
        raise EdgecraftError(f"model.factory {spec.factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if spec.weights:
        try:
            state = torch.load(spec.weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any load failure is the user's file's problem
            raise EdgecraftError(f"model.weights {spec.weights}: cannot load into {spec.factory}: {exc}") from exc
    return model.eval()


def starting_artifact(spec: ModelSpec, model: Any, input_shape: tuple[int, ...]) -> Artifact:
    if spec.onnx:
        return Artifact("onnx", input_shape, path=Path(spec.onnx))
    return Artifact("torch", input_shape, model=model)


def check_accepts(artifact: Artifact, sample: np.ndarray, data_source: str) -> None:
    """Run one real input through the model so that a shape mismatch is reported before any long work."""
    try:
        if artifact.format == "torch":
            import torch

            with torch.no_grad():
                artifact.model.eval()(torch.from_numpy(sample))
        else:
            import onnxruntime

            session = onnxruntime.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
            session.run(None, {session.get_inputs()[0].name: sample})
    except Exception as exc:  # noqa: BLE001 - the framework's message is the useful part
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgecraftError(
            f"wrong input shape: data.source {data_source!r} gives inputs of shape {list(sample.shape[1:])} "
            f"(plus batch) and the model rejects them: {first_line[:300]}"
        ) from None
