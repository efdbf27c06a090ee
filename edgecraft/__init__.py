"""edgecraft: compress PyTorch models for edge devices, export them to every runtime and measure them.

    import edgecraft
    run = edgecraft.run(edgecraft.Recipe.from_yaml("recipes/quickstart.yaml"), profile="quick")
    run.verdict(); run.to_pandas(); run.report_path

Everything not listed in ``__all__`` is private. Names are imported on first use, so ``import edgecraft`` stays
cheap (no torch, no runtime).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["EdgecraftError", "Recipe", "Run", "run"]

_WHERE = {"EdgecraftError": "edgecraft.errors", "Recipe": "edgecraft.recipe", "Run": "edgecraft.api",
          "run": "edgecraft.api"}

if TYPE_CHECKING:
    from edgecraft.api import Run, run
    from edgecraft.errors import EdgecraftError
    from edgecraft.recipe import Recipe


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edgecraft' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
