"""The table of passes: adding a pass is one new module in ``compress/passes/`` that calls ``register``."""

from __future__ import annotations

import functools
import importlib
import pkgutil

from compress.base import Pass, PassConfig

_PASSES: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make ``cls`` available to recipes under ``cls.name``."""
    if cls.name in _PASSES and _PASSES[cls.name] is not cls:
        raise ValueError(f"pass {cls.name!r} is registered twice")
    _PASSES[cls.name] = cls
    return cls


@functools.cache
def _discover() -> None:
    """Import every module of ``compress.passes`` once, so that their ``@register`` lines run.

    Once per process rather than "while the table is empty": a pass module imported directly would otherwise
    fill the table and hide every other pass."""
    import compress.passes as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def passes() -> dict[str, type[Pass]]:
    """All registered passes by name, sorted."""
    _discover()
    return dict(sorted(_PASSES.items()))


def get(name: str) -> Pass:
    """An instance of the pass called ``name``; ``KeyError`` lists the known names."""
    table = passes()
    if name not in table:
        raise KeyError(f"unknown pass {name!r}; known passes: {', '.join(table)}")
    return table[name]()


def config_models() -> list[type[PassConfig]]:
    """Every pass's config model, for the recipe's discriminated union and JSON Schema."""
    return [cls.config_model for cls in passes().values()]
