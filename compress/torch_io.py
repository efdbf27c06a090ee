"""Calling a PyTorch model through its signature: named numpy inputs in, named outputs back.

Every PyTorch pass, the export and the reference outputs go through here, so that a model with several inputs
(token ids and a mask) or several outputs (a box, landmarks and a score head) works everywhere a single-image
classifier does. The model's ``forward`` takes the signature's inputs positionally, in signature order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgecraft.core.signature import Signature, TensorSpec

# Sizes given to symbolic axes of example inputs (export, tracing): distinct, so that no axis is specialised.
EXAMPLE_SIZES = {"batch": 2, "sequence": 16}


def tensors(feeds: dict[str, np.ndarray], signature: Signature) -> list[Any]:
    import torch

    return [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in signature.input_names]


def named_outputs(result: Any, names: list[str]) -> dict[str, Any]:
    """A forward's result (a tensor, a tuple or a dict) as outputs by name."""
    if isinstance(result, dict):
        return dict(result)
    values = list(result) if isinstance(result, (tuple, list)) else [result]
    if names and len(names) != len(values):
        raise ValueError(f"the model returns {len(values)} output(s) but {len(names)} are named: {names}")
    return dict(zip(names or default_output_names(len(values)), values))


def default_output_names(count: int) -> list[str]:
    return ["logits"] if count == 1 else [f"output_{index}" for index in range(count)]


def predict(
    model: Any, feeds: dict[str, np.ndarray], signature: Signature, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Every output of ``model`` in eval mode on ``feeds``, as numpy, by name (float outputs as float32)."""
    import torch

    if hasattr(model, "eval"):
        try:
            model.eval()
        except NotImplementedError:  # a captured PT2E graph: no mode switch, and it needs none here
            pass
    count = len(next(iter(feeds.values())))
    batches: list[dict[str, np.ndarray]] = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            chunk = {name: array[start : start + batch_size] for name, array in feeds.items()}
            result = named_outputs(model(*tensors(chunk, signature)), signature.output_names)
            batches.append({name: _numpy(value) for name, value in result.items()})
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}


def _numpy(value: Any) -> np.ndarray:
    array = value.detach().cpu().numpy()
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def example_inputs(signature: Signature, batch: int | None = None) -> tuple[Any, ...]:
    """One small batch of inputs of the right dtypes and shapes (zeros; token ids and masks of ones)."""
    import torch

    examples = []
    for spec in signature.inputs:
        if spec.shape is None:
            raise ValueError(f"input {spec.name!r}: example inputs need its shape, which the signature does not say")
        shape = [_size(dim, axis, batch) for axis, dim in enumerate(spec.shape)]
        dtype = getattr(torch, np.dtype(spec.dtype or "float32").name)
        fill = 1 if "mask" in spec.name.lower() else 0
        examples.append(torch.full(shape, fill, dtype=dtype))
    return tuple(examples)


def _size(dim: Any, axis: int, batch: int | None) -> int:
    if isinstance(dim, int):
        return dim
    if axis == 0:
        return batch or EXAMPLE_SIZES["batch"]
    return EXAMPLE_SIZES.get(str(dim), EXAMPLE_SIZES["sequence"])


def symbolic_axes(spec: TensorSpec) -> dict[int, str]:
    """The axes of an input that stay dynamic in exports, with their names (``batch``, ``sequence``, ...)."""
    return {
        axis: str(dim) if dim else f"{spec.name}_{axis}"
        for axis, dim in enumerate(spec.shape or [])
        if not isinstance(dim, int)
    }


def output_specs(model: Any, signature: Signature, names: list[str] | None = None) -> list[TensorSpec]:
    """The model's outputs, found by running it once on example inputs: name, dtype and shape (batch symbolic)."""
    import torch

    declared = {spec.name: spec for spec in signature.outputs}
    with torch.no_grad():
        result = named_outputs(model.eval()(*example_inputs(signature)), names or signature.output_names)
    specs = []
    for name, value in result.items():
        shape = ["batch", *value.shape[1:]] if value.dim() else []
        kind = declared[name].kind if name in declared else None
        specs.append(TensorSpec(name=name, dtype=str(value.dtype).removeprefix("torch."), shape=shape, kind=kind))
    return specs


def forward_arguments(model: Any) -> list[str]:
    """The names of ``forward``'s parameters: ``dynamic_shapes`` must be keyed by them."""
    import inspect

    parameters = inspect.signature(model.forward).parameters.values()
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def dynamic_shapes(model: Any, signature: Signature) -> dict[str, dict[int, Any]]:
    """``torch.export`` dynamic shapes for every input, keyed by ``forward``'s argument names (in order)."""
    from torch.export import Dim

    dims: dict[str, Any] = {}
    shapes = {}
    for argument, spec in zip(forward_arguments(model), signature.inputs):
        axes = {}
        for axis, name in symbolic_axes(spec).items():
            key = "".join(char if char.isalnum() else "_" for char in name)
            dims.setdefault(key, Dim(key) if axis == 0 else Dim(key, min=2, max=4096))
            axes[axis] = dims[key]
        shapes[argument] = axes
    return shapes
