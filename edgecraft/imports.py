"""Import the user's ``package.module:attribute`` references named in a recipe."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from edgecraft.errors import EdgecraftError


def load_object(reference: str, field: str) -> Any:
    """Return the object ``reference`` names; like uvicorn, the working directory is importable."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise EdgecraftError(f"{field} {reference!r}: cannot import: {exc}") from exc
