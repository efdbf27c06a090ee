"""The table of passes: adding a pass is one new module in ``compress/passes/`` that calls ``register``."""

from __future__ import annotations

from edgecraft.compress.base import Pass, PassConfig
from edgecraft.core.registry import Registry

PASSES: Registry[type[Pass]] = Registry("pass", "passes", key=lambda cls: cls.name, package="edgecraft.compress.passes")
register = PASSES.register


def passes() -> dict[str, type[Pass]]:
    """All registered passes by name, sorted."""
    return PASSES.items()


def get(name: str) -> Pass:
    """An instance of the pass called ``name``; ``KeyError`` lists the known names."""
    return PASSES.get(name)()


def config_models() -> list[type[PassConfig]]:
    """Every pass's config model, for the recipe's discriminated union and JSON Schema."""
    return [cls.config_model for cls in passes().values()]
