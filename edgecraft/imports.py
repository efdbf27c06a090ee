"""Import the user's ``package.module:attribute`` references named in a recipe."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from edgecraft.core.errors import EdgecraftError


def load_object(reference: str, field: str) -> Any:
    """Return the object ``reference`` names; like uvicorn, the working directory is importable."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EdgecraftError(f"{field} {reference!r}: cannot import: {exc}") from exc


def call_object(reference: str, field: str) -> Any:
    """Call the user's ``module:function`` (it runs the user's own code) with no arguments; whatever it raises
    becomes one line naming the recipe field, not a traceback."""
    function = load_object(reference, field)
    if not callable(function):
        raise EdgecraftError(f"{field} {reference!r} is a {type(function).__name__}, not a function")
    try:
        return function()
    except Exception as exc:
        message = " ".join(str(exc).split())[:300]
        raise EdgecraftError(f"{field} {reference!r} raised {type(exc).__name__}: {message}") from exc
