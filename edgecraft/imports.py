"""Import the user's ``package.module:attribute`` references named in a recipe (a model ``factory``, a
``data.source``, an ``evaluator``) or on the command line (``bench --evaluator``).

One function, ``resolve``, finds them all: in the recipe's folder (``base_dir``, when the reference comes from a
recipe file), then the working folder the command was started in, then the installed packages. A reference that
cannot be found is one ``EdgecraftError`` line naming the field, the reference and the folders searched.

A recipe's specs learn their folder when the recipe file is validated (``load_recipe`` validates with the context
``{"base_dir": folder}``): a spec class that derives from ``RecipeFolder`` keeps it as ``spec.base_dir``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, PrivateAttr, ValidationInfo, model_validator

from edgecraft.core.errors import EdgecraftError

# The folder the command was started in: passes such as convert.tflite change the working directory later on.
STARTED_IN = Path(os.getcwd()).resolve()


class RecipeFolder(BaseModel):
    """A mixin for specs read from a recipe file: ``base_dir`` is the recipe's folder (None for a spec built in
    Python, or validated without the ``base_dir`` context). It is no field: not dumped, never part of a cache key,
    and two specs that differ only in it compare equal."""

    _base_dir: Path | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _remember_folder(self, info: ValidationInfo) -> RecipeFolder:
        folder = (info.context or {}).get("base_dir") if info is not None else None
        if folder is not None:
            self._base_dir = Path(folder).expanduser().resolve()
        return self

    @property
    def base_dir(self) -> Path | None:
        return self._base_dir

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]


def search_path(base_dir: Path | str | None = None) -> list[Path]:
    """The folders a user's module is looked for in, before the installed packages: the recipe's folder (when
    given), the folder the command was started in, and the working folder now (when it differs)."""
    folders = [Path(base_dir).expanduser().resolve()] if base_dir is not None else []
    folders += [STARTED_IN, Path(os.getcwd()).resolve()]
    return list(dict.fromkeys(folders))


def resolve(reference: str, field: str, base_dir: Path | str | None = None) -> Any:
    """The object ``reference`` (``package.module:attribute``) names, imported from ``search_path(base_dir)`` or the
    installed packages; any failure is one ``EdgecraftError`` line naming ``field`` and ``reference``.

    Folders not yet on ``sys.path`` go to its front (like running a script from there), and stay on it, so that
    the user's module can import its neighbours later, when its function runs."""
    module_name, _, attribute = reference.partition(":")
    folders = search_path(base_dir)
    for folder in reversed(folders):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    importlib.invalidate_caches()  # a module written after start-up (a test, a notebook) is found too
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        if exc.name is not None and module_name != exc.name and not module_name.startswith(f"{exc.name}."):
            # The user's module was found, and an import inside it failed.
            raise EdgecraftError(f"{field} {reference!r}: cannot import {module_name!r}: {_brief(exc)}") from None
        searched = ", ".join(str(folder) for folder in folders)
        raise EdgecraftError(
            f"{field} {reference!r}: cannot import {module_name!r}: no module {exc.name or top!r} in {searched} "
            "or the installed packages"
        ) from None
    except Exception as exc:  # noqa: BLE001 - importing runs the user's module: whatever it raises is one line
        raise EdgecraftError(
            f"{field} {reference!r}: cannot import {module_name!r}: it raised {type(exc).__name__}: {_brief(exc)}"
        ) from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        where = getattr(module, "__file__", None) or module_name
        raise EdgecraftError(
            f"{field} {reference!r}: cannot import {attribute!r}: {where} has no {attribute!r}"
        ) from None


def load_function(reference: str, field: str, base_dir: Path | str | None = None) -> Any:
    """The function ``reference`` names: it must exist and be callable."""
    function = resolve(reference, field, base_dir)
    if not callable(function):
        raise EdgecraftError(f"{field} {reference!r} is a {type(function).__name__}, not a function")
    return function


def call_object(reference: str, field: str, base_dir: Path | str | None = None) -> Any:
    """Call the user's ``module:function`` (it runs the user's own code) with no arguments; whatever it raises
    becomes one line naming the recipe field, not a traceback."""
    function = load_function(reference, field, base_dir)
    try:
        return function()
    except Exception as exc:
        raise EdgecraftError(f"{field} {reference!r} raised {type(exc).__name__}: {_brief(exc)}") from exc


def _brief(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
