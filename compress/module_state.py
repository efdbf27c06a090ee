"""A PyTorch module's weights *and shapes* in a file that loads without unpickling code.

A pruned model no longer fits its class's constructor (its layers have fewer channels), so a plain state dict
cannot rebuild it, and pickling the whole module (``torch.save(model)``) would make loading it run whatever
code the file names. Instead we store, per submodule, its class, its tensors and its plain attributes
(``in_channels``, ``num_features``...) and pour them into a skeleton of the same architecture, the way
torch-pruning's own ``tp.state_dict`` / ``tp.load_state_dict`` do. Those helpers keep each module's whole
``__dict__`` (submodule objects included), which only an unrestricted pickle load can read back, so this is a
restricted version of them: tensors and plain values only, read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_PLAIN = (bool, int, float, str, type(None))


class ArchitectureMismatch(ValueError):
    """The stored module tree is not the skeleton's: the file cannot be poured into it."""


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def _class_name(module: Any) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def save_module(model: Any, path: Path) -> None:
    """Write ``model``'s tensors and the plain attributes that define its layers' shapes."""
    import torch

    state = {}
    for name, module in model.named_modules():
        attributes = {key: value for key, value in vars(module).items() if not key.startswith("_") and _plain(value)}
        state[name] = {
            "class": _class_name(module),
            "parameters": {
                key: None if value is None else value.detach().clone() for key, value in module._parameters.items()
            },
            "buffers": {
                key: None if value is None else value.detach().clone() for key, value in module._buffers.items()
            },
            "attributes": attributes,
        }
    torch.save(state, path)


def load_module(skeleton: Any, path: Path) -> Any:
    """``skeleton`` (a module of the same architecture, any sizes) with the stored tensors and shapes.

    Raises ``ArchitectureMismatch`` when the stored module tree (names and classes) differs."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    modules = dict(skeleton.named_modules())
    stored = {name: entry["class"] for name, entry in state.items()}
    present = {name: _class_name(module) for name, module in modules.items()}
    if stored != present:
        different = sorted(set(stored.items()) ^ set(present.items()))[:3]
        raise ArchitectureMismatch(f"the stored module tree differs from the skeleton's: {different}")
    for name, entry in state.items():
        module = modules[name]
        for key, value in entry["attributes"].items():
            setattr(module, key, value)
        for key, value in entry["parameters"].items():
            module._parameters[key] = None if value is None else torch.nn.Parameter(value, requires_grad=True)
        for key, value in entry["buffers"].items():
            module._buffers[key] = value
    return skeleton
