"""Recipe parts built in Python that hold objects YAML cannot give: an ``nn.Module``, arrays, a torch ``Dataset``.

torch is never imported here: an object is a tensor or a module only if torch is already loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import SerializerFunctionWrapHandler, ValidationError, model_serializer

from edgecraft.core.errors import EdgecraftError
from edgecraft.core.signature import StrictModel
from edgecraft.recipe.yaml_loader import dotted, first_line, one_line


class PythonObjects(StrictModel):
    """A recipe part that may hold Python objects (an ``nn.Module``, arrays, a torch ``Dataset``): the Python API.

    Those fields are absent from the JSON Schema (YAML cannot give them), are dumped to JSON (results.json, the
    stored recipe YAML) as a one-line description with a content digest, and are left out of dumps when unset.
    Built in code, a part that does not validate raises ``EdgecraftError``, one line per problem, like a YAML
    recipe does (``model_validate``, which ``load_recipe`` uses, keeps pydantic's ``ValidationError``)."""

    _objects: tuple[str, ...] = ()

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise EdgecraftError(validation_message(exc, _API_NAMES.get(type(self).__name__, ""))) from None

    # Only a part built in code goes through this __init__: pydantic validates nested parts and model_validate()
    # without it (a custom __init__ would be called there too), so a YAML recipe keeps its file:line errors.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_serializer(mode="wrap")
    def _without_unset_objects(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = handler(self)
        for name in self._objects:
            if dumped.get(name) is None:
                dumped.pop(name, None)
        return dumped


def validation_message(exc: ValidationError, prefix: str = "") -> str:
    """pydantic's errors as ``field: problem`` lines (no input dumps: a value may be a whole tensor)."""
    lines = []
    for error in exc.errors(include_url=False):
        field = dotted(tuple(part for part in error["loc"] if not _is_union_tag(part)))
        field = f"{prefix}.{field}" if prefix and field != "recipe" else (prefix or field)
        lines.append(one_line(f"{field}: {error['msg'].removeprefix('Value error, ')}"))
    return "\n".join(dict.fromkeys(lines))


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(("function-", "tagged-union")) or "." in part)


# How a part built in code is named in its error messages.
_API_NAMES = {"ModelSpec": "model", "DataSpec": "data", "Recipe": ""}


def torch_module(value: Any) -> bool:
    """Whether ``value`` is a ``torch.nn.Module``, without importing torch (no torch loaded: it cannot be one)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def torch_dataset(value: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.utils.data.Dataset)


def as_array(value: Any, what: str) -> np.ndarray:
    """An array of samples (a numpy array, a CPU tensor, a list), as numpy; never an object array."""
    if hasattr(value, "detach"):  # a torch tensor: read without autograd, on the CPU
        value = value.detach().cpu()
    try:
        array = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - whatever np.asarray refuses
        raise ValueError(f"{what}: not an array ({first_line(exc)})") from None
    if array.dtype == object or array.ndim == 0:
        raise ValueError(
            f"{what}: expected an array of samples [samples, ...] of numbers, got "
            f"{type(value).__name__}" + (" of dtype object" if array.dtype == object else " (a scalar)")
        )
    return array


def arrays_digest(arrays: list[np.ndarray]) -> str:
    import hashlib

    sha = hashlib.sha256()
    for array in arrays:
        sha.update(f"{array.dtype.str}{array.shape}".encode())
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]
